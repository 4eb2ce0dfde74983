"""The work of one flight: L2 first, then a load (here only, or shared under the lease), and
the background refresh of a stale entry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import codec, core
from .._drivers import (
    Invoke,
    Plan,
    Spawn,
    call_sync,
)
from .._flight import Flight
from ..core import Entry, Shared
from ..errors import RedisUnavailable
from ..redis import (
    REDIS_ERRORS,
    RedisCall,
)
from . import observe
from .values import (
    _NO_REDIS,
    _UNREAD,
    Count,
    Policy,
    Target,
)
from .writes import Writes

log = logging.getLogger("cachewise")

# Read as module globals on the in-process miss: ``Count.X`` goes through the enum class'
# ``__getattr__`` hook (Python 3.11), about 50 ns an access.
_MISSES, _LOADS = Count.MISSES, Count.LOADS


class Fills(Writes):
    """One flight resolved: L2 first, then a load here or under the lease; refreshes. A layer
    of ``Engine``."""

    if TYPE_CHECKING:  # defined by the ``lease`` layer, above this one

        def _resolve_shared(
            self,
            flight: Flight,
            target: Target,
            loader: Callable[[], Any],
            policy: Policy,
            refreshing: Entry | None,
            raw: Any = _UNREAD,
        ) -> Plan[None]: ...

    # -- loading --------------------------------------------------------------------------------

    def _missed(self, target: Target, started: float, flight: Flight | None, role: str) -> None:
        """A read L1 did not answer ended: timed, and told to the observers."""
        seconds = self.clock() - started
        self.miss_latency.add(seconds)
        for observer in self.observers:
            tier = "load" if flight is not None and flight.loaded else "l2"
            observer.read(target.where, seconds, tier, role)

    def _invoke(
        self,
        loader: Callable[[], Any],
        renew: Callable[[], Plan[Any]] | None = None,
        every: float = 0.0,
        *,
        where: str,
        key: str,
        flight: Flight | None = None,
    ) -> Plan[tuple[Any, float]]:
        """Run a load (of ``where``'s entry ``key``), timed and told to the observers;
        ``flight`` learns that it was loaded, not read from Redis."""
        observers = self.observers
        if observers:
            reason = "miss"
            if flight is not None and flight.stale is not None:  # a background refresh
                reason = "early" if core.is_fresh(flight.stale, self.clock()) else "stale"
            loader = observe.traced(observers, where, key, reason, loader)
        started = self.clock()
        try:
            value = yield Invoke(loader, renew, every)
        except BaseException as exc:
            for observer in observers:
                observer.loaded(where, self.clock() - started, exc)
            raise
        took = self.clock() - started
        self.load_latency.add(took)
        for observer in observers:
            observer.loaded(where, took, None)
        if flight is not None:
            flight.loaded = True
        return value, took

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
            counter = Count.LOAD_ERRORS if refreshing is None else Count.REFRESH_ERRORS
            self._fail(flight, target, exc, counter)

    def _load_here(
        self, flight: Flight, target: Target, loader: Callable[[], Any], policy: Policy
    ) -> Plan[None]:
        """Load and keep the value in this process only (no Redis, or Redis unusable)."""
        value, took = yield from self._invoke(
            loader, where=target.where, key=target.full_key, flight=flight
        )
        self._keep_here(flight, target, policy, value, took)

    def _keep_here(
        self,
        flight: Flight,
        target: Target,
        policy: Policy,
        value: Any,
        took: float,
        now: float | None = None,
    ) -> None:
        """Keep a value loaded in this process in L1 (unless ``unless=`` refuses it) and settle
        the flight with it. ``now``: the engine's clock, if the caller just read it."""
        keep = policy.keeps(value, target.where)
        entry = self._entry(target, policy, value, took, flight.tags, now) if keep else None
        self.counts[_LOADS] += 1
        self._settle(flight, target, entry, value)

    def _landed(self, flight: Flight, target: Target, now: float) -> Entry | None:
        """A leader's second look: the fresh entry of a load that landed between its read and
        its claim, which then settles the flight (and counts as a hit); None if there is none."""
        entry = target.table.get(target.l1_key)
        if not core.is_fresh(entry, now):
            return None
        self._settle(flight, target, None, entry.value)
        self.l1.hit(target.table, entry)
        return entry

    def load_alone(self, target: Target, loader: Callable[[], Any], policy: Policy) -> Any:
        """A sync miss of a cache without Redis that no one else is loading, carried out
        without a plan; ``_UNREAD`` when the read is not that (``read`` then does it all).

        The plan's generators and driver steps were a third of such a miss, and in one thread
        with no Redis every one of them ends at once: claim, load, keep, settle, as ``read``,
        ``_resolve`` and ``_load_here`` do them, in that order, with the same helpers
        (``_landed`` asked only if L1 changed meanwhile).
        """
        key = target.full_key
        clock = self.clock
        held = target.table.get(target.l1_key)
        if (
            self.observers
            or (held is not None and clock() < held.stale_until)  # ``read`` decides for it
            or key in self.flights
            or key in self.pinned
            or self.uncached(target)
        ):
            return _UNREAD
        flight, leader = self._claim(key)
        if not leader:
            return _UNREAD  # ``read`` joins it
        started = clock()
        if target.table.get(target.l1_key) is not held:
            landed = self._landed(flight, target, started)
            if landed is not None:
                return landed.value
        self.counts[_MISSES] += 1
        try:
            loading = started
            if target.tags is not None:
                flight.tags = self._tags(target)
                loading = clock()
            value = call_sync(loader)
            ended = clock()
            took = ended - loading
            self.load_latency.add(took)
            flight.loaded = True
            self._keep_here(flight, target, policy, value, took, ended)
        except BaseException as exc:  # every caller that joined gets it; nothing is cached
            self._fail(flight, target, exc)
            raise
        self.miss_latency.add(ended - started)  # ``_missed``, with no observers to tell
        return value

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
        self.counts[Count.LOADS_WITHOUT_REDIS] += 1
        yield from self._load_here(flight, target, loader, policy)

    def _read_l2(self, target: Target, read: bool = True) -> Plan[Any]:
        """GET the shared entry: its raw bytes, or ``_NO_REDIS`` when Redis failed (counted).
        ``read=False`` sets the tier up only and answers None (nothing read)."""
        backend = self.backend
        assert backend is not None
        try:
            if self._setup_due(backend):
                yield from self._ensure_backend()
            if not read:
                return None
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
        if env is None or self.backend is None:
            return False
        use = self._shared_use(env, refreshing)
        if use is Shared.FRESH:
            self._take(flight, target, env)
            return True
        if use is Shared.STALE:
            # Serve it now, refresh under the lease in the background.
            entry = self._take_stale(flight, target, env)
            yield from self._refresh(target, loader, policy, entry)
            return True
        return False

    def _take_fresh(
        self, flight: Flight, target: Target, env: codec.Envelope, refreshing: Entry | None = None
    ) -> bool:
        """Settle the flight with a fresh shared entry; True when it was fresh."""
        if self._shared_use(env, refreshing) is not Shared.FRESH:
            return False
        self._take(flight, target, env)
        return True

    def _take_stale(self, flight: Flight, target: Target, env: codec.Envelope) -> Entry:
        """Settle the flight with a stale shared entry (counted as served stale); the entry,
        which the caller refreshes."""
        self.counts[Count.STALE_SERVED] += 1
        entry = self._adopt(target, env)
        self._settle(flight, target, entry, env.value)
        return entry

    def _shared_use(self, env: codec.Envelope, refreshing: Entry | None) -> Shared:
        backend = self.backend
        assert backend is not None
        return core.use_shared(
            env.fresh_until_ms,
            env.stale_until_ms,
            backend.server_now_ms(),
            replacing_ms=None if refreshing is None else self._server_ms(refreshing.fresh_until),
            uncertainty_ms=backend.uncertainty_ms,
        )

    def _take(self, flight: Flight, target: Target, env: codec.Envelope) -> None:
        """Settle the flight with a fresh shared entry (kept in L1 if there is one)."""
        self.counts[Count.L2_HITS] += 1
        self._settle(
            flight, target, self._adopt(target, env) if self.l1.maxsize else None, env.value
        )

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
        self.counts[Count.EARLY_REFRESHES if early else Count.REFRESHES] += 1
        yield Spawn(
            self._resolve(flight, target, loader, policy, entry), self.keep, background=True
        )
