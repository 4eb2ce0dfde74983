"""The Redis operations plans yield (a command, a script, a pipeline, a wait for an event); the
drivers carry them out on the sync client or on the running loop's async client, through the
backend's circuit breaker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
import redis.asyncio

from .._clock import monotonic
from .._drivers import TIMED_OUT, Op
from .breaker import OUTAGE_ERRORS, REDIS_ERRORS, Breaker, CircuitOpen
from .scripts import SCRIPTS as _SCRIPTS

if TYPE_CHECKING:
    from .api import Backend

log = logging.getLogger("cachewise")


class ScriptCall(NamedTuple):
    """One run of a script: its name in ``SCRIPTS``, its keys and its arguments."""

    script: str
    keys: list[str]
    args: list[Any]


class RedisOp(Op):
    """A Redis operation, guarded by the backend's circuit breaker: refused at once while it is
    open (``CircuitOpen``, which callers handle as any Redis trouble), and reporting each
    outcome to it."""

    __slots__ = ("backend",)

    backend: Backend

    def call_sync(self) -> Any:
        raise NotImplementedError

    async def call_async(self) -> Any:
        raise NotImplementedError

    def _breaker(self) -> Breaker:
        """The breaker this call counts on: the ``Cache``'s, unless it touches one key (on a
        cluster, its master's)."""
        return self.backend.breaker

    def run_sync(self) -> Any:
        breaker = self._breaker()
        breaker.check()
        try:
            return breaker.passed(self.call_sync())
        except OUTAGE_ERRORS:
            breaker.failed()
            self.backend.unreachable()
            raise

    async def run_async(self) -> Any:
        breaker = self._breaker()
        breaker.check()
        try:
            return breaker.passed(await self.call_async())
        except OUTAGE_ERRORS:
            breaker.failed()
            self.backend.unreachable()
            raise


class RedisCall(RedisOp):
    """One Redis command, on the sync client or on the running loop's async client."""

    __slots__ = ("args", "kwargs", "method")

    def __init__(self, backend: Backend, method: str, *args: Any, **kwargs: Any) -> None:
        self.backend = backend
        self.method = method
        self.args = args
        self.kwargs = kwargs

    def call_sync(self) -> Any:
        return getattr(self.backend.sync_client(), self.method)(*self.args, **self.kwargs)

    async def call_async(self) -> Any:
        return await getattr(self.backend.async_client(), self.method)(*self.args, **self.kwargs)


class Fetch(RedisOp):
    """A read whose failure is an outcome, not an exception (the read path fails open on it):
    ``(what was read, None)`` or ``(None, error)``. One key is a GET; a list of keys an MGET
    (a GET for a list of one, which costs redis-py less).

    Written out rather than as a ``RedisCall``: it is the shared-tier hit of the lone-caller
    fast path and of ``get_many``, where the generic dispatch (the breaker's check and report
    as calls, the method looked up by name) costs a tenth of the whole hit.
    """

    __slots__ = ("keys",)

    def __init__(self, backend: Backend, keys: str | list[str]) -> None:
        self.backend = backend
        self.keys = keys

    def _breaker(self) -> Breaker:
        keys = self.keys
        if type(keys) is str:
            return self.backend.breaker_for(keys)
        return self.backend.breaker_for(keys[0]) if len(keys) == 1 else self.backend.breaker

    def run_sync(self) -> tuple[Any, BaseException | None]:
        breaker = self._breaker()
        if breaker.state is not Breaker.CLOSED and (refused := _refused(breaker)):
            return None, refused
        try:
            return self._read(self._request(self.backend.sync_client()), breaker)
        except REDIS_ERRORS as exc:
            return self._failed(exc, breaker)

    async def run_async(self) -> tuple[Any, BaseException | None]:
        breaker = self._breaker()
        if breaker.state is not Breaker.CLOSED and (refused := _refused(breaker)):
            return None, refused
        try:
            return self._read(await self._request(self.backend.async_client()), breaker)
        except REDIS_ERRORS as exc:
            return self._failed(exc, breaker)

    def _request(self, client: Any) -> Any:
        """The command on ``client``: its reply, or an awaitable of it on an async client."""
        keys = self.keys
        if type(keys) is str or len(keys) == 1:
            return client.get(keys if type(keys) is str else keys[0])
        if self.backend.cluster:  # grouped by slot, one pipeline per node
            return client.mget_nonatomic(keys)
        return client.mget(keys)

    def _read(self, raw: Any, breaker: Breaker) -> tuple[Any, None]:
        if breaker.failures or breaker.state is not Breaker.CLOSED:
            breaker.passed(None)
        if type(self.keys) is list and len(self.keys) == 1:
            return [raw], None  # read with a GET
        return raw, None

    def _failed(self, exc: BaseException, breaker: Breaker) -> tuple[None, BaseException]:
        if isinstance(exc, OUTAGE_ERRORS):
            breaker.failed()
            self.backend.unreachable()
        return None, exc


def _refused(breaker: Breaker) -> CircuitOpen | None:
    """The breaker's refusal, if it refuses a call now."""
    try:
        breaker.check()
    except CircuitOpen as exc:
        return exc
    return None


class _Sequence:
    """Commands run one after another behind a pipeline's ``execute``: a list of replies on a
    sync client, an awaitable of it on an async one."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps

    def execute(self, raise_on_error: bool = True) -> Any:
        first, *rest = self.steps  # an error is raised whatever was asked
        reply = first()
        if inspect.isawaitable(reply):
            return self._awaited(reply, rest)
        return [reply, *(step() for step in rest)]

    @staticmethod
    async def _awaited(first: Any, rest: list[Any]) -> list[Any]:
        """Each step started only once the one before answered: a step started early would be
        left never awaited when one before it raises or is cancelled."""
        replies = [await first]
        for step in rest:
            replies.append(await step())
        return replies


class ServerTime(RedisOp):
    """Measure the offset between the local monotonic clock and the Redis server's clock, and
    on a client's first use load every script in one round trip (otherwise the first lease of
    a herd would pay EVALSHA, NOSCRIPT and SCRIPT LOAD while everyone waits)."""

    __slots__ = ()

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def _pipeline(self, client: Any) -> tuple[Any, bool]:
        """TIME, plus SCRIPT LOAD of every script if this client has not had them."""
        if self.backend.cluster:
            return self._cluster_pipeline(client)
        pipe = client.pipeline(transaction=False)
        pipe.time()
        pipe.info("replication", "cluster")
        fresh = client not in self.backend.preloaded
        if fresh:
            for source in _SCRIPTS.values():
                pipe.script_load(source)
        return pipe, fresh

    def _done(self, client: Any, fresh: bool, before: float, reply: list[Any]) -> None:
        after = monotonic()
        if self.backend.cluster and not fresh:
            reply.pop(0)  # the topology's refresh
        replication = {} if self.backend.cluster else reply.pop(1)
        for answer in reply:
            if isinstance(answer, Exception):
                raise answer
        self.backend.record_time(before, reply[0], after)
        if self.backend.cluster:  # the replicas of the master with most, as the client sees
            slots = client.nodes_manager.slots_cache.values()
            self.backend.replicas = max((len(nodes) - 1 for nodes in slots), default=0)
        # A user refused INFO is told nothing about replicas: its invalidations do not wait.
        elif isinstance(replication, dict):
            self.backend.replicas = int(replication.get("connected_slaves", 0) or 0)
            if replication.get("cluster_enabled") and not self.backend.cluster:
                log.error(
                    "cachewise: redis= is a plain client of a node of a Redis Cluster: keys of "
                    "other nodes' slots fail (served without Redis, counted in redis_errors). "
                    "Pass a URL (detected as a cluster) or a redis.cluster.RedisCluster client"
                )
        if fresh:
            self.backend.preloaded.add(client)

    def call_sync(self) -> None:
        client = self.backend.sync_client()
        pipe, fresh = self._pipeline(client)
        before = monotonic()
        self._done(client, fresh, before, pipe.execute(raise_on_error=False))

    async def call_async(self) -> None:
        client = self.backend.async_client()
        pipe, fresh = self._pipeline(client)
        before = monotonic()
        self._done(client, fresh, before, await pipe.execute(raise_on_error=False))

    def _cluster_pipeline(self, client: Any) -> tuple[Any, bool]:
        """A cluster refuses TIME in a pipeline: ``TIME`` alone, and SCRIPT LOAD (sent to every
        master by redis-py) one by one, as a pipeline-like object both drivers run alike."""
        fresh = client not in self.backend.preloaded
        if not fresh:  # every minute: the slots' masters and replicas read again (a failover
            # or a replica added is otherwise learnt only from a MOVED, and a replica's WAIT
            # follows the replicas listed here)
            return _Sequence([client.nodes_manager.initialize, client.time]), fresh
        steps = [client.time] + [functools.partial(client.script_load, source)
                                 for source in _SCRIPTS.values()]  # fmt: skip
        return _Sequence(steps), fresh


class RunScript(RedisOp):
    """One of ``lua``'s scripts (EVALSHA, loaded on first use by redis-py)."""

    __slots__ = ("args", "keys", "name")

    def __init__(self, backend: Backend, name: str, keys: list[str], args: list[Any]) -> None:
        self.backend = backend
        self.name = name
        self.keys = keys
        self.args = args

    def _breaker(self) -> Breaker:
        return self.backend.breaker_for(self.keys[0]) if self.keys else self.backend.breaker

    # EVALSHA is sent directly, and redis-py's script object is called only when the server
    # does not know the script (it loads it and runs it again): ``Script.__call__`` imports
    # and rebuilds its arguments on every call, which measured a tenth of a round trip.

    def call_sync(self) -> Any:
        script = self.backend.sync_script(self.name)
        try:
            return script.registered_client.evalsha(
                script.sha, len(self.keys), *self.keys, *self.args
            )
        except redis.exceptions.NoScriptError:
            return script(keys=self.keys, args=self.args)

    async def call_async(self) -> Any:
        script = self.backend.async_script(self.name)
        try:
            return await script.registered_client.evalsha(
                script.sha, len(self.keys), *self.keys, *self.args
            )
        except redis.exceptions.NoScriptError:
            return await script(keys=self.keys, args=self.args)


class RunPipeline(RedisOp):
    """Several scripts in one round trip (a non-transactional pipeline of EVALSHA).

    Not through redis-py's script objects: a pipeline holding them first sends SCRIPT EXISTS,
    a second round trip on every call. A call whose script the server does not know (it
    restarted, or its scripts were flushed) fails alone with NOSCRIPT and is run again through
    its script object, which loads it; the others ran once. The first other error is raised,
    as ``execute()`` would."""

    __slots__ = ("calls",)

    def __init__(self, backend: Backend, calls: list[ScriptCall]) -> None:
        self.backend = backend
        self.calls = calls

    def _breaker(self) -> Breaker:
        if len(self.calls) == 1 and self.calls[0].keys:  # one master's, on a cluster
            return self.backend.breaker_for(self.calls[0].keys[0])
        return self.backend.breaker

    def _queue(self, pipe: Any, shas: list[str]) -> Any:
        for sha, (_, keys, args) in zip(shas, self.calls, strict=True):
            pipe.evalsha(sha, len(keys), *keys, *args)
        return pipe

    @staticmethod
    def _unknown(replies: list[Any]) -> list[int]:
        return [
            i
            for i, reply in enumerate(replies)
            if isinstance(reply, redis.exceptions.NoScriptError)
        ]

    @staticmethod
    def _checked(replies: list[Any]) -> list[Any]:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def call_sync(self) -> list[Any]:
        scripts = [self.backend.sync_script(name) for name, _, _ in self.calls]
        pipe = self._queue(
            self.backend.sync_client().pipeline(transaction=False), [s.sha for s in scripts]
        )
        replies = pipe.execute(raise_on_error=False)
        for i in self._unknown(replies):
            replies[i] = scripts[i](keys=self.calls[i][1], args=self.calls[i][2])
        return self._checked(replies)

    async def call_async(self) -> list[Any]:
        scripts = [self.backend.async_script(name) for name, _, _ in self.calls]
        pipe = self._queue(
            self.backend.async_client().pipeline(transaction=False), [s.sha for s in scripts]
        )
        replies = await pipe.execute(raise_on_error=False)
        for i in self._unknown(replies):
            replies[i] = await scripts[i](keys=self.calls[i][1], args=self.calls[i][2])
        return self._checked(replies)


class AwaitEvent(Op):
    """Wait for a fill of a key announced by another process, or ``TIMED_OUT``."""

    __slots__ = ("future", "timeout")

    def __init__(self, future: concurrent.futures.Future[Any], timeout: float) -> None:
        self.future = future
        self.timeout = timeout

    def run_sync(self) -> Any:
        try:
            return self.future.result(max(self.timeout, 0.0))
        except concurrent.futures.TimeoutError:
            return TIMED_OUT

    async def run_async(self) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self.future), max(self.timeout, 0.0))
        except (asyncio.TimeoutError, TimeoutError):
            return TIMED_OUT


def text(value: Any) -> str:
    """A reply of redis-py as text (bytes, unless the client decodes replies)."""
    return value.decode() if isinstance(value, bytes) else str(value)
