"""The read of one key as a plan: L1, then single-flight (lead or join), stale-while-revalidate
and early refresh; ``peek``. The lone-caller fast path before it is ``lone.py``."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from .. import core
from .._drivers import (
    BLOCKS_LOOP,
    TIMED_OUT,
    Invoke,
    Plan,
    Spawn,
    Wait,
)
from .._flight import Flight
from ..core import Decision, Entry
from ..redis import REDIS_ERRORS, RedisCall
from .lease import Leases
from .values import (
    _RETRY,
    _UNREAD,
    MISSING,
    Count,
    Policy,
    Target,
)

log = logging.getLogger("cachewise")


class Reads(Leases):
    """The read of one key: L1, single-flight, stale-while-revalidate. A layer of ``Engine``."""

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
        if self.uncached(target):  # straight through
            return (yield Invoke(loader))
        if started is None:
            started = self.clock()
        while True:
            entry = target.table.get(target.l1_key) or self._being_refreshed(target.full_key)
            # With no entry, ``decide`` can only say WAIT or LOAD, and the claim below tells
            # which: a miss does not ask it (nor draws XFetch's random number).
            if entry is not None:
                now = self.clock()
                decision = self._decide(target, entry, now)
                if decision is Decision.SERVE:
                    self.l1.hit(target.table, entry)
                    return entry.value
                if decision is Decision.SERVE_STALE:
                    self.counts[Count.STALE_SERVED] += 1
                    return entry.value
                if decision is Decision.REFRESH:
                    if not core.is_fresh(entry, now):
                        self.counts[Count.STALE_SERVED] += 1
                    else:
                        self.l1.hit(target.table, entry)
                    yield from self._refresh(
                        target, loader, policy, entry, early=core.is_fresh(entry, now)
                    )
                    return entry.value
            pinned = self.pinned.get(target.full_key)
            if pinned is not None:
                yield from self.set(target, pinned[1], policy)
                return pinned[1]
            flight, leader = self._claim(target.full_key, join_probe=True)
            if leader:
                landed = self._landed(flight, target, self.clock())
                if landed is not None:
                    return landed.value
                self.counts[Count.MISSES] += 1
                value = yield from self._lead(flight, target, loader, policy, prefetched)
            else:
                self.counts[Count.MISSES] += 1
                self.counts[Count.COALESCED_WAITS] += 1
                value = yield Wait(flight, self.wait_timeout)
                if value is _RETRY:  # the fast-path GET this flight waited for was abandoned
                    continue
                if value is BLOCKS_LOOP:
                    value = yield from self._load_beside_loop(target.full_key, loader)
                elif value is TIMED_OUT:
                    # The shared load outlived wait_timeout: load without it.
                    self.counts[Count.WAIT_TIMEOUTS] += 1
                    alone = Flight()
                    yield Spawn(self._resolve(alone, target, loader, policy), self.keep)
                    value = yield Wait(alone, None)
            self._missed(target, started, flight, "leader" if leader else "waiter")
            return value

    def _decide(self, target: Target, entry: Entry, now: float) -> Decision:
        """``core.decide`` for ``target``'s ``entry``: whether a load of it runs, XFetch's draw."""
        return core.decide(
            entry,
            now,
            loading=target.full_key in self.flights,
            beta=self.beta,
            draw=1.0 - random.random(),
        )

    def served_now(self, target: Target) -> Any:
        """The L1 value a read of ``target`` returns at once (``core.serves_at_once``), counted
        as the read counts it, or ``_UNREAD`` when ``read`` must run: an async L1 hit then
        needs no plan nor coroutine of its own."""
        entry = target.table.get(target.l1_key)
        if entry is None or self.uncached(target) or not core.serves_at_once(entry, self.clock()):
            return _UNREAD
        self.l1.hit(target.table, entry)
        return entry.value

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
        self.counts[Count.SYNC_LOADS_ON_LOOP] += 1
        self._log_once(
            key,
            "a sync call on an event loop's thread found %s being loaded by a task of that "
            "loop; waiting would block that load, so it loaded the value itself. Call the "
            "async API (aget_or_load, an async def function) from async code.",
            key,
        )
        value, _ = yield from self._invoke(loader, where=key, key=key)
        self.counts[Count.LOADS] += 1
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

    def peek(self, target: Target) -> Plan[Any]:
        """The fresh value of ``target`` held here or in Redis, or ``MISSING``: never loads,
        never waits for a load, keeps nothing. Redis failing is a ``MISSING`` (counted)."""
        if self.uncached(target):
            return MISSING
        entry = target.table.get(target.l1_key)
        if core.is_fresh(entry, self.clock()):
            return entry.value
        backend = self.backend
        if backend is None:
            return MISSING
        try:
            if self._setup_due(backend):
                yield from self._ensure_backend()
            raw = yield RedisCall(backend, "get", target.full_key)
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return MISSING
        env = yield from self._current(self._decode(raw, key=target.full_key))
        if env is None or not core.shared_fresh(env.fresh_until_ms, backend.server_now_ms()):
            return MISSING
        return env.value
