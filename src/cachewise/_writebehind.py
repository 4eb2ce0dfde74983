"""Write-behind without Redis: a bounded in-memory queue per writer and its flusher.

What a crash loses: everything still queued in memory (the process is the only place it
exists). ``flush()``/``close()`` and interpreter exit drain it; the durable queue is the Redis
tier's. The queue itself decides (what to batch, coalesce, retry, dead-letter) under one
``threading.Condition``; the flusher that calls the writer is a daemon thread for a ``def``
writer and a task on the caller's loop for an ``async def`` one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ._drivers import Op
from .errors import ConfigValueError, WriteBehindFull

log = logging.getLogger("cachewise")


@dataclass
class PendingWrite:
    """One coalesced write: the latest arguments for one cache key."""

    key: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    first_seq: int  # the oldest enqueued write this one stands for (flush waits on it)
    attempts: int = 0
    not_before: float = 0.0


@dataclass(frozen=True)
class DeadLetter:
    """A write that failed every try: what it was, and the last error."""

    writer: str
    key: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int
    error: str


@dataclass
class FlushReport:
    """What happened since the previous ``flush()``: writes, store calls, retries, dead letters."""

    written: int = 0
    store_calls: int = 0
    retried: int = 0
    dead_lettered: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WriteBehindOptions:
    maxsize: int = 10_000
    when_full: Literal["block", "raise"] = "block"
    batch_size: int = 100
    interval: float = 0.05
    retries: int = 5
    backoff: float = 0.1

    def __post_init__(self) -> None:
        if self.when_full not in ("block", "raise"):
            raise ConfigValueError(
                f"write_behind_when_full must be 'block' or 'raise', got {self.when_full!r}"
            )
        for name in ("maxsize", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigValueError(f"write_behind {name} must be >= 1")


class WriteBehindQueue:
    """The pending writes of one writer function, coalesced per key, in order."""

    def __init__(
        self,
        fn: Callable[..., Any],
        where: str,
        options: WriteBehindOptions,
        on_settled: Callable[[str], None],
    ) -> None:
        self.fn = fn
        self.on_settled = on_settled
        self.where = where
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.cond = threading.Condition()
        self.pending: dict[str, PendingWrite] = {}  # insertion order = order of first write
        self.busy: dict[str, PendingWrite] = {}  # taken by the flusher, not finished yet
        self.seq = 0
        self.dead: list[DeadLetter] = []
        self.totals = FlushReport()
        self._reported = FlushReport()  # totals at the end of the previous flush
        self.stopped = False
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the caller's side ------------------------------------------------------------------

    def has_room(self, key: str) -> bool:
        """Whether a write to ``key`` can be queued now (a queued key is coalesced, so yes)."""
        return key in self.pending or len(self.pending) + len(self.busy) < self.options.maxsize

    def full_error(self) -> WriteBehindFull:
        return WriteBehindFull(
            f"write-behind queue of {self.where} holds {self.options.maxsize} writes; "
            "the write was not queued and the cache is unchanged"
        )

    def put(
        self,
        key: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_queued: Callable[[], None],
    ) -> bool:
        """Queue one write and return True; False (nothing queued) when the queue is full.

        ``on_queued`` runs under the queue's lock, as ``on_settled`` does, so a value pinned
        for a queued write can never be unpinned by an older write finishing at that moment.
        """
        with self.cond:
            if not self.has_room(key):
                return False
            on_queued()
            self.seq += 1
            old = self.pending.get(key)
            first = old.first_seq if old is not None else self.seq
            # Coalesce: the newest arguments replace the queued ones, keeping the older place.
            self.pending[key] = PendingWrite(key, args, kwargs, first)
            self.cond.notify_all()
        self._ensure_flusher()
        return True

    def _ensure_flusher(self) -> None:
        if self.is_async:
            loop = asyncio.get_running_loop()
            if self._task is None or self._task.done() or self._loop is not loop:
                self._loop = loop
                self._wakeup = asyncio.Event()
                self._progress = asyncio.Event()
                self._task = loop.create_task(self._flush_async())
            assert self._wakeup is not None
            self._wakeup.set()
        elif self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._flush_thread, name=f"cachewise-write-behind:{self.where}", daemon=True
            )
            self._thread.start()

    # -- decisions, under the condition -----------------------------------------------------

    def _take(self, now: float) -> tuple[list[PendingWrite], float | None]:
        """Up to ``batch_size`` writes that are due, and how long until the next one is."""
        batch: list[PendingWrite] = []
        wait: float | None = None
        for key, item in list(self.pending.items()):
            if key in self.busy:
                continue  # one write per key at a time: order per key
            if item.not_before > now:
                delay = item.not_before - now
                wait = delay if wait is None else min(wait, delay)
                continue
            batch.append(item)
            del self.pending[key]
            self.busy[key] = item
            if len(batch) >= self.options.batch_size:
                break
        return batch, wait

    def _finished(self, item: PendingWrite, error: BaseException | None, now: float) -> None:
        with self.cond:
            del self.busy[item.key]
            self.totals.store_calls += 1
            if error is None:
                self.totals.written += 1
            elif item.key in self.pending:
                pass  # a newer write to this key is queued: it supersedes the failed one
            elif item.attempts + 1 > self.options.retries:
                self.totals.dead_lettered += 1
                self.dead.append(
                    DeadLetter(
                        self.where, item.key, item.args, item.kwargs, item.attempts + 1, repr(error)
                    )
                )
                log.error("cachewise: write-behind of %s dead-lettered: %r", item.key, error)
            else:
                self.totals.retried += 1
                item.attempts += 1
                # Exponential backoff with jitter: 0.5x..1x of backoff * 2^(attempts-1).
                delay = self.options.backoff * 2 ** (item.attempts - 1)
                item.not_before = now + delay * (0.5 + random.random() / 2)
                self.pending[item.key] = item
            if item.key not in self.pending:
                self.on_settled(item.key)
            self.cond.notify_all()

    def _idle_wait(self, wait: float | None) -> float:
        """How long an idle flusher sleeps: until the next retry is due, at most ``interval``
        (a new write or a flush wakes it sooner)."""
        return self.options.interval if wait is None else min(wait, self.options.interval)

    # -- the flushers -----------------------------------------------------------------------

    def _flush_thread(self) -> None:
        while True:
            with self.cond:
                batch, wait = self._take(time.monotonic())
                if not batch:
                    if self.stopped and not self.pending:
                        return
                    self.cond.wait(self._idle_wait(wait))
                    continue
            for item in batch:
                try:
                    self.fn(*item.args, **item.kwargs)
                except Exception as exc:
                    self._finished(item, exc, time.monotonic())
                else:
                    self._finished(item, None, time.monotonic())

    async def _flush_async(self) -> None:
        while True:
            with self.cond:
                batch, wait = self._take(time.monotonic())
                done = not batch and self.stopped and not self.pending
            assert self._wakeup is not None and self._progress is not None
            self._progress.set()
            if done:
                return
            if not batch:
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_wait(wait))
                continue
            for item in batch:
                try:
                    await self.fn(*item.args, **item.kwargs)
                except Exception as exc:
                    self._finished(item, exc, time.monotonic())
                else:
                    self._finished(item, None, time.monotonic())

    # -- flush and close --------------------------------------------------------------------

    def _drained_upto(self, seq: int) -> bool:
        items = list(self.pending.values()) + list(self.busy.values())
        return all(item.first_seq > seq for item in items)

    def _start_flush(self) -> int:
        with self.cond:
            self.cond.notify_all()  # wake the flusher now
            return self.seq

    def _end_flush(self) -> FlushReport:
        """What happened since the previous flush ended (or since the queue was made)."""
        with self.cond:
            now, before = self.totals, self._reported
            report = FlushReport(
                written=now.written - before.written,
                store_calls=now.store_calls - before.store_calls,
                retried=now.retried - before.retried,
                dead_lettered=now.dead_lettered - before.dead_lettered,
                pending=len(self.pending) + len(self.busy),
                errors=[dead.error for dead in self.dead[before.dead_lettered :]],
            )
            self._reported = FlushReport(**{**now.__dict__, "errors": []})
            return report

    def flush(self, timeout: float | None = None) -> FlushReport:
        """Block until every write queued before this call is in the store or dead-lettered."""
        if self.is_async and (self.pending or self.busy):
            raise RuntimeError(f"write-behind of {self.where} is async: use await cache.aflush()")
        upto = self._start_flush()
        try:
            with self.cond:
                self.cond.wait_for(lambda: self._drained_upto(upto), timeout)
        finally:
            report = self._end_flush()
        return report

    async def aflush(self) -> FlushReport:
        """Await until every write queued before this call is in the store or dead-lettered."""
        if not self.is_async:
            return await asyncio.to_thread(self.flush)
        upto = self._start_flush()
        try:
            while True:
                with self.cond:
                    if self._drained_upto(upto):
                        break
                self._ensure_flusher()  # wakes it, or restarts it on this loop
                assert self._progress is not None
                self._progress.clear()
                await self._progress.wait()
        finally:
            report = self._end_flush()
        return report

    def wait_for_room_sync(self, key: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.has_room(key))

    async def wait_for_room_async(self, key: str) -> None:
        while not self.has_room(key):
            self._ensure_flusher()
            assert self._progress is not None
            self._progress.clear()
            await self._progress.wait()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class WaitForRoom(Op):
    """Wait until a full write-behind queue can take a write to ``key``."""

    def __init__(self, queue: WriteBehindQueue, key: str) -> None:
        self.queue = queue
        self.key = key

    def run_sync(self) -> None:
        self.queue.wait_for_room_sync(self.key)

    async def run_async(self) -> None:
        await self.queue.wait_for_room_async(self.key)
