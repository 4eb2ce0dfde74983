"""The engine: every cache operation written once, as a plan that both drivers carry out.

A plan is a generator: it reads the in-process state, asks ``core.decide`` what to do, and
yields the operations (``Spawn``, ``Invoke``, ``Wait``, Redis calls) it needs from a
driver. ``Cache`` and the decorators
run plans with ``run_sync`` or ``await run_async``; nothing here blocks or awaits.

Rules of this module:

1. Every mutation of L1 and of the flight table happens under ``self.lock``. The hit path reads
   the L1 tables without it (a dict read is atomic under the GIL).
2. A fill is stored only if its flight was not invalidated while it ran, checked under the same
   lock as the invalidation: an invalidation that happened during a load always wins. With
   Redis, the shared fill is also refused unless the loader's lease still holds
   (``redis.lua.STORE``).
3. A plan started with ``Spawn`` (a load, a refresh) never raises: its outcome goes to its flight.
4. Redis trouble is counted and logged, never raised to a caller: the value comes from L1, from
   a load, or from the origin; single-flight in the process still holds.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import random
import secrets
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import codec, core
from ._drivers import (
    BLOCKS_LOOP,
    TIMED_OUT,
    Flight,
    Invoke,
    Plan,
    Sleep,
    Spawn,
    Wait,
    run_async,
    run_sync,
    start_renewals,
)
from ._l1 import L1, Table
from .core import Decision, Entry
from .errors import ConfigTypeError, LoaderResultError, RedisUnavailable, describe
from .keys import MAX_ARGS_CHARS
from .keys import explicit as explicit_key
from .redis import (
    REDIS_ERRORS,
    AwaitEvent,
    Breaker,
    CircuitOpen,
    Listener,
    RedisBackend,
    RedisCall,
    RunPipeline,
    RunScript,
    ServerTime,
    text,
)

log = logging.getLogger("cachewise")

#: A script call: its name in ``redis.scripts``, its keys, its arguments.
StoreCall = tuple[str, list[str], list[Any]]

#: Values up to this size travel with their fill event; larger ones are read from Redis.
EVENT_VALUE_LIMIT = 64 * 1024

_UNREAD: Any = object()  # Redis not read yet
_NO_REDIS: Any = object()  # Redis failed: go on without it
_RETRY: Any = object()  # a flight's result telling its callers to start over


@dataclass(frozen=True)
class InvalidationEvent:
    """What ``on_invalidate`` listeners receive: which full keys and tags were dropped, and where
    the invalidation came from (``"local"``, or ``"remote"`` for another process)."""

    keys: tuple[str, ...]
    tags: tuple[str, ...]
    origin: Literal["local", "remote"] = "local"


@dataclass(frozen=True)
class Policy:
    """How entries of one function or one call live."""

    ttl: float
    stale_ttl: float = 0.0
    #: Raise ``RedisUnavailable`` rather than load without the shared lease when Redis fails.
    fail_closed: bool = False


@dataclass(slots=True)
class Target:
    """Where one entry lives: its L1 table and key, its full (namespaced) key, its tags."""

    table: Table
    l1_key: Hashable
    full_key: str
    where: str
    tags: Callable[[], Iterable[str]] | None = None


class _Latency:
    """A bounded reservoir of recent durations, summarised as percentiles."""

    def __init__(self, size: int = 2048) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def summary(self) -> dict[str, float]:
        data = sorted(self._samples)
        if not data:
            return {"count": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0}

        def pct(p: float) -> float:
            return data[min(len(data) - 1, int(p * len(data)))]

        return {"count": len(data), "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99)}


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for engine in list(_ENGINES):
        engine.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class _Renewal:
    """The lease renewal of one load (RENEW script calls), run every third of the lease's life
    while the load runs. The sync loads of a process renew from one thread, which merges the
    renewals of one Redis that are due together into one pipeline."""

    __slots__ = ("backend", "calls")

    def __init__(self, backend: RedisBackend, calls: list[tuple[str, list[str], list[Any]]]):
        self.backend = backend
        self.calls = calls

    @property
    def group(self) -> RedisBackend:
        return self.backend

    def __call__(self) -> Plan[Any]:
        return self.merged([self])

    def merged(self, renewals: list[_Renewal]) -> Plan[Any]:
        return _run_calls(self.backend, [call for renewal in renewals for call in renewal.calls])


def _run_calls(backend: RedisBackend, calls: list[tuple[str, list[str], list[Any]]]) -> Plan[Any]:
    """Script calls in one round trip: one ``EVALSHA``, or a pipeline of them."""
    if len(calls) == 1:
        return (yield RunScript(backend, *calls[0]))
    return (yield RunPipeline(backend, calls))


class Engine:
    """The in-process state of one ``Cache`` and the plans that read and change it."""

    def __init__(
        self,
        *,
        namespace: str,
        l1_maxsize: int,
        clock: Callable[[], float],
        ttl_jitter: float,
        early_refresh_beta: float,
        wait_timeout: float | None,
        backend: RedisBackend | None = None,
        queue_backend: RedisBackend | None = None,
        lease_ttl: float = 2.0,
        lease_wait_timeout: float = 10.0,
        max_value_bytes: int = 1_000_000,
    ) -> None:
        self.namespace = namespace
        self.prefix = f"{namespace}:" if namespace else ""
        self.clock = clock
        self.jitter = ttl_jitter
        self.beta = early_refresh_beta
        self.wait_timeout = wait_timeout
        self.backend = backend
        #: The Redis of write-behind queues, when not the cache's own (``write_behind_redis``).
        self.queue_backend = queue_backend
        self.lease_ttl = lease_ttl
        self.lease_wait_timeout = lease_wait_timeout
        self.l1 = L1(l1_maxsize)
        self.explicit: Table = {}  # the L1 table of keys used with get/set/get_or_load
        self.lock = threading.Lock()
        self.flights: dict[str, Flight] = {}
        self.counts: Counter[str] = Counter()
        self.load_latency = _Latency()
        self.miss_latency = _Latency()
        self.listeners: list[Callable[[InvalidationEvent], None]] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Values written behind and not yet in the store: served on a miss, so a read never
        #: falls back to the store's old value while the write is queued.
        self.pinned: dict[str, tuple[Target, Any, Policy]] = {}
        self._last_redis_log = 0.0
        self._logged: dict[str, float] = {}
        self.max_value_bytes = max_value_bytes
        #: Invalidations (and writes, which invalidate) that could not reach Redis: sent when it
        #: answers again, so other processes and L2 do not keep what this process dropped.
        self.backlog_keys: set[str] = set()
        self.backlog_tags: set[str] = set()
        self.backlog_overflow = False
        #: Bumped (under ``self.lock``) by every change a read racing it must not undo: the
        #: lone-caller fast path keeps what it read in L1 only if the epoch did not move.
        self.epoch = 0
        self.lone_hits = 0
        #: Keys whose fast-path GET is under way: the flight callers started meanwhile, or the
        #: loop of the GET's caller (None: a thread) until one does.
        self.probing: dict[str, Flight | asyncio.AbstractEventLoop | None] = {}
        if backend is not None:
            backend.breaker.on_recover = self._on_reset  # L1 missed events while Redis was away
        _ENGINES.add(self)

    # -- small helpers --------------------------------------------------------------------------

    def explicit_target(self, key: str) -> Target:
        return Target(self.explicit, key, self.prefix + explicit_key(key), key)

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a strong reference to a task the engine started until it ends."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def reset_after_fork(self) -> None:
        """In a forked child: empty L1, forget the parent's flights, locks, tasks, connections."""
        self.lock = threading.Lock()
        self.flights = {}
        self.probing = {}
        self.tasks = set()
        self.l1.clear()
        self.l1.accepting = True  # the child's own listener says whether it may hold anything
        if self.backend is not None:
            self.backend.reset_after_fork()

    def _claim(self, key: str, join_probe: bool = False) -> tuple[Flight, bool]:
        """The key's flight, and whether this caller leads it. With ``join_probe``, a flight
        started while a fast-path GET of the key is under way is left to that GET's caller,
        which settles it or leads its load (see ``ticket``)."""
        with self.lock:
            flight = self.flights.get(key)
            if flight is not None:
                return flight, False
            flight = self.flights[key] = Flight()
            if join_probe and key in self.probing:
                probe = self.probing[key]
                if not isinstance(probe, Flight):  # the GET's caller will settle this flight
                    flight.loop = probe
                    self.probing[key] = flight
                    return flight, False
            # Settled by this caller: on its loop's thread, in a task of that loop if it has one.
            flight.loop = asyncio._get_running_loop()
            return flight, True

    def _settle(
        self, flight: Flight, target: Target, entry: Entry | None, value: Any, epoch: int = -1
    ) -> None:
        """Store ``entry`` in L1 unless the flight was invalidated (or, given an ``epoch``,
        anything changed since), end the flight, wake waiters."""
        with self.lock:
            if entry is not None and not flight.invalidated and epoch in (-1, self.epoch):
                self.l1.put(target.table, entry)
            if self.flights.get(target.full_key) is flight:
                del self.flights[target.full_key]
        if not flight.done():
            flight.set_result(value)

    def _fail(
        self, flight: Flight, target: Target, exc: BaseException, counter: str = "load_errors"
    ) -> None:
        with self.lock:
            if self.flights.get(target.full_key) is flight:
                del self.flights[target.full_key]
        self.counts[counter] += 1
        if not flight.done():
            flight.set_exception(exc)

    def redis_failed(self, exc: BaseException) -> None:
        """Count a Redis error and log it (at most once a second): it never reaches callers."""
        if isinstance(exc, CircuitOpen):
            return  # counted by the breaker; its opening was logged
        self.counts["redis_errors"] += 1
        now = time.monotonic()
        if now - self._last_redis_log > 1.0:
            self._last_redis_log = now
            log.warning("cachewise: Redis call failed, serving without it: %s", describe(exc))

    # -- entries --------------------------------------------------------------------------------

    def _tag_keys(self, flight: Flight) -> list[str]:
        """The Redis indexes of the tags a flight's entry will carry."""
        backend = self.backend
        assert backend is not None
        return [backend.tag_key(tag) for tag in flight.tags]

    def _tags(self, target: Target) -> tuple[str, ...]:
        if target.tags is None:
            return ()
        tags = tuple(target.tags())
        for tag in tags:
            if not isinstance(tag, str):
                raise ConfigTypeError(
                    f"tags= of {target.where} must return strings, got {type(tag).__name__}"
                )
        return tags

    def _entry(
        self, target: Target, policy: Policy, value: Any, load_time: float, tags: tuple[str, ...]
    ) -> Entry:
        return core.make_entry(
            value,
            now=self.clock(),
            ttl=policy.ttl,
            stale_ttl=policy.stale_ttl,
            load_time=load_time,
            jitter=self.jitter,
            jitter_draw=random.random(),
            beta=self.beta,
            full_key=target.full_key,
            l1_key=target.l1_key,
            tags=tags,
        )

    def _envelope(self, entry: Entry, versions: tuple[str, ...] = ()) -> codec.Envelope:
        """The shared form of a local entry: its deadlines moved onto the Redis server's clock,
        with the versions its tags had when it was made."""
        assert self.backend is not None
        shift = self.backend.server_now_ms() - self.clock() * 1000
        return codec.Envelope(
            entry.value,
            fresh_until_ms=int(entry.fresh_until * 1000 + shift),
            stale_until_ms=int(entry.stale_until * 1000 + shift),
            load_time_ms=int(entry.load_time * 1000),
            tags=entry.tags,
            versions=versions,
        )

    def _server_ms(self, local_time: float) -> float:
        """A time of the engine's clock, on the Redis server's clock."""
        assert self.backend is not None
        return local_time * 1000 + self.backend.server_now_ms() - self.clock() * 1000

    def _store_call(
        self, entry: Entry, token: str, where: str, versions: tuple[str, ...] = ()
    ) -> StoreCall:
        """The STORE script call that writes ``entry`` (``token`` "" writes unconditionally),
        recording ``versions`` of its tags (refused by Redis if one moved since).

        Packs the value first, so a value msgpack refuses raises before anything is stored.
        """
        backend = self.backend
        assert backend is not None
        if len(versions) != len(entry.tags):
            raise AssertionError(f"{len(entry.tags)} tags but {len(versions)} versions")
        env = self._envelope(entry, versions)
        packed = codec.pack(env, where)
        key = entry.full_key
        if len(packed) > self.max_value_bytes:
            # Too large to share: kept in this process only, and no older copy stays shared.
            self.counts["oversize_values"] += 1
            self._log_once(
                key, "value of %s is %d bytes (max_value_bytes=%d): not stored in Redis",
                key, len(packed), self.max_value_bytes,
            )  # fmt: skip
            return self._drop_call([key])
        keys = [key, backend.lease_key(key), *(backend.tag_key(t) for t in entry.tags)]
        # Other processes replace their copy from the event; past a size, they drop it instead
        # (and read Redis if they need it), so large values do not flood every subscriber.
        event = (
            backend.message("f", key, packed)
            if len(packed) <= EVENT_VALUE_LIMIT
            else backend.message("f", key)
        )
        args = [token, packed, env.stale_until_ms, backend.inbox, event, *versions]
        return "store", keys, args

    def _drop_call(self, keys: list[str], tags: list[str] | None = None) -> StoreCall:
        """The INVALIDATE script call for full keys and tags."""
        backend = self.backend
        assert backend is not None
        tags = tags or []
        message = backend.message("i", keys, tags)
        names = [*keys, *(backend.tag_key(tag) for tag in tags)]
        return "invalidate", names, [backend.namespace, backend.inbox, message, len(keys)]

    def _log_once(self, key: str, message: str, *args: Any) -> None:
        """Log a warning about ``key`` at most once a minute (bounded memory)."""
        now = time.monotonic()
        if now - self._logged.get(key, -60.0) < 60.0:
            return
        if len(self._logged) > 1000:
            self._logged.clear()
        self._logged[key] = now
        log.warning("cachewise: " + message, *args)

    def _adopt(self, target: Target, env: codec.Envelope) -> Entry:
        """The local entry of a shared one: it never outlives the Redis key it came from."""
        assert self.backend is not None
        shift = self.clock() * 1000 - self.backend.server_now_ms() - self.backend.uncertainty_ms
        fresh_until = (env.fresh_until_ms + shift) / 1000
        load_time = env.load_time_ms / 1000
        return Entry(
            env.value,
            fresh_until=fresh_until,
            stale_until=(env.stale_until_ms + shift) / 1000,
            early_at=core.early_window(self.clock(), fresh_until, load_time, self.beta),
            load_time=load_time,
            full_key=target.full_key,
            l1_key=target.l1_key,
            tags=env.tags,
        )

    def _decode(self, raw: Any, count: bool = True, key: str = "") -> codec.Envelope | None:
        env = codec.unpack(raw)
        if count and raw is not None and env is None:
            self.counts["decode_errors"] += 1  # a miss; the next fill overwrites it
            self._log_once(
                key, "undecodable entry %s in Redis (a miss; the next load overwrites it)",
                key or "(unnamed)",
            )  # fmt: skip
        return env

    def _current(
        self, env: codec.Envelope | None, count: bool = True
    ) -> Plan[codec.Envelope | None]:
        """``env`` if each of its tags still has the version the entry recorded, else None (a
        miss, counted): tag state invalidated, evicted, deleted or flushed never leaves a
        tagged entry servable. One MGET for a tagged entry; none for an untagged one. Redis
        failing here is a miss too."""
        if env is None or not env.tags:
            return env
        backend = self.backend
        assert backend is not None
        try:
            now = yield RedisCall(backend, "mget", [backend.tag_key(tag) for tag in env.tags])
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return None
        if [None if v is None else text(v) for v in now] == list(env.versions):
            return env
        if count:
            self.counts["tag_misses"] += 1
        return None

    def _tag_versions(self, tags: tuple[str, ...]) -> Plan[tuple[str, ...]]:
        """The current versions of ``tags`` (made where a tag has none), for a write."""
        backend = self.backend
        assert backend is not None
        keys = [backend.tag_key(tag) for tag in tags]
        ms = int(self.lease_ttl * 1000)
        got = yield RunScript(backend, "tag_versions", keys, [secrets.token_hex(8), ms])
        return tuple(text(v) for v in got)

    # -- loading --------------------------------------------------------------------------------

    def _invoke(
        self,
        loader: Callable[[], Any],
        renew: Callable[[], Plan[Any]] | None = None,
        every: float = 0.0,
    ) -> Plan[tuple[Any, float]]:
        started = self.clock()
        value = yield Invoke(loader, renew, every)
        return value, self.clock() - started

    def _resolve(
        self,
        flight: Flight,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        refreshing: Entry | None = None,
        raw: Any = _UNREAD,
    ) -> Plan[None]:
        """The work of one flight: L2, the lease, the load, the fill. Never raises.

        ``refreshing`` is the entry a background refresh replaces (None for a load); ``raw``
        what the leader already read from Redis, if it did.
        """
        try:
            flight.tags = self._tags(target)
            if self.backend is None:
                yield from self._load_here(flight, target, loader, policy)
            elif raw is _NO_REDIS:
                yield from self._load_unshared(flight, target, loader, policy)
            else:
                yield from self._resolve_shared(flight, target, loader, policy, refreshing, raw)
        except BaseException as exc:  # delivered to every caller that joined, never cached
            if refreshing is not None and not isinstance(exc, asyncio.CancelledError):
                log.warning("cachewise: background refresh of %s failed: %r", target.full_key, exc)
            self._fail(
                flight, target, exc, "load_errors" if refreshing is None else "refresh_errors"
            )

    def _load_here(
        self, flight: Flight, target: Target, loader: Callable[[], Any], policy: Policy
    ) -> Plan[None]:
        """Load and keep the value in this process only (no Redis, or Redis unusable)."""
        value, took = yield from self._invoke(loader)
        entry = self._entry(target, policy, value, took, flight.tags)
        self.counts["loads"] += 1
        self.load_latency.add(took)
        self._settle(flight, target, entry, value)

    def _load_unshared(
        self, flight: Flight, target: Target, loader: Callable[[], Any], policy: Policy
    ) -> Plan[None]:
        """Redis failed: load in this process (single-flight here still holds), unless the
        policy is fail-closed."""
        if policy.fail_closed:
            raise RedisUnavailable(
                f"Redis is unavailable and {target.where} is fail-closed: not loading it "
                "without the shared lease"
            )
        self.counts["loads_without_redis"] += 1
        yield from self._load_here(flight, target, loader, policy)

    def _read_l2(self, target: Target) -> Plan[Any]:
        """GET the shared entry: its raw bytes, or ``_NO_REDIS`` when Redis failed (counted)."""
        backend = self.backend
        assert backend is not None
        try:
            if self._setup_due(backend):
                yield from self._ensure_backend()
            return (yield RedisCall(backend, "get", target.full_key))
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return _NO_REDIS

    def _use_l2(
        self,
        flight: Flight,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        env: codec.Envelope | None,
        refreshing: Entry | None = None,
    ) -> Plan[bool]:
        """Settle the flight from the shared entry if it can serve; True when it did."""
        backend = self.backend
        if env is None or backend is None:
            return False
        if self._take_fresh(flight, target, env, refreshing):
            return True
        if refreshing is None and backend.server_now_ms() < env.stale_until_ms:
            # Shared and stale: serve it now, refresh under the lease in the background.
            self.counts["stale_served"] += 1
            entry = self._adopt(target, env)
            self._settle(flight, target, entry, env.value)
            yield from self._refresh(target, loader, policy, entry)
            return True
        return False

    def _take_fresh(
        self, flight: Flight, target: Target, env: codec.Envelope, refreshing: Entry | None = None
    ) -> bool:
        """Settle the flight with a fresh shared entry; True when it was fresh."""
        backend = self.backend
        assert backend is not None
        if backend.server_now_ms() >= env.fresh_until_ms:
            return False
        # A refresh takes a shared value only if someone already refreshed it: an early
        # refresh still finds the very entry it is replacing, fresh, in Redis.
        if refreshing is not None and env.fresh_until_ms <= (
            self._server_ms(refreshing.fresh_until) + 2 * backend.uncertainty_ms + 5
        ):
            return False
        self.counts["l2_hits"] += 1
        self._settle(
            flight, target, self._adopt(target, env) if self.l1.maxsize else None, env.value
        )
        return True

    def _lookup(
        self,
        flight: Flight,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        raw: Any = _UNREAD,
    ) -> Plan[Any]:
        """The leader's first look at Redis, in its own task: an L1 miss is most often an L2 hit,
        and a detached task per hit would cost more than the hit. Returns the raw bytes read (the
        flight is settled if they served) or ``_NO_REDIS``. ``raw``: what the fast path read."""
        if raw is _UNREAD:
            try:
                raw = yield from self._read_l2(target)
            except BaseException:
                # The leader was cancelled mid-read: the callers that joined still get a value.
                yield Spawn(
                    self._resolve(flight, target, loader, policy), self.keep, background=True
                )
                raise
        if raw is _NO_REDIS:
            return raw
        env = yield from self._current(self._decode(raw, key=target.full_key))
        if env is not None and not self._take_fresh(flight, target, env):
            yield from self._use_l2(flight, target, loader, policy, env)
        return raw

    def _resolve_shared(
        self,
        flight: Flight,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        refreshing: Entry | None,
        raw: Any = _UNREAD,
    ) -> Plan[None]:
        backend = self.backend
        assert backend is not None
        key = target.full_key
        prefetched = raw is not _UNREAD  # then decoded (and counted) by the leader already
        if not prefetched:
            raw = yield from self._read_l2(target)
        if raw is _NO_REDIS:
            yield from self._load_unshared(flight, target, loader, policy)
            return
        env = self._decode(raw, count=not prefetched, key=key)
        env = yield from self._current(env, count=not prefetched)
        if (yield from self._use_l2(flight, target, loader, policy, env, refreshing)):
            return
        refresh = refreshing is not None
        token = secrets.token_hex(8)
        lease = backend.lease_key(key)
        lease_ms = int(self.lease_ttl * 1000)
        mode = "load" if raw is None and not refresh else "refresh"
        deadline = time.monotonic() + self.lease_wait_timeout
        listener = backend.listener
        assert listener is not None
        while True:
            # Listen before asking, so a fill that lands in between is not missed.
            waiter = listener.wait_for(key)
            try:
                keys = [key, lease, backend.pending_key(key), *self._tag_keys(flight)]
                reply = yield RunScript(backend, "acquire", keys, [token, lease_ms, mode, token])
            except REDIS_ERRORS as exc:
                listener.forget(key, waiter)
                self.redis_failed(exc)
                yield from self._maybe_orphaned(exc, [(lease, token)])
                yield from self._load_unshared(flight, target, loader, policy)
                return
            status, payload = int(reply[0]), reply[1]
            if status == 1:  # a value is there (it landed meanwhile)
                listener.forget(key, waiter)
                env = yield from self._current(self._decode(payload))
                if env is not None and backend.server_now_ms() < env.fresh_until_ms:
                    self.counts["l2_hits"] += 1
                    self._settle(flight, target, self._adopt(target, env), env.value)
                    return
                mode = "refresh"
                continue
            if status == 2:  # the lease is ours: load, unless someone refreshed just before
                listener.forget(key, waiter)
                flight.versions = tuple(text(v) for v in reply[3])
                env = self._decode(payload, count=False) if payload else None
                env = yield from self._current(env, count=False)
                if env is not None and self._take_fresh(flight, target, env, refreshing):
                    yield from self._give_back(lease, token)
                    return
                pending = self._decode(reply[2]) if reply[2] else None
                if pending is not None:
                    # A write-behind value the store does not have yet: the store would answer
                    # with the old one, so the pending value is the load's result.
                    self.counts["pending_writes_read"] += 1
                    loader = functools.partial(_same, pending.value)
                break
            # Someone else loads: wait to be woken by its fill, or for its lease to run out.
            self.counts["lease_waits"] += 1
            remaining = deadline - time.monotonic()
            timeout = min(int(payload) / 1000 + 0.05, remaining)
            if not listener.ready.is_set():
                timeout = min(timeout, 0.05)  # not subscribed yet: look again soon
            got = yield AwaitEvent(waiter, timeout)
            listener.forget(key, waiter)
            env = self._decode(got) if got is not TIMED_OUT else None
            if env is not None:
                self.counts["l2_hits"] += 1
                self._settle(flight, target, self._adopt(target, env), env.value)
                return
            if time.monotonic() >= deadline:
                self.counts["lease_wait_timeouts"] += 1
                yield from self._load_here(flight, target, loader, policy)
                return
            mode = "load"  # the holder may have died: try again
        yield from self._load_under_lease(flight, target, loader, policy, token)

    def _load_under_lease(
        self, flight: Flight, target: Target, loader: Callable[[], Any], policy: Policy, token: str
    ) -> Plan[None]:
        backend = self.backend
        assert backend is not None
        lease = backend.lease_key(target.full_key)
        lease_ms = int(self.lease_ttl * 1000)
        try:
            value, took = yield from self._invoke(
                loader,
                renew=_Renewal(
                    backend, [("renew", [lease, *self._tag_keys(flight)], [token, lease_ms])]
                ),
                every=self.lease_ttl / 3,
            )
            entry = self._entry(target, policy, value, took, flight.tags)
            store = self._store_call(entry, token, target.where, flight.versions)
        except BaseException:
            yield from self._give_back(lease, token)
            raise
        self.counts["loads"] += 1
        self.load_latency.add(took)
        try:
            stored = yield from self._script(*store)
            if stored:
                self.wake_waiters([target.full_key], store[2][1] if store[0] == "store" else None)
            stored = stored if store[0] == "store" else 1  # too large to share: kept here
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            stored = 1  # fail open: keep it in this process
        if not stored:
            # The lease was taken away (an invalidation or a write happened during the load):
            # the callers get what they asked for, but it is stored nowhere (no stale set).
            self.counts["fills_refused"] += 1
            self._settle(flight, target, None, value)
            return
        self._settle(flight, target, entry, value)

    def _release_call(self, lease: str, token: str) -> tuple[str, list[str], list[Any]]:
        """The RELEASE of a value's lease; it wakes the processes waiting for its fill."""
        backend = self.backend
        assert backend is not None
        key = backend.key_of_lease(lease)
        return "release", [lease], [token, backend.inbox, backend.message("l", key)]

    def _give_back(self, lease: str, token: str) -> Plan[None]:
        """Release a lease we hold, so the others need not wait for it to expire."""
        return self._give_back_all([(lease, token)])

    def _give_back_all(self, leases: list[tuple[str, str]]) -> Plan[None]:
        """``_give_back`` for the ``(lease, token)`` pairs of a bulk load, in one round trip."""
        if not leases:
            return
        try:
            yield from _run_calls(self.backend, [self._release_call(*pair) for pair in leases])  # type: ignore[arg-type]
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return
        self._released(leases)

    def _released(self, leases: list[tuple[str, str]]) -> None:
        """Leases given back: wake this process' callers waiting on them."""
        backend = self.backend
        assert backend is not None
        self.wake_waiters([backend.key_of_lease(lease) for lease, _ in leases])

    def wake_waiters(self, keys: Iterable[str], payload: Any = None) -> None:
        """Wake this process' callers waiting for a fill of ``keys``: the events of a fill, a
        lease given back or an invalidation do not come back to the process that sent them,
        and a flight of this process may wait on the lease of another flight of its own (one
        that an invalidation or a reset detached from its key). ``payload``: the envelope
        bytes of a fill; None makes them ask Redis again."""
        listener = self.backend.listener if self.backend is not None else None
        if listener is not None:
            for key in keys:
                listener.wake(key, payload)

    def _maybe_orphaned(self, exc: BaseException, leases: list[tuple[str, str]]) -> Plan[None]:
        """After a failed ``ACQUIRE``: give its leases back in the background, unless the
        breaker refused it before anything was sent (no thread or task for nothing)."""
        if not isinstance(exc, CircuitOpen):
            yield Spawn(self._give_back_later(leases), self.keep, background=True)

    def _give_back_later(self, leases: list[tuple[str, str]]) -> Plan[None]:
        """Give back ``(lease, token)`` pairs whose ``ACQUIRE`` lost its reply. A timeout does
        not say the script did not run: Redis may hold the lease after all, and every process
        would wait it out for nothing. Tried until Redis answers, for as long as the leases
        could live. Never raises (it runs detached)."""
        deadline = time.monotonic() + self.lease_ttl
        calls = [self._release_call(lease, token) for lease, token in leases]
        while time.monotonic() < deadline:
            try:
                yield from _run_calls(self.backend, calls)  # type: ignore[arg-type]
                self._released(leases)
                return
            except REDIS_ERRORS:
                yield Sleep(0.05)
            except Exception as exc:  # a bug must not kill the thread or task silently
                log.warning("cachewise: giving back leases failed: %r", exc)
                return

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Plan[Any]:
        assert self.backend is not None
        return (yield RunScript(self.backend, name, keys, args))

    def _ensure_backend(self) -> Plan[None]:
        """On first use: measure the server clock and start listening to the event channel.
        After an outage: send the invalidations that could not be sent."""
        backend = self.backend
        assert backend is not None
        if backend.setup_due():
            yield ServerTime(backend)
        if backend.listener is None:
            with self.lock:
                if backend.listener is None:
                    backend.listener = Listener(
                        backend, self._on_event, self._on_reset, self._on_refused
                    )
                    start_renewals()  # loads under a lease renew it from there
        listener = backend.listener
        if listener.first_due:
            # The first reads wait for the subscription (once; about a round trip): what they
            # keep in L1 must not miss an invalidation sent meanwhile. Past the wait, the first
            # subscription empties L1 instead, and later reads do not wait.
            first = listener.first_subscription()
            if (yield AwaitEvent(first, min(1.0, backend.block_limit * 2))) is TIMED_OUT:
                listener.gave_up = True
        if self.backlog_due():
            yield from self._send_backlog()

    def _setup_due(self, backend: RedisBackend) -> bool:
        """Whether ``_ensure_backend`` has work before Redis is read."""
        listener = backend.listener
        return listener is None or listener.first_due or backend.setup_due() or self.backlog_due()

    def backlog_due(self) -> bool:
        return bool(self.backlog_keys or self.backlog_tags or self.backlog_overflow)

    def remember(self, keys: Iterable[str], tags: Iterable[str] = ()) -> None:
        """An invalidation that did not reach Redis: keep it for when Redis answers again."""
        with self.lock:
            self.backlog_keys.update(keys)
            self.backlog_tags.update(tags)
            if len(self.backlog_keys) + len(self.backlog_tags) > self.BACKLOG_LIMIT:
                # Too many to keep: tell every process to empty its L1 instead.
                self.backlog_keys.clear()
                self.backlog_tags.clear()
                self.backlog_overflow = True

    def _send_backlog(self) -> Plan[None]:
        backend = self.backend
        assert backend is not None
        with self.lock:
            keys, tags = list(self.backlog_keys), list(self.backlog_tags)
            overflow = self.backlog_overflow
            self.backlog_keys, self.backlog_tags, self.backlog_overflow = set(), set(), False
        try:
            if overflow:
                yield RedisCall(backend, "publish", backend.channel, backend.message("r"))
            if keys or tags:
                yield RunScript(backend, *self._drop_call(keys, tags))
            self.counts["outage_invalidations_sent"] += len(keys) + len(tags)
        except REDIS_ERRORS:
            self.remember(keys, tags)  # try again with the next call
            if overflow:
                self.backlog_overflow = True
            raise

    # -- events from other processes ------------------------------------------------------------

    def _on_event(self, event: list[Any]) -> None:
        assert self.backend is not None
        kind, origin = event[0], event[1]
        if origin == self.backend.origin:
            return
        if kind == "f" and len(event) >= 3:
            # Another process filled or wrote a key: a copy held here is replaced in place (or
            # dropped, when the value was too large to travel with the event).
            env = codec.unpack(event[3]) if len(event) >= 4 else None
            with self.lock:
                self.epoch += 1  # a fast-path read of this key may have got the older value
                held = self.l1.held(event[2])
                if held is not None:
                    table, old = held
                    target = Target(table, old.l1_key, old.full_key, old.full_key)
                    if env is not None:
                        self.l1.put(table, self._adopt(target, env))
                    else:
                        self.l1.drop(event[2])
        elif kind == "r":
            self._on_reset()  # another process lost track of its invalidations during an outage
        elif kind == "i" and len(event) >= 4:
            keys, tags = list(event[2]), tuple(event[3])
            self.counts["invalidations_received"] += 1
            self._drop_local(keys, tags)
            self.notify(InvalidationEvent(tuple(keys), tags, "remote"))

    BACKLOG_LIMIT = 10_000

    def _on_refused(self, refused: bool) -> None:
        """Redis refused (or granted again) the event channel: L1 holds nothing meanwhile."""
        with self.lock:
            self.l1.accepting = not refused
            self.epoch += 1
            self.l1.clear()

    def _on_reset(self, lost: bool = True) -> None:
        """The event channel dropped or came back (``lost``), or was first made: L1 cannot
        know what it missed. Loads running through a loss are not kept either; at the first
        subscription, loads waited for it before reading Redis."""
        with self.lock:
            self.epoch += 1
            self.l1.clear()
            if lost:
                for flight in self.flights.values():
                    flight.invalidated = True
        if lost:
            self.counts["l1_flushes"] += 1

    # -- reads ----------------------------------------------------------------------------------

    def read(
        self,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        prefetched: Any = _UNREAD,
        started: float | None = None,
    ) -> Plan[Any]:
        """Cache-aside read of one key: L1, then single-flight load; SWR and early refresh.

        ``prefetched``: what the lone-caller fast path got from Redis (raw bytes or
        ``_NO_REDIS``), used if this caller leads the load instead of reading again; that
        path's ``started`` time, so that ``miss_latency`` counts its GET.
        """
        if started is None:
            started = self.clock()
        while True:
            entry = target.table.get(target.l1_key) or self._being_refreshed(target.full_key)
            now = self.clock()
            decision = core.decide(
                entry,
                now,
                loading=target.full_key in self.flights,
                beta=self.beta,
                draw=1.0 - random.random(),
            )
            if entry is not None and decision is Decision.SERVE:
                entry.hits += 1
                return entry.value
            if entry is not None and decision is Decision.SERVE_STALE:
                self.counts["stale_served"] += 1
                return entry.value
            if entry is not None and decision is Decision.REFRESH:
                if now >= entry.fresh_until:
                    self.counts["stale_served"] += 1
                else:
                    entry.hits += 1
                yield from self._refresh(
                    target, loader, policy, entry, early=now < entry.fresh_until
                )
                return entry.value
            pinned = self.pinned.get(target.full_key)
            if pinned is not None:
                yield from self.set(target, pinned[1], policy)
                return pinned[1]
            flight, leader = self._claim(target.full_key, join_probe=True)
            if leader:
                # Second look: a load may have landed between our read and the claim.
                entry = target.table.get(target.l1_key)
                if core.is_fresh(entry, self.clock()):
                    assert entry is not None
                    self._settle(flight, target, None, entry.value)
                    entry.hits += 1
                    return entry.value
                self.counts["misses"] += 1
                value = yield from self._lead(flight, target, loader, policy, prefetched)
            else:
                self.counts["misses"] += 1
                self.counts["coalesced_waits"] += 1
                value = yield Wait(flight, self.wait_timeout)
                if value is _RETRY:  # the fast-path GET this flight waited for was abandoned
                    continue
                if value is BLOCKS_LOOP:
                    value = yield from self._load_beside_loop(target.full_key, loader)
                elif value is TIMED_OUT:
                    # The shared load outlived wait_timeout: load without it.
                    self.counts["wait_timeouts"] += 1
                    alone = Flight()
                    yield Spawn(self._resolve(alone, target, loader, policy), self.keep)
                    value = yield Wait(alone, None)
            self.miss_latency.add(self.clock() - started)
            return value

    def _being_refreshed(self, key: str) -> Entry | None:
        """The entry a running refresh of ``key`` replaces, unless an invalidation or a write
        happened since: with L1 off it is the only copy a caller can be served while the
        refresh runs (stale-while-revalidate in every configuration)."""
        flight = self.flights.get(key)
        if flight is None or flight.invalidated:
            return None
        stale: Entry | None = flight.stale
        return stale

    def _load_beside_loop(self, key: str, loader: Callable[[], Any]) -> Plan[Any]:
        """Sync code on an event loop's thread found ``key`` being loaded by a task of that loop:
        waiting would block the loop, and the load with it, for ever. It loads the value itself
        and keeps it nowhere (the task's load fills the cache), and says why once a minute."""
        self.counts["sync_loads_on_loop"] += 1
        self._log_once(
            key,
            "a sync call on an event loop's thread found %s being loaded by a task of that "
            "loop; waiting would block that load, so it loaded the value itself. Call the "
            "async API (aget_or_load, an async def function) from async code.",
            key,
        )
        value, took = yield from self._invoke(loader)
        self.counts["loads"] += 1
        self.load_latency.add(took)
        return value

    def _lead(
        self,
        flight: Flight,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        prefetched: Any = _UNREAD,
    ) -> Plan[Any]:
        """Resolve the flight this caller leads: Redis first, then the load."""
        raw = _UNREAD
        if self.backend is not None:
            raw = yield from self._lookup(flight, target, loader, policy, prefetched)
        if not flight.done():  # not served by Redis: load (in its own task if async)
            yield Spawn(self._resolve(flight, target, loader, policy, None, raw), self.keep)
        return flight.result() if flight.done() else (yield Wait(flight, None))

    # -- the lone-caller fast path --------------------------------------------------------------
    # A read that finds nothing in L1 and no flight for its key is most often a shared-tier hit.
    # The full plan (claim a flight, step the generator through a driver, settle the flight)
    # costs a fifth of the GET itself, so such a read first tries one plain GET: it is served
    # if that finds a fresh entry, and otherwise handed to ``read`` with what was found (so the
    # leader does not read again). Callers of the key arriving during that GET start a flight
    # and wait: the GET's caller settles it with what it found, or leads its load. A herd on a
    # cold key costs one GET, as with the full path.

    def ticket(self, target: Target) -> int:
        """The epoch, when a read of ``target`` may try the fast path (the key is then marked
        as probed until ``_unprobe``); -1 when it may not."""
        key = target.full_key
        if (
            target.l1_key in target.table
            or key in self.flights
            or key in self.probing
            or key in self.pinned
        ):
            return -1
        epoch = self._lone()
        if epoch >= 0:
            # The loop of the GET's caller, if any, which the flight it settles depends on.
            self.probing.setdefault(key, asyncio._get_running_loop())
        return epoch

    def _unprobe(self, key: str, abandoned: bool = False) -> Flight | None:
        """End the fast-path GET of ``key``: the flight started meanwhile, which this caller
        now settles or leads. ``abandoned`` (the GET raised): that flight's callers start over.
        """
        with self.lock:
            probe = self.probing.pop(key, None)
            flight = probe if isinstance(probe, Flight) else None
            if flight is not None and abandoned:
                if self.flights.get(key) is flight:
                    del self.flights[key]
                flight.set_result(_RETRY)
                return None
            return flight

    def _lone(self) -> int:
        """The epoch, when Redis may be read without a plan (set up, breaker closed, nothing
        left to send); -1 when it may not."""
        backend = self.backend
        if (
            backend is None
            or backend.breaker.state is not Breaker.CLOSED
            or backend.listener is None
            or not backend.listener.heard
            or backend.clock_due()
            or self.backlog_due()
        ):
            return -1
        return self.epoch

    def lone_read(
        self,
        target: Target,
        outcome: tuple[Any, BaseException | None],
        ticket: int,
        started: float,
    ) -> tuple[bool, Any, Flight | None]:
        """End the fast path's GET: ``(True, value, _)`` when it found a fresh entry (the
        flight callers joined meanwhile is settled with it); otherwise ``(False, what to hand
        to read, that flight)``: the raw bytes, or ``_NO_REDIS`` if Redis failed."""
        joined = self._unprobe(target.full_key)
        raw, error = outcome
        if error is not None:
            self.redis_failed(error)
            return False, _NO_REDIS, joined
        body = codec.body(raw) if raw is not None else None
        offset = self.backend.offset_ms  # type: ignore[union-attr]
        assert offset is not None
        # backend.server_now_ms(), inlined: this is the hot path of every shared-tier hit.
        if (
            body is None
            or time.monotonic() * 1000 + offset >= body[codec.FRESH]
            or body[codec.TAGS]
        ):
            # Absent, undecodable (``read`` counts it), stale, or tagged: the full path checks
            # its tags' versions.
            return False, raw, joined
        self.lone_hits += 1  # an L1 miss and an L2 hit, added to both counts by ``stats``
        self.miss_latency.add(self.clock() - started)
        value = body[codec.VALUE]
        entry = self._adopt(target, codec.envelope(body)) if self.l1.maxsize else None
        # Kept in L1 only if no invalidation or write happened since the ticket: the bytes may
        # be the older value.
        if joined is not None:
            self._settle(joined, target, entry, value, ticket)
        elif entry is not None:
            with self.lock:
                if self.epoch == ticket and target.full_key not in self.flights:
                    self.l1.put(target.table, entry)
        return True, value, joined

    def _after_probe(
        self,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        got: Any,
        joined: Flight | None,
        started: float,
    ) -> Plan[Any]:
        """The full path, for a fast-path GET that did not serve: leading the flight callers
        started meanwhile, if they did."""
        if joined is None:
            return (yield from self.read(target, loader, policy, got, started))
        self.counts["misses"] += 1
        value = yield from self._lead(joined, target, loader, policy, got)
        self.miss_latency.add(self.clock() - started)
        return value

    def read_sync(self, target: Target, loader: Callable[[], Any], policy: Policy) -> Any:
        """``read`` carried out in this thread, after the fast path's GET where it applies."""
        ticket = self.ticket(target)
        if ticket < 0:
            return run_sync(self.read(target, loader, policy))
        started = self.clock()
        try:
            fetched = self.backend.fetch_sync(target.full_key)  # type: ignore[union-attr]
        except BaseException:
            self._unprobe(target.full_key, abandoned=True)
            raise
        done, got, joined = self.lone_read(target, fetched, ticket, started)
        if done:
            return got
        return run_sync(self._after_probe(target, loader, policy, got, joined, started))

    async def read_async(self, target: Target, loader: Callable[[], Any], policy: Policy) -> Any:
        """``read`` carried out on the running loop, after the fast path's GET where it applies."""
        ticket = self.ticket(target)
        if ticket < 0:
            return await run_async(self.read(target, loader, policy))
        started = self.clock()
        try:
            fetched = await self.backend.fetch_async(target.full_key)  # type: ignore[union-attr]
        except BaseException:
            self._unprobe(target.full_key, abandoned=True)
            raise
        done, got, joined = self.lone_read(target, fetched, ticket, started)
        if done:
            return got
        return await run_async(self._after_probe(target, loader, policy, got, joined, started))

    def _refresh(
        self,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        entry: Entry,
        early: bool = False,
    ) -> Plan[None]:
        """Start one background refresh of ``target`` unless one is running."""
        flight, leader = self._claim(target.full_key)
        if not leader:
            return
        flight.stale = entry
        self.counts["early_refreshes" if early else "refreshes"] += 1
        yield Spawn(
            self._resolve(flight, target, loader, policy, entry), self.keep, background=True
        )

    def read_many(
        self,
        targets: Mapping[str, Target],
        load_many: Callable[[list[str]], Any],
        policy: Policy,
    ) -> Plan[dict[str, Any]]:
        """Bulk cache-aside: L1, one MGET, then one ``load_many`` call for the keys this caller
        leads; per-key single-flight throughout."""
        found = yield from self.get_many(list(targets))
        waiting: dict[str, Flight] = {}
        leading: dict[str, Flight] = {}
        for key, target in targets.items():
            if key in found:
                continue
            self.counts["misses"] += 1
            flight, leader = self._claim(target.full_key)
            (leading if leader else waiting)[key] = flight
        if leading:
            yield Spawn(self._resolve_many(targets, leading, load_many, policy), self.keep)
        for key, flight in {**leading, **waiting}.items():
            if key in waiting:
                self.counts["coalesced_waits"] += 1
            value = yield Wait(flight, None)
            while value is _RETRY:  # joined a fast-path GET that was abandoned: lead or join anew
                flight, leader = self._claim(targets[key].full_key)
                if leader:
                    yield Spawn(
                        self._resolve_many(targets, {key: flight}, load_many, policy), self.keep
                    )
                value = yield Wait(flight, None)
            if value is BLOCKS_LOOP:
                value = yield from self._load_beside_loop(
                    targets[key].full_key, functools.partial(_one_of, load_many, key)
                )
            found[key] = value
        return {key: found[key] for key in targets}

    def _resolve_many(
        self,
        targets: Mapping[str, Target],
        flights: dict[str, Flight],
        load_many: Callable[[list[str]], Any],
        policy: Policy,
    ) -> Plan[None]:
        """The work of the flights one bulk caller leads. Never raises."""
        backend = self.backend
        try:
            for key, flight in flights.items():
                flight.tags = self._tags(targets[key])
            mine = dict(flights)
            tokens: dict[str, str] = {}
            if backend is not None:
                mine, tokens, pending = yield from self._acquire_many(
                    targets, flights, load_many, policy
                )
                if pending:  # write-behind values the store does not have yet: use them
                    served = {key: mine.pop(key) for key in pending}
                    yield from self._fill_many(targets, served, tokens, policy, pending, 0.0)
            if not mine:
                return
            keys = list(mine)
            leases: dict[str, tuple[str, str]] = {}
            renew = None
            if backend is not None and tokens:
                leases = {
                    key: (backend.lease_key(targets[key].full_key), tokens[key])
                    for key in keys
                    if key in tokens
                }
                lease_ms = int(self.lease_ttl * 1000)
                renew = _Renewal(
                    backend,
                    [
                        ("renew", [lease, *self._tag_keys(mine[key])], [token, lease_ms])
                        for key, (lease, token) in leases.items()
                    ],
                )
            try:
                result, took = yield from self._invoke(
                    lambda: load_many(keys), renew, self.lease_ttl / 3
                )
                if not isinstance(result, Mapping):
                    raise ConfigTypeError(
                        f"load_many must return a mapping, not {type(result).__name__}"
                    )
            except BaseException:
                yield from self._give_back_all(list(leases.values()))
                raise
            lost = [key for key in keys if key not in result]
            if lost:
                yield from self._give_back_all([leases[key] for key in lost if key in leases])
                self._fail_flights(
                    targets,
                    {key: mine.pop(key) for key in lost},
                    LoaderResultError(f"load_many returned no value for {lost!r}"),
                )
            yield from self._fill_many(targets, mine, tokens, policy, result, took)
        except BaseException as exc:
            self._fail_flights(targets, flights, exc)

    def _acquire_many(
        self,
        targets: Mapping[str, Target],
        flights: dict[str, Flight],
        load_many: Callable[[list[str]], Any],
        policy: Policy,
    ) -> Plan[tuple[dict[str, Flight], dict[str, str], dict[str, Any]]]:
        """Take the leases of ``flights``' keys in one round trip; keys whose lease someone else
        holds are resolved one by one (they wait for that fill). Returns the flights to load,
        the lease tokens, and the pending write-behind values of leased keys."""
        backend = self.backend
        assert backend is not None
        tokens = {key: secrets.token_hex(8) for key in flights}
        lease_ms = int(self.lease_ttl * 1000)
        calls = [
            (
                "acquire",
                [
                    t.full_key,
                    backend.lease_key(t.full_key),
                    backend.pending_key(t.full_key),
                    *self._tag_keys(flights[k]),
                ],
                [tokens[k], lease_ms, "load", tokens[k]],
            )
            for k, t in ((k, targets[k]) for k in flights)
        ]
        try:
            yield from self._ensure_backend()
            replies = yield RunPipeline(backend, calls)
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            taken = [(backend.lease_key(targets[k].full_key), tokens[k]) for k in flights]
            yield from self._maybe_orphaned(exc, taken)
            if policy.fail_closed:
                raise RedisUnavailable(
                    "Redis is unavailable and this bulk load is fail-closed: not loading "
                    "without the shared leases"
                ) from None
            self.counts["loads_without_redis"] += len(flights)
            return dict(flights), {}, {}
        mine: dict[str, Flight] = {}
        pending: dict[str, Any] = {}
        for (key, flight), reply in zip(flights.items(), replies, strict=True):
            target = targets[key]
            status, payload = int(reply[0]), reply[1]
            env = self._decode(payload) if status == 1 else None
            if env is not None and backend.server_now_ms() < env.fresh_until_ms:
                self.counts["l2_hits"] += 1
                self._settle(flight, target, self._adopt(target, env), env.value)
            elif status == 2:
                mine[key] = flight
                flight.versions = tuple(text(v) for v in reply[3])
                written = self._decode(reply[2]) if reply[2] else None
                if written is not None:
                    self.counts["pending_writes_read"] += 1
                    pending[key] = written.value
            else:
                one = functools.partial(_one_of, load_many, key)
                yield Spawn(self._resolve(flight, target, one, policy), self.keep, background=True)
        return mine, tokens, pending

    def _fill_many(
        self,
        targets: Mapping[str, Target],
        flights: dict[str, Flight],
        tokens: dict[str, str],
        policy: Policy,
        result: Mapping[str, Any],
        took: float,
    ) -> Plan[None]:
        backend = self.backend
        entries = {}
        for key in flights:
            target = targets[key]
            entries[key] = self._entry(target, policy, result[key], took, flights[key].tags)
        self.counts["loads"] += len(entries)
        self.load_latency.add(took)
        stored = {key: 1 for key in flights}
        if backend is not None and tokens:
            calls = [
                self._store_call(entry, tokens[key], targets[key].where, flights[key].versions)
                for key, entry in entries.items()
            ]
            try:
                replies = yield RunPipeline(backend, calls)
                for key, call, reply in zip(entries, calls, replies, strict=True):
                    stored[key] = int(reply) if call[0] == "store" else 1
                    if reply:
                        packed = call[2][1] if call[0] == "store" else None
                        self.wake_waiters([targets[key].full_key], packed)
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
        for key, flight in flights.items():
            if not stored[key]:
                self.counts["fills_refused"] += 1
            self._settle(flight, targets[key], entries[key] if stored[key] else None, result[key])

    def _fail_flights(
        self, targets: Mapping[str, Target], flights: dict[str, Flight], exc: BaseException
    ) -> None:
        for key, flight in flights.items():
            self._fail(flight, targets[key], exc)

    def get_many(self, keys: list[str]) -> Plan[dict[str, Any]]:
        """Fresh values of explicit keys: L1 first, then one MGET for the rest.

        Works on the key strings themselves (no ``Target`` per key until one is kept in L1):
        per-key work is what separates a bulk read from the raw ``MGET`` it wraps.
        """
        found, rest = self._local_many(keys)
        backend = self.backend
        if not rest or backend is None:
            return found
        try:
            if self._setup_due(backend):
                yield from self._ensure_backend()
            names = self._names(rest)
            epoch = self.epoch  # what is read is kept in L1 only if nothing changed meanwhile
            if len(rest) == 1:  # GET: a one-key MGET costs redis-py noticeably more
                raws = [(yield RedisCall(backend, "get", names[0]))]
            else:
                raws = yield RedisCall(backend, "mget", names)
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return found
        self._found_many(found, rest, names, (raws, None), epoch)
        return found

    def get_many_sync(self, keys: list[str]) -> dict[str, Any]:
        """``get_many`` carried out in this thread; without its plan when Redis is set up."""
        epoch = self._lone()
        if epoch < 0:
            return run_sync(self.get_many(keys))
        found, rest = self._local_many(keys)
        if rest:
            names = self._names(rest)
            fetched = self.backend.fetch_sync(names)  # type: ignore[union-attr]
            self._found_many(found, rest, names, fetched, epoch)
        return found

    async def get_many_async(self, keys: list[str]) -> dict[str, Any]:
        """``get_many`` carried out on the running loop; without its plan when Redis is set up."""
        epoch = self._lone()
        if epoch < 0:
            return await run_async(self.get_many(keys))
        found, rest = self._local_many(keys)
        if rest:
            names = self._names(rest)
            fetched = await self.backend.fetch_async(names)  # type: ignore[union-attr]
            self._found_many(found, rest, names, fetched, epoch)
        return found

    def _local_many(self, keys: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The fresh values L1 holds, and the keys it does not."""
        found: dict[str, Any] = {}
        table = self.explicit
        if not table:  # no L1, or an empty one: nothing to look up
            return found, keys
        now = self.clock()
        rest: list[str] = []
        for key in keys:
            entry = table.get(key)
            if entry is not None and now < entry.fresh_until:
                entry.hits += 1
                found[key] = entry.value
            else:
                rest.append(key)
        return found, rest

    def _names(self, keys: list[str]) -> list[str]:
        """The Redis names of explicit keys (``explicit_key``, inlined for the common case)."""
        prefix = self.prefix
        return [
            prefix + (k if len(k) <= MAX_ARGS_CHARS and k[0] != "#" else explicit_key(k))
            for k in keys
        ]

    def _found_many(
        self,
        found: dict[str, Any],
        keys: list[str],
        names: list[str],
        fetched: tuple[Any, BaseException | None],
        epoch: int,
    ) -> None:
        """Add to ``found`` the fresh values of what was read for ``keys``; keep them in L1
        unless something changed since ``epoch``."""
        raws, error = fetched
        if error is not None:
            self.redis_failed(error)
            return
        now_ms = self.backend.server_now_ms()  # type: ignore[union-attr]
        before = len(found)
        kept: list[tuple[str, list[Any]]] | None = [] if self.l1.maxsize else None
        for key in codec.fresh_values(keys, raws, now_ms, found, kept):
            at = keys.index(key)  # a key given twice was read twice: same name, same bytes
            self._decode(raws[at], key=names[at])  # counts and logs it
        self.counts["l2_hits"] += len(found) - before
        if kept:
            entries = [
                self._adopt(self.explicit_target(key), codec.envelope(body)) for key, body in kept
            ]
            with self.lock:
                if self.epoch == epoch:
                    for entry in entries:
                        if entry.full_key not in self.flights:
                            self.l1.put(self.explicit, entry)

    # -- writes and invalidation ----------------------------------------------------------------

    def set(
        self,
        target: Target,
        value: Any,
        policy: Policy,
        enqueue: Callable[[StoreCall], Plan[Any]] | None = None,
    ) -> Plan[Any]:
        """Store ``value``; a load of this key that is running now will not overwrite it.

        ``enqueue`` (a durable write-behind) turns the store into the script that also queues
        the write; it runs before anything changes here, and if Redis fails, the error is raised
        (a write that was not queued must not look done). Returns the script's reply.
        """
        tags = self._tags(target)
        entry = self._entry(target, policy, value, 0.0, tags)
        backend = self.backend
        store = None
        reply = None
        if backend is not None:
            try:
                yield from self._ensure_backend()
            except REDIS_ERRORS as exc:
                if enqueue is not None:
                    raise
                self.redis_failed(exc)
            if backend.offset_ms is not None:  # packed before anything is stored
                versions: tuple[str, ...] = ()
                if tags:
                    try:
                        versions = yield from self._tag_versions(tags)
                    except REDIS_ERRORS as exc:
                        if enqueue is not None:
                            raise
                        self.redis_failed(exc)
                        versions = ("",) * len(tags)  # refused by Redis if it answers again
                store = self._store_call(entry, "", target.where, versions)
        if enqueue is not None:
            assert store is not None
            reply = yield from enqueue(store)
            self.wake_waiters([target.full_key], store[2][1])
            store = None
        with self.lock:
            self.epoch += 1
            flight = self.flights.pop(target.full_key, None)
            if flight is not None:
                flight.invalidated = True
            self.l1.put(target.table, entry)
        self.counts["sets"] += 1
        if store is not None:
            try:
                stored = yield from self._script(*store)
                fill = store[2][1] if store[0] == "store" and stored else None
                self.wake_waiters([target.full_key], fill)
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
                self.remember([target.full_key])  # L2 and other L1s may hold an older value
        elif backend is not None and enqueue is None:
            self.remember([target.full_key])
        return reply

    def pin(self, target: Target, value: Any, policy: Policy) -> None:
        self.pinned[target.full_key] = (target, value, policy)

    def unpin(self, full_key: str) -> None:
        self.pinned.pop(full_key, None)

    def drop_local(self, keys: Iterable[str]) -> None:
        """Drop keys from this process only (Redis is dealt with by the caller)."""
        self._drop_local(list(keys), ())

    def _drop_local(self, keys: list[str], tags: tuple[str, ...]) -> list[str]:
        with self.lock:
            self.epoch += 1
            if tags:
                keys.extend(k for k in self.l1.tagged(tags) if k not in keys)
                # And the running loads whose entry will carry one of them (not held yet).
                wanted = set(tags)
                keys.extend(
                    k
                    for k, f in self.flights.items()
                    if not wanted.isdisjoint(f.tags) and k not in keys
                )
            dropped = []
            for key in keys:
                flight = self.flights.pop(key, None)
                if flight is not None:
                    flight.invalidated = True
                if self.l1.drop(key) is not None:
                    dropped.append(key)
        return dropped

    def invalidate(self, full_keys: Iterable[str], tags: Iterable[str] = ()) -> Plan[int]:
        """Drop entries by full key and by tag everywhere, stop running loads from storing."""
        keys = list(dict.fromkeys(full_keys))
        tags = tuple(tags)
        dropped = self._drop_local(keys, tags)
        self.counts["invalidations"] += len(keys)
        backend = self.backend
        if backend is not None:
            try:
                yield from self._ensure_backend()
                extra = yield from self._script(*self._drop_call(list(keys), list(tags)))
                keys.extend(k.decode() if isinstance(k, bytes) else k for k in extra)
                self.wake_waiters(keys)  # their leases are gone: load instead of waiting
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
                self.remember(keys, tags)
        self.notify(InvalidationEvent(tuple(dict.fromkeys(keys)), tags, "local"))
        return len(dropped)

    def notify(self, event: InvalidationEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not break invalidation
                log.exception("cachewise: on_invalidate listener %r failed", listener)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        if self.queue_backend is not None:
            self.queue_backend.close()

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.lock:
            hits = self.l1.live_hits()
            size = len(self.l1)
            evictions = self.l1.evictions
        counts = dict(self.counts)
        for name in ("misses", "l2_hits"):
            counts[name] = counts.get(name, 0) + self.lone_hits
        names = [
            "misses", "loads", "load_errors", "refreshes", "early_refreshes", "refresh_errors",
            "stale_served", "coalesced_waits", "wait_timeouts", "sync_loads_on_loop", "sets",
            "invalidations", "l2_hits", "lease_waits", "lease_wait_timeouts", "fills_refused",
            "redis_errors", "decode_errors", "invalidations_received", "l1_flushes",
            "pending_writes_read", "loads_without_redis", "outage_invalidations_sent",
            "oversize_values", "tag_misses",
        ]  # fmt: skip
        out: dict[str, Any] = {name: counts.get(name, 0) for name in names}
        out.update(
            l1_hits=hits,
            l1_size=size,
            l1_maxsize=self.l1.maxsize,
            evictions=evictions,
            load_latency=self.load_latency.summary(),
            miss_latency=self.miss_latency.summary(),
        )
        return out


def _same(value: Any) -> Any:
    return value


def _one_of(load_many: Callable[[list[str]], Any], key: str) -> Any:
    """Load one key through a bulk loader (a key whose lease another process held)."""
    result = load_many([key])
    if inspect.isawaitable(result):
        return _one_of_async(result, key)
    return result[key]


async def _one_of_async(result: Any, key: str) -> Any:
    return (await result)[key]
