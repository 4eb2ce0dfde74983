"""The Redis tier's I/O: clients, scripts, the server clock, and the event listener.

The only module that imports ``redis``. Plans in ``_engine`` yield the operations defined here
(``RedisCall``, ``RunScript``, ``RunPipeline``, ``AwaitEvent``) and the drivers carry them out on
the sync client or on the asyncio client of the running loop.

``redis=`` accepts a URL, a ``redis.Redis``, a ``redis.asyncio.Redis``, or a pair of both. Given
a single client, the other kind is built from its connection settings (host, port, db,
credentials, TLS), so sync and async code share one configuration. Async clients are kept per
event loop, because a redis.asyncio connection belongs to the loop that opened it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgpack
import redis
import redis.asyncio
from redis.commands.core import AsyncScript, Script

from . import _lua
from ._drivers import TIMED_OUT, Op
from .errors import ConfigTypeError, ConfigValueError, describe

log = logging.getLogger("cachewise")

#: What a Redis call may raise when Redis is slow, gone or confused: never the caller's problem.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    OSError,
    asyncio.TimeoutError,
)

#: Errors that mean Redis cannot be reached in time (as opposed to a reply it refused): what the
#: circuit breaker counts.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    asyncio.TimeoutError,
)


class CircuitOpen(redis.exceptions.ConnectionError):
    """Redis was not called: the circuit breaker is open after repeated failures."""


class Breaker:
    """A circuit breaker per ``Cache``: after ``threshold`` outage errors in a row it opens, and
    Redis calls fail at once instead of each paying a timeout; after ``reset`` seconds one call
    goes through as a probe (half-open) and closes it if it succeeds.

    Hand-written: a few fields on the hot path (closed is one attribute read per call), which
    the breaker libraries on PyPI (pybreaker, aiobreaker) do not offer for sync and async alike.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(self, threshold: int, reset: float, on_recover: Callable[[], None]) -> None:
        self.threshold = threshold
        self.reset = reset
        self.on_recover = on_recover
        self.state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.opens = 0
        self.short_circuits = 0
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise ``CircuitOpen`` unless Redis may be called now."""
        if self.state is self.CLOSED:
            return
        with self._lock:
            now = time.monotonic()
            # One probe per ``reset``: a probe that never reported back does not wedge it.
            if self.state is not self.CLOSED and now - self.opened_at >= self.reset:
                self.state = self.HALF_OPEN
                self.opened_at = now
                return
            if self.state is self.CLOSED:
                return
            self.short_circuits += 1
        raise CircuitOpen("Redis is not called: the circuit breaker is open")

    def passed(self, result: Any) -> Any:
        """Record a call Redis answered; returns ``result``."""
        if self.failures or self.state is not self.CLOSED:
            with self._lock:
                recovered = self.state is not self.CLOSED
                self.state = self.CLOSED
                self.failures = 0
            if recovered:
                log.warning("cachewise: Redis is back; the circuit breaker is closed")
                self.on_recover()
        return result

    def failed(self) -> None:
        """Record a call that could not reach Redis."""
        with self._lock:
            self.failures += 1
            if self.state is self.HALF_OPEN or (
                self.state is self.CLOSED and self.failures >= self.threshold
            ):
                if self.state is self.CLOSED:
                    self.opens += 1
                    log.warning(
                        "cachewise: %d Redis failures in a row; circuit breaker open for %.1f s",
                        self.failures,
                        self.reset,
                    )
                self.state = self.OPEN
                self.opened_at = time.monotonic()


_SCRIPTS = {
    "acquire": _lua.ACQUIRE,
    "renew": _lua.RENEW,
    "release": _lua.RELEASE,
    "store": _lua.STORE,
    "invalidate": _lua.INVALIDATE,
    "enqueue": _lua.ENQUEUE,
    "tag_versions": _lua.TAG_VERSIONS,
    "wb_state": _lua.WB_STATE,
    "requeue": _lua.REQUEUE,
    "enqueue_queue": _lua.ENQUEUE_QUEUE,
    "pending_store": _lua.PENDING_STORE,
    "settle_queue": _lua.SETTLE_QUEUE,
    "settle_cache": _lua.SETTLE_CACHE,
    "requeue_queue": _lua.REQUEUE_QUEUE,
    "pending_set": _lua.PENDING_SET,
    "settle": _lua.SETTLE,
    "group": _lua.GROUP,
    "replay": _lua.REPLAY,
    "register": _lua.REGISTER,
}

#: Connection settings carried from a given client to the twin cachewise builds for it.
_CARRIED = (
    "host", "port", "db", "username", "password", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "client_name", "path",
)  # fmt: skip


def _settings(client: Any) -> dict[str, Any]:
    pool = client.connection_pool
    if "Sentinel" in type(pool).__name__:
        # Its connections find the master through the sentinels: there is no host to copy,
        # and a twin built without one would quietly talk to localhost.
        raise ConfigTypeError(
            "redis=: a Sentinel client cannot be copied into its sync/async twin; pass both, "
            "as redis=(sentinel.master_for(...), asyncio_sentinel.master_for(...))"
        )
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in _CARRIED}
    if "SSL" in pool.connection_class.__name__:
        kwargs["ssl"] = True
    return kwargs


class RedisBackend:
    """Clients, scripts, key names and the server clock of one ``Cache``'s Redis tier."""

    def __init__(
        self,
        spec: Any,
        namespace: str,
        *,
        socket_timeout: float,
        connect_timeout: float,
        breaker_threshold: int = 5,
        breaker_reset: float = 1.0,
    ) -> None:
        self.namespace = namespace
        #: ``on_recover`` is set by the engine: L1 cannot be trusted after an outage.
        self.breaker = Breaker(breaker_threshold, breaker_reset, lambda: None)
        self.channel = f"{namespace}#events"
        self.origin = secrets.token_hex(8)  # tells this Cache's own events from others'
        #: The longest a blocking read (XREADGROUP BLOCK) may wait within the socket timeout.
        self.block_limit = socket_timeout / 2
        self._url: str | None = None
        self._settings: dict[str, Any] = {}
        self._sync: redis.Redis | None = None
        self._given_async: redis.asyncio.Redis | None = None
        timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
        if isinstance(spec, str):
            try:
                redis.connection.parse_url(spec)  # type: ignore[no-untyped-call]
            except ValueError as exc:
                raise ConfigValueError(f"redis= is not a usable Redis URL: {exc}") from None
            self._url = spec
            self._settings = timeouts
        elif isinstance(spec, tuple) and len(spec) == 2:
            self._sync, self._given_async = spec
        elif isinstance(spec, redis.asyncio.Redis):
            self._given_async = spec
            self._settings = _settings(spec)
        elif isinstance(spec, redis.Redis):
            self._sync = spec
            self._settings = _settings(spec)
        elif "Cluster" in type(spec).__name__:
            raise ConfigTypeError(
                "redis=: Redis Cluster clients are not supported yet (the lease and invalidation "
                "scripts build keys a cluster would refuse); use a standalone or Sentinel Redis"
            )
        else:
            raise ConfigTypeError(
                "redis= must be a URL, a redis.Redis, a redis.asyncio.Redis or a "
                f"(redis.Redis, redis.asyncio.Redis) pair, not {type(spec).__name__}"
            )
        if self._sync is not None and not isinstance(self._sync, redis.Redis):
            raise ConfigTypeError("the first client of redis=(sync, async) must be a redis.Redis")
        if self._given_async is not None and not isinstance(self._given_async, redis.asyncio.Redis):
            raise ConfigTypeError("the second client of redis=(sync, async) must be async")
        self._lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._sync_scripts: dict[str, Script] = {}
        self._async_scripts: weakref.WeakKeyDictionary[Any, dict[str, AsyncScript]] = (
            weakref.WeakKeyDictionary()
        )
        # Server clock: server_ms ~= time.monotonic() * 1000 + offset_ms, within uncertainty_ms.
        self.offset_ms: float | None = None
        self.uncertainty_ms = 0.0
        self.clock_checked = 0.0
        self.listener: Listener | None = None
        #: Clients whose connection has every script loaded already.
        self.preloaded: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- names ------------------------------------------------------------------------------

    def lease_key(self, full_key: str) -> str:
        return f"{self.namespace}#lease:{full_key[len(self.namespace) + 1 :]}"

    def key_of_lease(self, lease: str) -> str:
        return f"{self.namespace}:{lease[len(self.namespace) + len('#lease:') :]}"

    def pending_key(self, full_key: str) -> str:
        return f"{self.namespace}#wbpending:{full_key[len(self.namespace) + 1 :]}"

    def tag_key(self, tag: str) -> str:
        return f"{self.namespace}#tagv:{tag}"

    # -- clients ----------------------------------------------------------------------------

    def sync_client(self) -> redis.Redis:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = (
                        redis.Redis.from_url(self._url, **self._settings)
                        if self._url is not None
                        else redis.Redis(**self._settings)
                    )
        return self._sync

    def async_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            if self._given_async is not None and not self._async:
                client = self._given_async  # the user's client serves the first loop it meets
            elif self._url is not None:
                client = redis.asyncio.Redis.from_url(self._url, **self._settings)
            else:
                source = self._given_async if self._given_async is not None else self._sync
                client = redis.asyncio.Redis(**_settings(source))
            self._async[loop] = client
        return client

    def sync_script(self, name: str) -> Script:
        script = self._sync_scripts.get(name)
        if script is None:
            script = self._sync_scripts[name] = self.sync_client().register_script(_SCRIPTS[name])
        return script

    def async_script(self, name: str) -> AsyncScript:
        client = self.async_client()
        scripts = self._async_scripts.setdefault(client, {})
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = client.register_script(_SCRIPTS[name])
        return script

    # -- the engine's lone-caller fast path ----------------------------------------------------
    # Written out rather than as a ``RedisCall``: its generic dispatch (the op object, the
    # breaker's check and report, the method looked up by name) costs a tenth of a whole
    # shared-tier hit. The engine only takes this path while the breaker is closed.

    def fetch_sync(self, keys: str | list[str]) -> tuple[Any, BaseException | None]:
        """Read on the sync client: ``(what was read, None)``, or ``(None, error)``. One key is
        a GET; a list of keys an MGET (a GET for a list of one, which costs redis-py less)."""
        client = self._sync or self.sync_client()
        try:
            if type(keys) is str:
                return self._fetched(client.get(keys))
            return self._fetched(client.mget(keys) if len(keys) > 1 else [client.get(keys[0])])
        except REDIS_ERRORS as exc:
            return self._fetch_failed(exc)

    async def fetch_async(self, keys: str | list[str]) -> tuple[Any, BaseException | None]:
        """``fetch_sync`` on the running loop's client."""
        client = self.async_client()
        try:
            if type(keys) is str:
                return self._fetched(await client.get(keys))
            return self._fetched(
                await client.mget(keys) if len(keys) > 1 else [await client.get(keys[0])]
            )
        except REDIS_ERRORS as exc:
            return self._fetch_failed(exc)

    def _fetched(self, raw: Any) -> tuple[Any, None]:
        if self.breaker.failures:
            self.breaker.passed(None)
        return raw, None

    def _fetch_failed(self, exc: BaseException) -> tuple[None, BaseException]:
        if isinstance(exc, OUTAGE_ERRORS):
            self.breaker.failed()
        return None, exc

    # -- the server clock -------------------------------------------------------------------

    def clock_due(self) -> bool:
        """Whether the offset to the server clock should be (re)measured (every 60 s)."""
        return self.offset_ms is None or time.monotonic() - self.clock_checked > 60.0

    def setup_due(self) -> bool:
        """Whether the clock is due, or the client of the calling code (the running loop's, or
        the sync one) has not had its scripts loaded yet."""
        if self.clock_due():
            return True
        loop = asyncio._get_running_loop()  # the public twin raises when no loop runs
        if loop is not None:
            return self._async.get(loop) not in self.preloaded
        return self._sync is None or self._sync not in self.preloaded

    def record_time(self, before: float, reply: tuple[int, int], after: float) -> None:
        server_ms = reply[0] * 1000 + reply[1] / 1000
        self.offset_ms = server_ms - (before + after) * 500  # midpoint of the round trip, in ms
        self.uncertainty_ms = (after - before) * 500
        self.clock_checked = after

    def server_now_ms(self) -> float:
        """The Redis server's clock now, estimated from the local monotonic clock."""
        assert self.offset_ms is not None
        return time.monotonic() * 1000 + self.offset_ms

    # -- events -----------------------------------------------------------------------------

    @property
    def inbox(self) -> str:
        """This ``Cache``'s own event channel: the events of other processes reach it there."""
        return f"{self.channel}:{self.origin}"

    def message(self, kind: str, *fields: Any) -> bytes:
        return msgpack.packb([kind, self.origin, *fields], use_bin_type=True)  # type: ignore[no-any-return]

    def reset_after_fork(self) -> None:
        """In a forked child: no listener thread, no connections or scripts of the parent's."""
        self._lock = threading.Lock()
        self.listener = None
        self.origin = secrets.token_hex(8)
        self._async = weakref.WeakKeyDictionary()
        self._async_scripts = weakref.WeakKeyDictionary()
        if self._url is not None:
            self._sync = None  # redis-py would also reset the pool on the new pid
            self._sync_scripts = {}

    def close(self) -> None:
        """Stop the listener and close the sync client cachewise opened (never the user's)."""
        if self.listener is not None:
            self.listener.stop()
        if self._url is not None and self._sync is not None:
            self._sync.close()


class RedisOp(Op):
    """A Redis operation, guarded by the backend's circuit breaker: refused at once while it is
    open (``CircuitOpen``, which callers handle as any Redis trouble), and reporting each
    outcome to it."""

    __slots__ = ("backend",)

    backend: RedisBackend

    def call_sync(self) -> Any:
        raise NotImplementedError

    async def call_async(self) -> Any:
        raise NotImplementedError

    def run_sync(self) -> Any:
        breaker = self.backend.breaker
        breaker.check()
        try:
            return breaker.passed(self.call_sync())
        except OUTAGE_ERRORS:
            breaker.failed()
            raise

    async def run_async(self) -> Any:
        breaker = self.backend.breaker
        breaker.check()
        try:
            return breaker.passed(await self.call_async())
        except OUTAGE_ERRORS:
            breaker.failed()
            raise


class RedisCall(RedisOp):
    """One Redis command, on the sync client or on the running loop's async client."""

    __slots__ = ("args", "method")

    def __init__(self, backend: RedisBackend, method: str, *args: Any) -> None:
        self.backend = backend
        self.method = method
        self.args = args

    def call_sync(self) -> Any:
        return getattr(self.backend.sync_client(), self.method)(*self.args)

    async def call_async(self) -> Any:
        return await getattr(self.backend.async_client(), self.method)(*self.args)


class ServerTime(RedisOp):
    """Measure the offset between the local monotonic clock and the Redis server's clock, and
    on a client's first use load every script in one round trip (otherwise the first lease of
    a herd would pay EVALSHA, NOSCRIPT and SCRIPT LOAD while everyone waits)."""

    __slots__ = ()

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    def _pipeline(self, client: Any) -> tuple[Any, bool]:
        """TIME, plus SCRIPT LOAD of every script if this client has not had them."""
        pipe = client.pipeline(transaction=False)
        pipe.time()
        fresh = client not in self.backend.preloaded
        if fresh:
            for source in _SCRIPTS.values():
                pipe.script_load(source)
        return pipe, fresh

    def _done(self, client: Any, fresh: bool, before: float, reply: list[Any]) -> None:
        self.backend.record_time(before, reply[0], time.monotonic())
        if fresh:
            self.backend.preloaded.add(client)

    def call_sync(self) -> None:
        client = self.backend.sync_client()
        pipe, fresh = self._pipeline(client)
        before = time.monotonic()
        self._done(client, fresh, before, pipe.execute())

    async def call_async(self) -> None:
        client = self.backend.async_client()
        pipe, fresh = self._pipeline(client)
        before = time.monotonic()
        self._done(client, fresh, before, await pipe.execute())


class RunScript(RedisOp):
    """One of ``_lua``'s scripts (EVALSHA, loaded on first use by redis-py)."""

    __slots__ = ("args", "keys", "name")

    def __init__(self, backend: RedisBackend, name: str, keys: list[str], args: list[Any]) -> None:
        self.backend = backend
        self.name = name
        self.keys = keys
        self.args = args

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

    def __init__(
        self, backend: RedisBackend, calls: list[tuple[str, list[str], list[Any]]]
    ) -> None:
        self.backend = backend
        self.calls = calls

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


class RunReplicated(RunPipeline):
    """One script, then ``WAIT 1 <ms>`` on the same connection (one round trip): the reply comes
    once a replica has what the script wrote, or when ``ms`` passed. Returns the script's reply
    and how many replicas acknowledged. On NOSCRIPT (the refused call wrote nothing) the script
    is loaded and both are sent again, so the WAIT still follows the write on its connection."""

    __slots__ = ("wait_ms",)

    def __init__(
        self, backend: RedisBackend, call: tuple[str, list[str], list[Any]], wait_ms: int
    ) -> None:
        super().__init__(backend, [call])
        self.wait_ms = wait_ms

    def _queue(self, pipe: Any, shas: list[str]) -> Any:
        super()._queue(pipe, shas)
        pipe.execute_command("WAIT", 1, self.wait_ms)
        return pipe

    def call_sync(self) -> list[Any]:
        script = self.backend.sync_script(self.calls[0][0])
        client = self.backend.sync_client()
        replies = self._queue(client.pipeline(transaction=False), [script.sha]).execute(
            raise_on_error=False
        )
        if self._unknown(replies):
            client.script_load(script.script)
            replies = self._queue(client.pipeline(transaction=False), [script.sha]).execute(
                raise_on_error=False
            )
        reply, acked = self._checked(replies)
        return [reply, int(acked)]

    async def call_async(self) -> list[Any]:
        script = self.backend.async_script(self.calls[0][0])
        client = self.backend.async_client()
        replies = await self._queue(client.pipeline(transaction=False), [script.sha]).execute(
            raise_on_error=False
        )
        if self._unknown(replies):
            await client.script_load(script.script)
            replies = await self._queue(
                client.pipeline(transaction=False), [script.sha]
            ).execute(raise_on_error=False)
        reply, acked = self._checked(replies)
        return [reply, int(acked)]


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


class Listener:
    """One subscription per ``Cache``, in a daemon thread, to the namespace's event channels:
    its own (``inbox``), where other processes send their events while the registry of
    listeners is complete, and the shared one, where they send them otherwise.

    It wakes the callers waiting for another process' fill (no polling of Redis), applies other
    processes' invalidations to this process' L1, and reports a reset when the subscription
    drops, when it comes back, and when it is first made (``on_reset(lost)``): the L1 cannot
    know what it missed (reads run while the first subscription is being made) and is emptied
    by the engine.
    """

    def __init__(
        self,
        backend: RedisBackend,
        on_event: Callable[[list[Any]], None],
        on_reset: Callable[[bool], None],
        on_refused: Callable[[bool], None] = lambda refused: None,
    ) -> None:
        self.backend = backend
        self.on_event = on_event
        self.on_reset = on_reset
        #: Told when Redis refuses the subscription (an ACL without the channel) and when it
        #: accepts it again: without events, L1 cannot be kept coherent.
        self.on_refused = on_refused
        self.refused = False
        self.ready = threading.Event()
        #: Set at the first subscription (never reset): what the first reads wait for, unless
        #: a wait for it already ran out (``gave_up``: the reads after it do not wait again).
        self.heard = False
        self.gave_up = False
        self._first: list[concurrent.futures.Future[Any]] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._waiters: dict[str, list[concurrent.futures.Future[Any]]] = {}
        self._pubsub: Any = None
        self._register_due = math.inf  # registered once subscribed, then every REGISTER_EVERY
        self._thread = threading.Thread(target=self._run, name="cachewise-events", daemon=True)
        self._thread.start()

    def wait_for(self, key: str) -> concurrent.futures.Future[Any]:
        """A future resolved with the envelope bytes of the next fill of ``key``."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._waiters.setdefault(key, []).append(future)
        return future

    @property
    def first_due(self) -> bool:
        """Whether reads should still wait for the first subscription."""
        return not (self.heard or self.refused or self.gave_up)

    def first_subscription(self) -> concurrent.futures.Future[Any]:
        """A future of the caller's own, resolved once the first subscription is made or
        refused (its own: a caller that gives up cancels nobody else's wait)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self.heard or self.refused:
                future.set_result(True)
            else:
                self._first.append(future)
        return future

    def _release_first(self) -> None:
        with self._lock:
            waiting, self._first = self._first, []
        for future in waiting:
            if not future.done():
                future.set_result(True)

    def forget(self, key: str, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            waiting = self._waiters.get(key)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiters[key]

    def wake(self, key: str, payload: Any) -> None:
        with self._lock:
            waiting = self._waiters.pop(key, [])
        for future in waiting:
            if not future.done():
                future.set_result(payload)

    def _wake_all(self) -> None:
        """Wake every caller waiting for a fill, with nothing: it asks Redis again instead of
        waiting out the lease of a holder whose fill this process may never hear."""
        with self._lock:
            waiting, self._waiters = self._waiters, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    def stop(self) -> None:
        self._stopped.set()
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                pubsub.close()

    #: How often a listener renews its entry in the registry of listeners (``_lua.REGISTER``),
    #: and how long an entry lasts without renewal.
    #: A listener dropped while alive (its renewals stalled) loses no event: the registry is
    #: then incomplete and events go to the shared channel until it registers again.
    REGISTER_EVERY = 30.0
    REGISTER_KEEP_MS = 90_000

    def _register(self) -> None:
        """Enter this listener in the namespace's registry of listeners, so that other
        processes send it events on its own channel (best effort: while it is not entered,
        events go to the shared channel)."""
        self._register_due = time.monotonic() + self.REGISTER_EVERY
        try:
            self.backend.sync_script("register")(
                keys=[self.backend.channel], args=[self.backend.origin, self.REGISTER_KEEP_MS]
            )
        except Exception as exc:  # best effort (redis-py can raise a bare ValueError here)
            log.debug("cachewise: could not register the event listener: %s", describe(exc))

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            # Leave the registry (it holds few entries before events go to the shared channel),
            # from this thread: ``stop`` may be called on an event loop's thread. A process
            # that dies without this is forgotten after REGISTER_KEEP_MS. Any error: redis-py
            # can raise a bare ValueError from a connect that timed out half-way.
            if self._register_due != math.inf and self.backend.breaker.state is Breaker.CLOSED:
                with contextlib.suppress(Exception):
                    self.backend.sync_client().zrem(self.backend.channel, self.backend.origin)

    def _listen(self) -> None:
        backoff = 0.05
        connected_before = False
        inbox = self.backend.inbox
        while not self._stopped.is_set():
            try:
                self._pubsub = self.backend.sync_client().pubsub()  # type: ignore[no-untyped-call,unused-ignore]
                # Both in one command: a listener is on both channels or on neither, which
                # ``_lua._PUBLISH_FN`` counts on.
                self._pubsub.subscribe(self.backend.channel, inbox)
                while not self._stopped.is_set():
                    message = self._pubsub.get_message(timeout=1.0)
                    if time.monotonic() >= self._register_due:
                        self._register()
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        if text(message["channel"]) != inbox:
                            continue  # the shared channel's; the inbox is confirmed next
                        self._register()
                        # What was filled before now, while away or before the first
                        # subscription, may have missed its invalidation.
                        self.on_reset(connected_before)
                        self._wake_all()  # a fill published while away was not heard
                        connected_before = True
                        backoff = 0.05
                        if self.refused:
                            self.refused = False
                            self.on_refused(False)
                        self.ready.set()
                        self.heard = True
                        self._release_first()
                    elif message["type"] == "message":
                        self._dispatch(message["data"])
            except Exception as exc:
                if self._stopped.is_set():
                    return
                with contextlib.suppress(Exception):  # its connection goes back to the pool
                    self._pubsub.close()
                if self.ready.is_set():
                    self.ready.clear()
                    self.on_reset(True)  # from now on, invalidations cannot reach this process
                    self._wake_all()  # nor fills: the callers waiting for one look again
                if isinstance(exc, redis.exceptions.NoPermissionError):
                    if not self.refused:
                        self.refused = True
                        self.on_refused(True)
                        log.error(
                            "cachewise: Redis refuses this user the channel %s (ACL): other "
                            "processes' changes cannot reach this process, so nothing read from "
                            "Redis is kept in its L1 until the channel is granted",
                            self.backend.channel,
                        )
                    self._release_first()  # the first reads need not wait any longer
                elif isinstance(exc, REDIS_ERRORS):
                    # Once per loss, not once per reconnection attempt.
                    level = logging.WARNING if backoff <= 0.05 else logging.DEBUG
                    log.log(
                        level,
                        "cachewise: event channel %s lost: %s",
                        self.backend.channel,
                        describe(exc),
                    )
                else:  # a bug must not end coherence silently
                    log.exception("cachewise: event listener failed; restarting")
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _dispatch(self, data: bytes) -> None:
        try:
            event = msgpack.unpackb(data, raw=False)
        except Exception:
            log.warning("cachewise: undecodable event on %s", self.backend.channel)
            return
        if not isinstance(event, list) or len(event) < 3:
            return
        if event[0] == "f":
            self.wake(event[2], event[3] if len(event) > 3 else None)
        elif event[0] == "l":
            self.wake(event[2], None)  # a load gave its lease back: its waiters look again
        elif event[0] == "i" and isinstance(event[2], list):
            for key in event[2]:  # their leases are gone with them: no fill will come
                self.wake(key, None)
            if len(event) > 3 and event[3]:
                self._wake_all()  # and so are those of the tags' members, which it does not name
        self.on_event(event)
