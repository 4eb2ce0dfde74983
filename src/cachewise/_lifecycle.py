"""The part of ``Cache`` that drives its write-behind queues and its life: flush, dead
letters, close (also as a context manager), and ``stats``."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import weakref
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar

from . import _switch
from ._drivers import run_async, run_sync
from .engine import Engine
from .writebehind import DeadLetter, FlushReport, StreamQueue, WriteBehindQueue, drain

log = logging.getLogger("cachewise")

#: The caches not closed yet: interpreter exit drains their in-memory write-behind queues.
_OPEN: weakref.WeakSet[Lifecycle] = weakref.WeakSet()

_C = TypeVar("_C", bound="Lifecycle")


@atexit.register
def _drain_at_exit() -> None:
    """Interpreter exit drains the in-memory write-behind queues (those of ``async def``
    writers on an event loop of their own, their own having ended). Writes queued in Redis are
    safe there: another process (or the next start) flushes them."""
    for cache in list(_OPEN):
        cache._drain(10.0, durable=False)
        cache._stop()


class Lifecycle:
    """Flushing, dead letters, closing and stats of a ``Cache`` (its base: the rest of the
    public face is in ``cache.py``)."""

    _engine: Engine
    _queues: list[WriteBehindQueue]
    _closed: bool

    # -- the namespace -------------------------------------------------------------------------

    def clear(self) -> int:
        """Drop every entry of this namespace, in Redis and in every process' L1; no other
        namespace's keys, and never write-behind queues or writes not yet in the store. With
        Redis: a bounded ``SCAN`` on every master, then one event; returns the keys dropped
        in Redis (without Redis: the entries this process held)."""
        return run_sync(self._engine.clear())

    async def aclear(self) -> int:
        return await run_async(self._engine.clear())

    def bypass(self) -> contextlib.AbstractContextManager[None]:
        """``with cache.bypass():`` this cache's calls in this thread or task go straight
        through: loaders run, nothing is read or kept, writes drop the entry everywhere.
        Other threads and tasks keep caching."""
        return _switch.bypass(self._engine)

    # -- write-behind control -------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> FlushReport:
        """Wait until every write queued before this call is in the store (or dead-lettered).
        An ``async def`` writer's in-memory queue is flushed as ``close`` drains it."""
        for queue in self._queues:
            drain.check_sync_flush(queue)
        return _merge([drain.flush_from_sync(queue, timeout) for queue in list(self._queues)])

    async def aflush(self, timeout: float | None = None) -> FlushReport:
        return _merge([await run_async(queue.flush(timeout)) for queue in list(self._queues)])

    def dead_letters(self) -> list[DeadLetter]:
        """Writes that failed every retry, oldest first per writer (with Redis: every
        process', from the dead-letter streams)."""
        return [dead for queue in self._queues for dead in run_sync(queue.dead_letters())]

    async def adead_letters(self) -> list[DeadLetter]:
        return [dead for queue in self._queues for dead in await run_async(queue.dead_letters())]

    def replay_dead_letters(self, letters: Iterable[DeadLetter] | None = None) -> int:
        """Queue dead letters again (all of them by default); returns how many were queued.

        A replayed write that lands drops the cached value, which may be older than the store.
        """
        chosen = self.dead_letters() if letters is None else list(letters)
        return sum(run_sync(queue.replay(chosen)) for queue in self._queues)

    async def areplay_dead_letters(self, letters: Iterable[DeadLetter] | None = None) -> int:
        chosen = await self.adead_letters() if letters is None else list(letters)
        return sum([await run_async(queue.replay(chosen)) for queue in self._queues])

    def close(self, timeout: float | None = None) -> FlushReport:
        """Drain the write-behind queues and stop their flushers. The in-memory queue of an
        ``async def`` writer is drained on its event loop if that still runs in another thread,
        else on a loop of its own; on its loop's own thread, use ``await cache.aclose()``."""
        report = self._drain(timeout, durable=True)
        self._stop()
        return report

    def _drain(self, timeout: float | None, durable: bool) -> FlushReport:
        """Flush, from sync code, every in-memory queue (a process' end loses them), and with
        ``durable`` the Redis ones of sync writers. What cannot be drained is reported as
        pending and logged: never lost in silence."""
        reports: list[FlushReport] = []
        for queue in list(self._queues):
            if not queue.is_async and (durable or not queue.durable):
                reports.append(run_sync(queue.flush(timeout)))
            elif not queue.durable:
                try:
                    reports.append(drain.flush_from_sync(queue, timeout))
                except Exception as exc:
                    left = len(queue.pending) + len(queue.busy)
                    log.error(
                        "cachewise: %d write-behind writes of %s were not written and are lost "
                        "when this process ends: %s",
                        left, queue.where, exc,
                    )  # fmt: skip
                    reports.append(FlushReport(pending=left, errors=[repr(exc)]))
        return _merge(reports)

    async def aclose(self, timeout: float | None = None) -> FlushReport:
        report = await self.aflush(timeout)
        for queue in self._queues:
            queue.stop()
        for queue in self._queues:
            await queue.join_async(5.0)
            await asyncio.to_thread(queue.join_sync, 5.0)
        self._stop()
        return report

    def _stop(self) -> None:
        for queue in self._queues:
            queue.stop()
        for queue in self._queues:
            queue.join_sync(5.0)
        self._engine.close()
        self._closed = True
        _OPEN.discard(self)

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- observability --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A snapshot of counters and latency percentiles; reading it changes nothing."""
        out = self._engine.stats()
        backend = self._engine.backend
        if backend is not None:
            # On a cluster, the worst of the Cache's breaker and its masters' (see NodeBreakers).
            breakers = backend.breakers()
            states = {breaker.state for breaker in breakers}
            worst = next(s for s in ("open", "half-open", "closed") if s in states)
            out.update(
                breaker_state=worst,
                breaker_opens=backend.breaker_opens(),
                short_circuits=sum(breaker.short_circuits for breaker in breakers),
            )
        out["write_behind_pending"] = sum(len(q.pending) + len(q.busy) for q in self._queues)
        out["write_behind_dead_lettered"] = sum(q.totals.dead_lettered for q in self._queues)
        streams = [q for q in self._queues if isinstance(q, StreamQueue)]
        out["write_behind_unreplicated"] = sum(q.server.unreplicated for q in streams)
        out["write_behind_losses"] = sum(q.loss.losses for q in streams)
        out["write_behind_requeued"] = sum(q.totals.requeued for q in self._queues)
        out["write_behind_retried"] = sum(q.totals.retried for q in self._queues)
        out["write_behind_lost"] = sum(q.totals.lost for q in self._queues)
        return out


def _merge(reports: list[FlushReport]) -> FlushReport:
    total = FlushReport()
    for report in reports:
        total.written += report.written
        total.coalesced += report.coalesced
        total.store_calls += report.store_calls
        total.retried += report.retried
        total.dead_lettered += report.dead_lettered
        total.pending += report.pending
        total.errors.extend(report.errors)
        total.requeued += report.requeued
        total.lost += report.lost
    return total
