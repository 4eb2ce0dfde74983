"""The in-memory write-behind queue of one writer: its flusher (one plan, run in a thread for
a ``def`` writer and as a task for an ``async def`` one), its flush, and the hooks a durable
queue replaces (``StreamQueue``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading

from .._drivers import Invoke, Plan, Sleep
from .core import QueueCore
from .types import (
    DeadLetter,
    FlushReport,
    Outcome,
    PendingWrite,
    WriteCall,
)
from .wait import QueueWait

log = logging.getLogger("cachewise")


class WriteBehindQueue(QueueCore):
    """The writes of one writer function not yet in the store, and its flusher (in memory)."""

    #: The longest a timed flush waits before it looks at its deadline again.
    WAIT_SLICE = 0.1

    # -- the flusher --------------------------------------------------------------------------

    def _flusher(self) -> Plan[None]:
        """Write what is due, batch by batch, until stopped and drained."""
        while True:
            with self.cond:
                version = self.version
                batch, wait = self._take(self.engine.timer())
                done = not batch and self.stopped and not self.pending
            try:
                if done:
                    yield from self._retire()
                    return
                if batch:
                    try:
                        yield from self._write(batch)
                    except BaseException:
                        # Cancelled mid-batch (its event loop was closed): the next flusher,
                        # on another loop, must find these writes, not wait for them for ever.
                        self._put_back(batch)
                        raise
                else:
                    yield from self._refill(version, self._idle_wait(wait))
            except Exception:  # the flusher must outlive any one failure; nothing is dropped
                log.exception("cachewise: write-behind flusher of %s failed", self.where)
                yield Sleep(self.options.interval)

    def _write(self, batch: list[PendingWrite]) -> Plan[None]:
        """Call the writer for a batch. A batch writer gets the whole batch; if it fails, each
        write is tried alone, so one poison write never holds back the others."""
        errors: dict[str, BaseException | None] = {}
        skipped = yield from self._superseded(batch)
        errors = dict.fromkeys(skipped, None)
        todo = [item for item in batch if item.key not in errors]
        if self.batch_fn is not None and todo:
            self.totals.store_calls += 1
            try:
                yield Invoke(functools.partial(self.batch_fn, [item.call for item in todo]))
            except Exception as exc:
                if len(todo) == 1:
                    errors[todo[0].key] = exc
            else:
                errors.update(dict.fromkeys((item.key for item in todo), None))
        for item in batch:
            if item.key in errors:
                continue
            self.totals.store_calls += 1
            try:
                yield Invoke(functools.partial(self.fn, *item.call.args, **item.call.kwargs))
                errors[item.key] = None
            except Exception as exc:
                errors[item.key] = exc
        yield from self._settle(
            [
                (
                    item,
                    self._finished(item, errors[item.key], item.key in skipped),
                    errors[item.key],
                )
                for item in batch
            ]
        )

    # -- where the writes wait: hooks a durable queue replaces --------------------------------

    def _put_back(self, batch: list[PendingWrite]) -> None:
        """Return the writes of an unfinished batch to the queue (a newer queued write to the
        same key stays and stands for them). Some may have reached the store already: delivery
        is at least once."""
        with self.cond:
            for item in batch:
                if self.busy.pop(item.key, None) is item and item.key not in self.pending:
                    self.pending[item.key] = item
            self.version += 1

    def _superseded(self, batch: list[PendingWrite]) -> Plan[set[str]]:
        """Keys of the batch whose write a newer queued write replaces (no store call needed).
        In memory, coalescing happened when the newer write was queued."""
        return set()
        yield  # a plan

    def _refill(self, version: int, wait: float) -> Plan[None]:
        """Nothing is due: wait for a write, a flush or the next retry."""
        yield QueueWait(self, lambda: self.version != version, wait, "kick")

    def _settle(
        self, settled: list[tuple[PendingWrite, Outcome, BaseException | None]]
    ) -> Plan[None]:
        """Record what a batch did: dead letters, and cached values the store does not hold."""
        for item, outcome, error in settled:
            if outcome == "dead":
                self.dead.append(
                    DeadLetter(
                        self.where,
                        item.key,
                        item.call.args,
                        item.call.kwargs,
                        item.attempts + 1,
                        repr(error),
                    )
                )
            if (outcome == "dead" and item.key not in self.pending) or (
                outcome == "written" and item.replay
            ):
                self.engine.drop_local([item.key])
        return
        yield  # a plan

    def _retire(self) -> Plan[None]:
        return
        yield  # a plan

    # -- flush, dead letters, close -----------------------------------------------------------

    def _end_flush(self, pending: int | None = None) -> FlushReport:
        """What happened since the previous flush ended (or since the queue was made)."""
        with self.cond:
            now, before = self.totals, self._reported
            report = FlushReport(
                written=now.written - before.written,
                coalesced=now.coalesced - before.coalesced,
                store_calls=now.store_calls - before.store_calls,
                retried=now.retried - before.retried,
                dead_lettered=now.dead_lettered - before.dead_lettered,
                pending=len(self.pending) + len(self.busy) if pending is None else pending,
                errors=self.errors[before.dead_lettered :] + now.errors[len(before.errors) :],
                requeued=now.requeued - before.requeued,
                lost=now.lost - before.lost,
            )
            self._reported = FlushReport(**{**now.__dict__, "errors": list(now.errors)})
            return report

    def flush(self, timeout: float | None) -> Plan[FlushReport]:
        """Wait until every write queued before this call is in the store or dead-lettered."""
        with self.cond:
            upto = self.seq
        self.kick()

        def drained() -> bool:
            return self.drained_upto(upto)

        if timeout is None:
            yield QueueWait(self, drained, None, "progress")
            return self._end_flush()
        timer = self.engine.timer
        deadline = timer() + timeout
        # In slices, so that the deadline is kept on the engine's timer (a test's fake one too).
        while not (yield QueueWait(self, drained, min(self.WAIT_SLICE, timeout), "progress")):
            timeout = deadline - timer()
            if timeout <= 0:
                break
        return self._end_flush()

    def dead_letters(self) -> Plan[list[DeadLetter]]:
        return list(self.dead)
        yield  # a plan

    def replay(self, letters: list[DeadLetter]) -> Plan[int]:
        """Queue dead letters of this writer again; returns how many were."""
        with self.cond:
            mine = [dead for dead in letters if dead in self.dead]
            for dead in mine:
                self.dead.remove(dead)
                self._add(dead.key, WriteCall(dead.args, dead.kwargs), replay=True)
        if mine:
            self.kick()
        return len(mine)
        yield  # a plan

    def stop(self) -> None:
        self.stopped = True
        self.kick()

    def join_sync(self, timeout: float) -> None:
        """Wait for a stopped flusher thread to end."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    async def join_async(self, timeout: float) -> None:
        """Wait for a stopped flusher task of the running loop to end."""
        task = self._task
        if task is not None and self._loop is asyncio.get_running_loop() and not task.done():
            await asyncio.wait([task], timeout=timeout)
