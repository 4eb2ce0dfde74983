"""The two drivers, and the only place where sync and async code differ.

A cache operation is written once, as a generator ("plan") in ``engine/`` that yields the
operations it needs done (run a loader, wait for a flight) and receives their results. The sync
driver carries those out with threads and blocking waits, the async driver with tasks and
``await``; each operation below holds its pair of implementations side by side, in the manner of
httpcore's ``_synchronization.py``.

Rules of this module:

1. A waiter never owns the load: loads run inline only for a sync leader (a thread cannot be
   cancelled), and in their own task for async code, so cancelling or timing out any caller,
   including the one that started it, never cancels the load for the others.
2. Nothing here decides anything about freshness or keys; that lives in ``core`` and ``engine``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from . import _eager
from ._clock import monotonic
from ._flight import Flight
from .errors import ConfigTypeError, describe

log = logging.getLogger("cachewise")

T = TypeVar("T")

#: What a ``Wait`` returns when its timeout passed before the flight finished.
TIMED_OUT: Any = object()
#: What a sync ``Wait`` returns instead of waiting on an event loop's thread for a flight that
#: a task of that very loop must settle: blocking the thread would block that task for ever.
BLOCKS_LOOP: Any = object()

Plan = Generator["Op", Any, T]

#: Types of loader results that are never awaitable: ``inspect.isawaitable`` (an ABC check)
#: costs more than the rest of the call's bookkeeping.
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})


class Op:
    """An operation a plan asks its driver to carry out."""

    def run_sync(self) -> Any:
        raise NotImplementedError

    def run_async(self) -> Awaitable[Any]:
        """What to await on the running loop: a coroutine, or (``Wait``) a future itself."""
        raise NotImplementedError

    def outcome_sync(self) -> tuple[Any, BaseException | None]:
        try:
            return self.run_sync(), None
        except BaseException as exc:  # handed to the plan, which decides what to raise
            return None, exc

    async def outcome_async(self) -> tuple[Any, BaseException | None]:
        try:
            return await self.run_async(), None
        except BaseException as exc:
            return None, exc


@dataclass(slots=True)
class Spawn(Op):
    """Run ``plan`` detached from the caller: its outcome travels through a flight, not back.

    ``background`` returns at once (a daemon thread, or a task the engine keeps alive);
    otherwise the sync driver runs it inline and the async driver in its own task, which the
    caller waits for through ``asyncio.shield``: cancelling the caller never cancels the load.
    The plan must not raise (it reports through its flight).
    """

    plan: Plan[Any]
    keep: Callable[[asyncio.Task[Any]], None]
    background: bool = False

    def run_sync(self) -> None:
        if self.background:
            threading.Thread(target=run_sync, args=(self.plan,), daemon=True).start()
        else:
            run_sync(self.plan)

    async def run_async(self) -> None:
        loop = asyncio.get_running_loop()
        if self.background:
            self.keep(loop.create_task(run_async(self.plan)))
            return
        # Its first step taken now (``_eager``): a load the caller waits for starts before the
        # steps already due, a herd's other callers among them.
        task = _eager.start(loop, run_async(self.plan))
        self.keep(task)
        await asyncio.shield(task)


def call_sync(fn: Callable[[], Any]) -> Any:
    """``fn()`` for sync code: an awaitable it returns is refused (closed, not left pending)."""
    value = fn()
    if type(value) not in _PLAIN and inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise ConfigTypeError(
            f"{fn!r} returned an awaitable to a sync call: use the async API "
            "(await aget_or_load / an async def function)"
        )
    return value


@dataclass(slots=True)
class Invoke(Op):
    """Call a loader or store writer: ``fn()``, awaited in async code when it returns an awaitable.

    With ``renew``, the plan it makes runs every ``every`` seconds while ``fn`` runs (a thread,
    or a task): that is how a long load keeps its lease.
    """

    fn: Callable[[], Any]
    renew: Callable[[], Plan[Any]] | None = None
    every: float = 0.0

    def run_sync(self) -> Any:
        if self.renew is None:
            return call_sync(self.fn)
        job = _RENEWER.add(self.every, self.renew)
        try:
            return call_sync(self.fn)
        finally:
            _RENEWER.remove(job)

    async def run_async(self) -> Any:
        renewer = None
        if self.renew is not None:
            renewer = asyncio.get_running_loop().create_task(self._renew_async())
        try:
            value = self.fn()
            if inspect.isawaitable(value):
                value = await value
            return value
        finally:
            if renewer is not None:
                renewer.cancel()

    async def _renew_async(self) -> None:
        assert self.renew is not None
        while True:
            await asyncio.sleep(self.every)
            try:
                await run_async(self.renew())
            except Exception as exc:
                log.warning("cachewise: lease renewal failed: %s", describe(exc))


class _Renewer:
    """Runs the renewals of sync loads' leases, every ``every`` seconds while each load runs,
    from one daemon thread per process. A renewal with a ``group`` attribute is run together
    with the others of its group that are due: ``renewal.merged(renewals)`` makes their plan.

    Written by hand because no scheduler in the standard library runs jobs that come and go
    from a thread of its own (``sched`` blocks its caller, ``threading.Timer`` is a thread per
    run). A thread per load, as before, was started on the critical path of every load:
    ``Thread.start`` returns only once the new thread runs, which behind a herd of runnable
    threads took a millisecond or more.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new, empty schedule (also in a forked child: its lock may have been held)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[int, list[Any]] = {}  # id -> [next run, every, renew]
        self._ids = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread now (a cache calls this on its first use of Redis), rather than
        in the first load that needs it."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="cachewise-renewals", daemon=True
            )
            self._thread.start()

    def add(self, every: float, renew: Callable[[], Plan[Any]]) -> int:
        with self._lock:
            self._start()
            self._ids += 1
            self._jobs[self._ids] = [monotonic() + every, every, renew]
            self._changed.notify()
            return self._ids

    def remove(self, job: int) -> None:
        with self._lock:
            self._jobs.pop(job, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = monotonic()
                due = [job for job in self._jobs.values() if job[0] <= now]
                if due:
                    # The jobs due within half their period go along (early is harmless: a
                    # lease lives three periods), so loads that began apart share round trips.
                    due = [job for job in self._jobs.values() if job[0] <= now + job[1] / 2]
                for job in due:
                    job[0] = now + job[1]
                if not due:
                    soonest = min((job[0] for job in self._jobs.values()), default=None)
                    self._changed.wait(None if soonest is None else soonest - now)
                    continue
            # Renewals of one group (the leases of one Redis) are run as one: a round trip per
            # tick however many loads run, so a slow Redis costs one timeout a tick, not one
            # per load.
            groups: dict[Any, list[Callable[[], Plan[Any]]]] = {}
            for _, _, renew in due:
                groups.setdefault(getattr(renew, "group", renew), []).append(renew)
            for renews in groups.values():
                try:
                    run_sync(renews[0]() if len(renews) == 1 else renews[0].merged(renews))  # type: ignore[attr-defined]
                except Exception as exc:  # the fill will be refused if the lease is lost
                    log.warning("cachewise: lease renewal failed: %s", describe(exc))


_RENEWER = _Renewer()
start_renewals = _RENEWER.start
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RENEWER.reset)


class Sleep(Op):
    """Pause the plan (a flusher with nothing to do, a flush polling Redis, a retry)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run_sync(self) -> None:
        time.sleep(self.seconds)

    async def run_async(self) -> None:
        await asyncio.sleep(self.seconds)


class Wait(Op):
    """Wait for a flight's result (re-raising its exception); ``TIMED_OUT`` after ``timeout``;
    ``BLOCKS_LOOP`` at once for sync code on the thread of the loop that must settle it."""

    __slots__ = ("flight", "timeout")

    def __init__(self, flight: Flight, timeout: float | None) -> None:
        self.flight = flight
        self.timeout = timeout

    def run_sync(self) -> Any:
        flight = self.flight
        if (
            flight.loop is not None
            and not flight.done()
            and flight.loop is asyncio._get_running_loop()  # public twin raises without a loop
        ):
            return BLOCKS_LOOP
        if not flight.wait(self.timeout):
            return TIMED_OUT
        return flight.result()

    def run_async(self) -> Awaitable[Any]:
        """The waiter's own future itself when there is no timeout: awaited directly, without a
        coroutine around it to step through (a herd of 500 tasks wakes through it)."""
        # A future of this waiter's own: cancelling it never reaches the shared load.
        loop = asyncio.get_running_loop()
        waiter = self.flight.waiter(loop)  # settled at once if the flight is done
        if self.timeout is None:
            return waiter
        return _timed(waiter, loop, self.timeout)


async def _timed(
    waiter: asyncio.Future[Any], loop: asyncio.AbstractEventLoop, timeout: float
) -> Any:
    # The timeout settles the waiter's own future, rather than ``asyncio.wait_for``, which
    # puts a second future and a callback hop between the flight and each of its waiters:
    # with 500 tasks on one key, most of the time from the load's end to the last of them.
    timer = loop.call_later(timeout, _time_out, waiter)
    try:
        return await waiter
    finally:
        timer.cancel()


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(TIMED_OUT)


# The two drivers below write their loop out instead of sharing a stepping object: with the
# check of ``_PLAIN``, an in-process miss (two plans) went from 10.5 to 9.8 us, measured.


def run_sync(plan: Plan[T]) -> T:
    """Carry out ``plan`` in the calling thread: each operation's result (or exception) goes
    back into the plan, until it returns."""
    send, throw = plan.send, plan.throw
    try:
        op = send(None)
        while True:
            try:
                result = op.run_sync()
            except BaseException as exc:  # handed to the plan, which decides what to raise
                op = throw(exc)
            else:
                op = send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def run_async(plan: Plan[T]) -> T:
    """Carry out ``plan`` on the running event loop (as ``run_sync``)."""
    send, throw = plan.send, plan.throw
    try:
        op = send(None)
        while True:
            try:
                result = await op.run_async()
            except BaseException as exc:
                op = throw(exc)
            else:
                op = send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
