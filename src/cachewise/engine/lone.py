"""The lone-caller fast path of a one-key read: one plain GET before the full plan of
``read``, with the two drivers that carry it out (``read_sync``, ``read_async``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _switch, codec, core
from .._clock import monotonic
from .._compiled import speedups
from .._drivers import Plan, run_async, run_sync
from .._flight import Flight
from ..redis import REDIS_ERRORS, Breaker, Fetch, RedisBackend
from .read import Reads
from .values import _NO_REDIS, _RETRY, _UNREAD, Count, Policy, Target


class LoneReads(Reads):
    """A read that finds nothing in L1 and no flight for its key tries one GET first.
    A layer of ``Engine``."""

    # A read that finds nothing in L1 and no flight for its key is most often a shared-tier hit.
    # The full plan (claim a flight, step the generator through a driver, settle the flight)
    # costs a fifth of the GET itself, so such a read first tries one plain GET: it is served
    # if that finds a fresh entry, and otherwise handed to ``read`` with what was found (so the
    # leader does not read again). Callers of the key arriving during that GET start a flight
    # and wait: the GET's caller settles it with what it found, or leads its load. A herd on a
    # cold key costs one GET, as with the full path.

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
        self.counts[Count.MISSES] += 1
        value = yield from self._lead(joined, target, loader, policy, got)
        self._missed(target, started, joined, "leader")
        return value

    # The two drivers of a read: the fast path's GET is the only step they carry out themselves
    # (a plan for it, generator and driver loop, would cost 3% of a shared-tier hit); what to
    # make of it is ``probed``, shared.

    def read_sync(
        self,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        answer: object = None,
    ) -> Any:
        """``read`` carried out in this thread, after the fast path's GET where it applies
        (without Redis, ``load_alone`` where it applies). Where the C extension is built, this
        method is compiled (``_speedups_lone.c``: ``probe``, the GET and ``probed``'s hit in
        their common case, or ``load_alone``) and calls this one with its ``answer`` when it
        did not serve: ``_FULL``, the plan serves; ``_UNHANDLED``, ``probe`` decides;
        ``_UNREAD``, ``load_alone`` did not apply."""
        if self.backend is None:
            value = answer if answer is _UNREAD else self.load_alone(target, loader, policy)
            return run_sync(self.read(target, loader, policy)) if value is _UNREAD else value
        probe = None if answer is _FULL else self.probe(target)
        if probe is None:
            return run_sync(self.read(target, loader, policy))
        return self._finish_sync(target, loader, policy, probe, probe[0].outcome_sync())

    def _finish_sync(self, target: Target, *probed: Any) -> Any:
        """The rest of a sync read after the fast path's GET: its value. ``probed``: the
        other arguments of ``probed`` (the loader, the policy, the probe and the outcome).
        Python's ``probed`` itself: where the compiled one exists, the compiled ``read_sync``
        has already tried what it would (it hands over only what it could not serve)."""
        served, got = PYTHON_READS["probed"](self, target, *probed)
        return got if served else run_sync(got)

    def read_async(
        self, target: Target, loader: Callable[[], Any], policy: Policy
    ) -> Awaitable[Any]:
        """``read`` carried out on the running loop, after the fast path's GET where it applies
        (to be awaited). Without that GET, the driver's own coroutine: a coroutine less for
        every caller to step through, twice (a herd of 500 tasks on one key waits on it)."""
        probe = self.probe(target)
        if probe is None:
            return run_async(self.read(target, loader, policy))
        return self._read_probed_async(target, loader, policy, probe)

    async def _read_probed_async(
        self, target: Target, loader: Callable[[], Any], policy: Policy, probe: Any
    ) -> Any:
        # ``outcome_async``, inlined: a coroutine less to create and step through on every
        # shared-tier hit.
        try:
            outcome: tuple[Any, BaseException | None] = (await probe[0].run_async(), None)
        except BaseException as exc:  # handed to ``probed``, which decides what to raise
            outcome = (None, exc)
        served, got = self.probed(target, loader, policy, probe, outcome)
        return got if served else await run_async(got)

    def probe(self, target: Target) -> tuple[Fetch, int, float] | None:
        """The fast path's GET of ``target`` (with the ticket and start time ``probed`` needs),
        when it applies; None when the read goes the full path."""
        key = target.full_key
        if (
            self.backend is None
            or target.l1_key in target.table
            or key in self.flights
            or key in self.probing
            or key in self.pinned
            or self.uncached(target)
        ):
            return None
        ticket = self._lone()  # the epoch (-1: Redis may not be read without a plan now)
        if ticket < 0:
            return None
        # The key is probed until ``_unprobe``; the loop of the GET's caller, if any, which
        # the flight it settles depends on.
        self.probing.setdefault(key, asyncio._get_running_loop())
        return Fetch(self.backend, key), ticket, self.clock()

    def probed(
        self,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        probe: tuple[Fetch, int, float],
        outcome: tuple[Any, BaseException | None],
    ) -> tuple[bool, Any]:
        """After the fast path's GET: ``(True, value)`` when it found a fresh entry (the flight
        callers joined meanwhile is settled with it), else ``(False, the plan of the rest of
        the read)``, handed the raw bytes, or ``_NO_REDIS`` if Redis failed."""
        fetched, interrupted = outcome
        if interrupted is not None:  # cancelled or interrupted: who joined meanwhile starts over
            self._unprobe(target.full_key, abandoned=True)
            raise interrupted
        _, ticket, started = probe
        joined = self._unprobe(target.full_key)
        raw, error = fetched
        if error is not None:
            self.redis_failed(error)
            return False, self._after_probe(target, loader, policy, _NO_REDIS, joined, started)
        body = codec.body(raw) if raw is not None else None
        offset = self.backend.offset_ms  # type: ignore[union-attr]
        assert offset is not None
        # backend.server_now_ms(), inlined: this is the hot path of every shared-tier hit.
        now_ms = monotonic() * 1000 + offset
        if body is None or not core.shared_fresh(body[codec.FRESH], now_ms) or body[codec.TAGS]:
            # Absent, undecodable (``read`` counts it), stale, or tagged: the full path checks
            # its tags' versions.
            return False, self._after_probe(target, loader, policy, raw, joined, started)
        self.lone_hits += 1  # an L1 miss and an L2 hit, added to both counts by ``stats``
        self._missed(target, started, None, "alone")
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
        return True, value


# The compiled fast path (``_speedups_lone.c``) reads these fields and calls these functions
# as ``probe``, ``Fetch.run_sync`` and ``probed`` do; its answers when the plan must serve
# (``_FULL``) or Python's ``probe`` decide (``_UNHANDLED``).
_FULL, _UNHANDLED = object(), object()
#: ``read_sync``, ``probe``, ``probed`` and ``served_now`` (``read.py``) in Python, whether or
#: not compiled ones replaced them (the tests compare the two).
PYTHON_READS = {
    name: getattr(LoneReads, name) for name in ("read_sync", "probe", "probed", "served_now")
}
if speedups is not None:
    _bound = speedups.bind_lone(
        {
            "reads_type": LoneReads,
            "fallback": LoneReads.read_sync,
            "python_probe": LoneReads.probe,
            "python_probed": LoneReads.probed,
            "finish": LoneReads._finish_sync,
            "backend_type": RedisBackend,
            "flight_type": Flight,
            "fetch_type": Fetch,
            "closed": Breaker.CLOSED,
            "disabled": _switch._disabled,
            "bypassing": _switch._bypassing,
            "running_loop": asyncio._get_running_loop,
            "monotonic": monotonic,
            "redis_errors": REDIS_ERRORS,
            "full": _FULL,
            "unhandled": _UNHANDLED,
            "unread": _UNREAD,
            **codec.UNPACKING,
        }
    )
    LoneReads.read_sync, LoneReads.probe, LoneReads.probed, LoneReads.served_now = _bound  # type: ignore[method-assign]
