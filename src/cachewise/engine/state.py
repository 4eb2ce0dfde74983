"""The in-process state of one ``Cache`` (L1, flights, counters, the Redis tier) and the small
helpers every part of the engine uses: flights claimed and settled, Redis errors counted."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _switch
from .._clock import monotonic
from .._flight import Flight
from .._l1 import L1, Table
from ..core import Entry
from ..errors import describe
from ..keys import explicit as explicit_key
from ..redis import (
    Backend,
    CircuitOpen,
)
from ..redis.keyspace import KeySpace
from ..serializers import Serializer
from .observe import Observer
from .values import (
    Count,
    InvalidationEvent,
    Policy,
    Target,
    _Latency,
)

log = logging.getLogger("cachewise")

#: How many explicit keys' targets ``explicit_target`` remembers (then it starts afresh).
_TARGETS_KEPT = 1024


_ENGINES: weakref.WeakSet[EngineState] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for engine in list(_ENGINES):
        engine.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class EngineState:
    """The fields of an ``Engine`` and the helpers below every layer of it."""

    if TYPE_CHECKING:  # defined by the ``coherence`` layer, wired to the breaker here

        def _on_reset(self, lost: bool = True) -> None: ...

    def __init__(
        self,
        *,
        namespace: str,
        l1_maxsize: int,
        clock: Callable[[], float],
        timer: Callable[[], float] = monotonic,
        ttl_jitter: float,
        early_refresh_beta: float,
        wait_timeout: float | None,
        backend: Backend | None = None,
        queue_backend: Backend | None = None,
        lease_ttl: float = 2.0,
        lease_wait_timeout: float = 10.0,
        max_value_bytes: int = 1_000_000,
    ) -> None:
        self.namespace = namespace
        #: The namespace's key names (the same as the backend's, which may be absent).
        self.space = KeySpace(namespace)
        self.clock = clock
        #: What deadlines of waits are measured on (leases, flushes); ``clock`` is entries' time.
        self.timer = timer
        self.jitter = ttl_jitter
        self.beta = early_refresh_beta
        self.wait_timeout = wait_timeout
        self.backend = backend
        #: The Redis of write-behind queues, when not the cache's own (``write_behind_redis``).
        self.queue_backend = queue_backend
        self.lease_ttl = lease_ttl
        self.lease_wait_timeout = lease_wait_timeout
        self.l1 = L1(l1_maxsize)
        #: The L1 table of keys used with get/set/get_or_load (and ``key=`` functions').
        self.explicit = Table(self.explicit_name)
        self._targets: dict[str, Target] = {}  # ``explicit_target``'s, by key
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
        #: The cached functions of this cache (their ``where`` and L1 ``table``), for stats.
        self.functions: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Integrations told of loads and of reads L1 did not answer (``observe``).
        self.observers: tuple[Observer, ...] = ()
        #: How values go to Redis unless a function chooses (None: msgpack); ``serializers``.
        self.serializer: Serializer | None = None
        #: Invalidations (and writes, which invalidate) that could not reach Redis: sent when it
        #: answers again, so other processes and L2 do not keep what this process dropped.
        self.backlog_keys: set[str] = set()
        self.backlog_tags: set[str] = set()
        self.backlog_overflow = False
        #: A ``clear`` that did not reach Redis, sent again with the next call that does.
        self.backlog_clear = False
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

    def uncached(self, target: Target | None = None) -> bool:
        """Whether calls here go straight through: caching off (``_switch``), or ``when=``
        said so for this call's ``target``."""
        return (target is not None and target.through) or _switch.passing(self)

    def explicit_name(self, key: Any) -> str:
        """The full key of an explicit key."""
        return self.space.entry(explicit_key(key))

    def explicit_target(self, key: str) -> Target:
        """The entry of an explicit key. Remembered for the last ``_TARGETS_KEPT`` keys (such a
        target is never changed once made): a shared-tier hit then builds no name and no
        object, a tenth of the Python around its ``GET``."""
        target = self._targets.get(key)
        if target is None or target.serializer is not self.serializer:
            target = Target(self.explicit, key, self.explicit_name(key), key, None, self.serializer)
            if len(self._targets) >= _TARGETS_KEPT:
                self._targets.clear()
            self._targets[key] = target
        return target

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
        flight.set_result(value)  # a no-op if it was settled already

    def _fail(
        self, flight: Flight, target: Target, exc: BaseException, counter: Count = Count.LOAD_ERRORS
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
        self.counts[Count.REDIS_ERRORS] += 1
        now = self.timer()
        if now - self._last_redis_log > 1.0:
            self._last_redis_log = now
            log.warning("cachewise: Redis call failed, serving without it: %s", describe(exc))

    def _log_once(self, key: str, message: str, *args: Any) -> None:
        """Log a warning about ``key`` at most once a minute (bounded memory)."""
        now = self.timer()
        if now - self._logged.get(key, -60.0) < 60.0:
            return
        if len(self._logged) > 1000:
            self._logged.clear()
        self._logged[key] = now
        log.warning("cachewise: " + message, *args)
