"""The engine: every cache operation written once, as a plan that both drivers carry out.

A plan is a generator: it reads the in-process state, asks ``core.decide`` what to do, and
yields the operations (``Call``, ``Wait``) it needs from a driver. ``Cache`` and the decorators
run plans with ``run_sync`` or ``await run_async``; nothing here blocks or awaits.

Rules of this module:

1. Every mutation of L1 and of the flight table happens under ``self.lock``. The hit path reads
   the L1 tables without it (a dict read is atomic under the GIL).
2. A fill is stored only if its flight was not invalidated while it ran, checked under the same
   lock as the invalidation: an invalidation that happened during a load always wins.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import threading
import weakref
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import core
from ._drivers import TIMED_OUT, Call, Flight, Plan, Wait
from ._l1 import L1, Table
from .core import Decision, Entry
from .errors import ConfigTypeError, LoaderResultError

log = logging.getLogger("cachewise")

_MISSING: Any = object()


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
    ) -> None:
        self.namespace = namespace
        self.prefix = f"{namespace}:" if namespace else ""
        self.clock = clock
        self.jitter = ttl_jitter
        self.beta = early_refresh_beta
        self.wait_timeout = wait_timeout
        self.l1 = L1(l1_maxsize)
        self.explicit: Table = {}  # the L1 table of keys used with get/set/get_or_load
        self.lock = threading.Lock()
        self.flights: dict[str, Flight] = {}
        self.counts: Counter[str] = Counter()
        self.load_latency = _Latency()
        self.miss_latency = _Latency()
        self.listeners: list[Callable[[InvalidationEvent], None]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        #: Values written behind and not yet in the store: served on a miss, so a read never
        #: falls back to the store's old value while the write is queued.
        self.pinned: dict[str, tuple[Target, Any, Policy]] = {}
        _ENGINES.add(self)

    # -- small helpers --------------------------------------------------------------------------

    def explicit_target(self, key: str) -> Target:
        return Target(self.explicit, key, self.prefix + key, repr(key))

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a strong reference to a task the engine started until it ends."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def reset_after_fork(self) -> None:
        """In a forked child: empty L1, forget the parent's flights, locks and tasks."""
        self.lock = threading.Lock()
        self.flights = {}
        self.tasks = set()
        self.l1.clear()

    def _claim(self, key: str) -> tuple[Flight, bool]:
        with self.lock:
            flight = self.flights.get(key)
            if flight is not None:
                return flight, False
            flight = self.flights[key] = Flight()
            return flight, True

    def _call(
        self,
        fn: Callable[[], Any],
        done: Callable[[Any, float], None],
        failed: Callable[[BaseException], None],
        background: bool = False,
    ) -> Call:
        return Call(fn, done, failed, clock=self.clock, spawn=self.keep, background=background)

    # -- filling --------------------------------------------------------------------------------

    def _entry(self, target: Target, policy: Policy, value: Any, load_time: float) -> Entry:
        tags: tuple[str, ...] = ()
        if target.tags is not None:
            tags = tuple(target.tags())
            for tag in tags:
                if not isinstance(tag, str):
                    raise ConfigTypeError(
                        f"tags= of {target.where} must return strings, got {type(tag).__name__}"
                    )
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

    def _fill(
        self, flight: Flight, target: Target, policy: Policy, value: Any, took: float
    ) -> None:
        """A load finished: store its value unless invalidated meanwhile, wake its waiters."""
        try:
            entry = self._entry(target, policy, value, took)
        except BaseException as exc:
            self._fail(flight, target, exc)
            return
        with self.lock:
            if not flight.invalidated:
                self.l1.put(target.table, entry)
            if self.flights.get(target.full_key) is flight:
                del self.flights[target.full_key]
        self.counts["loads"] += 1
        self.load_latency.add(took)
        flight.future.set_result(value)

    def _fail(
        self, flight: Flight, target: Target, exc: BaseException, counter: str = "load_errors"
    ) -> None:
        with self.lock:
            if self.flights.get(target.full_key) is flight:
                del self.flights[target.full_key]
        self.counts[counter] += 1
        flight.future.set_exception(exc)

    def _refresh_failed(self, flight: Flight, target: Target, exc: BaseException) -> None:
        # The stale value keeps being served until stale_ttl ends; the next read past this
        # point starts another refresh.
        log.warning("cachewise: background refresh of %s failed: %r", target.full_key, exc)
        self._fail(flight, target, exc, "refresh_errors")

    # -- reads ----------------------------------------------------------------------------------

    def read(self, target: Target, loader: Callable[[], Any], policy: Policy) -> Plan[Any]:
        """Cache-aside read of one key: L1, then single-flight load; SWR and early refresh."""
        started = self.clock()
        while True:
            entry = target.table.get(target.l1_key)
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
                yield from self._start_refresh(target, loader, policy, entry, now)
                return entry.value
            pinned = self.pinned.get(target.full_key)
            if pinned is not None:
                yield from self.set(target, pinned[1], policy)
                return pinned[1]
            flight, leader = self._claim(target.full_key)
            if leader:
                # Second look: a load may have landed between our read and the claim.
                entry = target.table.get(target.l1_key)
                if core.is_fresh(entry, self.clock()):
                    assert entry is not None
                    self._release(flight, target, entry.value)
                    entry.hits += 1
                    return entry.value
                self.counts["misses"] += 1
                yield self._call(
                    loader,
                    functools.partial(self._fill, flight, target, policy),
                    functools.partial(self._fail, flight, target),
                )
                value = yield Wait(flight, None)
            else:
                self.counts["misses"] += 1
                self.counts["coalesced_waits"] += 1
                value = yield Wait(flight, self.wait_timeout)
                if value is TIMED_OUT:
                    self.counts["wait_timeouts"] += 1
                    value = yield from self._load_alone(target, loader, policy)
            self.miss_latency.add(self.clock() - started)
            return value

    def _release(self, flight: Flight, target: Target, value: Any) -> None:
        with self.lock:
            if self.flights.get(target.full_key) is flight:
                del self.flights[target.full_key]
        flight.future.set_result(value)

    def _start_refresh(
        self, target: Target, loader: Callable[[], Any], policy: Policy, entry: Entry, now: float
    ) -> Plan[None]:
        stale = now >= entry.fresh_until
        if stale:
            self.counts["stale_served"] += 1
        else:
            entry.hits += 1
        flight, leader = self._claim(target.full_key)
        if not leader:
            return
        self.counts["refreshes" if stale else "early_refreshes"] += 1
        yield self._call(
            loader,
            functools.partial(self._fill, flight, target, policy),
            functools.partial(self._refresh_failed, flight, target),
            background=True,
        )

    def _load_alone(self, target: Target, loader: Callable[[], Any], policy: Policy) -> Plan[Any]:
        """Load outside the flight table: the shared load outlived ``wait_timeout``."""
        flight = Flight()
        yield self._call(
            loader,
            functools.partial(self._fill, flight, target, policy),
            functools.partial(self._fail, flight, target),
        )
        return (yield Wait(flight, None))

    def read_many(
        self,
        targets: Mapping[str, Target],
        load_many: Callable[[list[str]], Any],
        policy: Policy,
    ) -> Plan[dict[str, Any]]:
        """Bulk cache-aside: one ``load_many`` call for the keys this caller leads."""
        found: dict[str, Any] = {}
        waiting: dict[str, Flight] = {}
        leading: dict[str, Flight] = {}
        now = self.clock()
        for key, target in targets.items():
            entry = target.table.get(target.l1_key)
            if core.is_fresh(entry, now):
                assert entry is not None
                entry.hits += 1
                found[key] = entry.value
                continue
            self.counts["misses"] += 1
            flight, leader = self._claim(target.full_key)
            (leading if leader else waiting)[key] = flight
        if leading:
            keys = list(leading)
            yield self._call(
                lambda: load_many(keys),
                lambda result, took: self._fill_many(targets, leading, policy, result, took),
                lambda exc: self._fail_many(targets, leading, exc),
            )
        for key, flight in {**leading, **waiting}.items():
            if key in waiting:
                self.counts["coalesced_waits"] += 1
            found[key] = yield Wait(flight, None)
        return {key: found[key] for key in targets}

    def _fill_many(
        self,
        targets: Mapping[str, Target],
        flights: dict[str, Flight],
        policy: Policy,
        result: Any,
        took: float,
    ) -> None:
        if not isinstance(result, Mapping):
            self._fail_many(
                targets,
                flights,
                ConfigTypeError(f"load_many must return a mapping, not {type(result).__name__}"),
            )
            return
        lost = [key for key in flights if key not in result]
        for key, flight in flights.items():
            if key in result:
                self._fill(flight, targets[key], policy, result[key], took)
        if lost:
            self._fail_many(
                targets,
                {key: flights[key] for key in lost},
                LoaderResultError(f"load_many returned no value for {lost!r}"),
            )

    def _fail_many(
        self, targets: Mapping[str, Target], flights: dict[str, Flight], exc: BaseException
    ) -> None:
        for key, flight in flights.items():
            self._fail(flight, targets[key], exc)

    def get(self, target: Target, default: Any) -> Plan[Any]:
        """Plain read: a fresh value or ``default``; never loads, never serves stale."""
        entry = target.table.get(target.l1_key)
        if core.is_fresh(entry, self.clock()):
            assert entry is not None
            entry.hits += 1
            return entry.value
        self.counts["misses"] += 1
        return default
        yield  # a plan: the Redis tier adds I/O here

    def get_many(self, targets: Mapping[str, Target]) -> Plan[dict[str, Any]]:
        found: dict[str, Any] = {}
        for key, target in targets.items():
            value = yield from self.get(target, _MISSING)
            if value is not _MISSING:
                found[key] = value
        return found

    # -- writes and invalidation ----------------------------------------------------------------

    def set(self, target: Target, value: Any, policy: Policy) -> Plan[None]:
        """Store ``value``; a load of this key that is running now will not overwrite it."""
        entry = self._entry(target, policy, value, 0.0)
        with self.lock:
            flight = self.flights.pop(target.full_key, None)
            if flight is not None:
                flight.invalidated = True
            self.l1.put(target.table, entry)
        self.counts["sets"] += 1
        return
        yield

    def pin(self, target: Target, value: Any, policy: Policy) -> None:
        self.pinned[target.full_key] = (target, value, policy)

    def unpin(self, full_key: str) -> None:
        self.pinned.pop(full_key, None)

    def invalidate(self, full_keys: Iterable[str], tags: Iterable[str] = ()) -> Plan[int]:
        """Drop entries by full key and by tag, stop running loads from storing, tell listeners."""
        keys = list(dict.fromkeys(full_keys))
        tags = tuple(tags)
        with self.lock:
            if tags:
                keys.extend(k for k in self.l1.tagged(tags) if k not in keys)
            dropped = 0
            for key in keys:
                flight = self.flights.pop(key, None)
                if flight is not None:
                    flight.invalidated = True
                if self.l1.drop(key) is not None:
                    dropped += 1
        self.counts["invalidations"] += len(keys)
        self.notify(InvalidationEvent(tuple(keys), tags, "local"))
        return dropped
        yield

    def notify(self, event: InvalidationEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not break invalidation
                log.exception("cachewise: on_invalidate listener %r failed", listener)

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.lock:
            hits = self.l1.live_hits()
            size = len(self.l1)
            evictions = self.l1.evictions
        counts = dict(self.counts)
        names = [
            "misses",
            "loads",
            "load_errors",
            "refreshes",
            "early_refreshes",
            "refresh_errors",
            "stale_served",
            "coalesced_waits",
            "wait_timeouts",
            "sets",
            "invalidations",
        ]
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
