"""The decision core of a write-behind queue: what is queued, coalesced, taken, retried or
dead-lettered, under one condition (no I/O here but waking the flusher)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._drivers import Plan, run_async, run_sync
from ..errors import (
    WriteBehindFull,
)
from ..options import WriteBehind
from .types import (
    DeadLetter,
    FlushReport,
    Outcome,
    PendingWrite,
    WriteCall,
)

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("cachewise")


class QueueCore:
    """The writes of one writer not yet in the store, and the decisions about them: coalesce,
    one write per key at a time, back off, dead-letter. The flusher is the layer above."""

    durable = False

    if TYPE_CHECKING:  # the flusher plan: the ``queue`` layer, above this one

        def _flusher(self) -> Plan[None]: ...

    def __init__(
        self,
        fn: Callable[..., Any],
        batch_fn: Callable[[list[WriteCall]], Any] | None,
        where: str,
        options: WriteBehind,
        engine: Engine,
    ) -> None:
        self.fn = fn
        self.batch_fn = batch_fn
        self.where = where
        self.options = options
        self.engine = engine
        self.is_async = inspect.iscoroutinefunction(fn)
        self.cond = threading.Condition()
        self.version = 0  # bumped by every write and flush, so an idle flusher never misses one
        self.pending: dict[str, PendingWrite] = {}  # insertion order = order of first write
        self.busy: dict[str, PendingWrite] = {}  # taken by the flusher, not finished yet
        self.seq = 0
        self.dead: list[DeadLetter] = []  # in memory; a durable queue keeps them in Redis
        self.errors: list[str] = []  # the last error of every dead-lettered write, in order
        self.totals = FlushReport()
        self._reported = FlushReport()  # totals at the end of the previous flush
        self.stopped = False
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._start()

    def _start(self) -> None:
        """In memory, the flusher starts with the first write."""

    # -- the caller's side (in memory) --------------------------------------------------------

    def has_room(self, key: str) -> bool:
        """Whether a write to ``key`` can be queued now (a queued key is coalesced, so yes)."""
        return key in self.pending or len(self.pending) + len(self.busy) < self.options.maxsize

    def full_error(self) -> WriteBehindFull:
        return WriteBehindFull(
            f"write-behind queue of {self.where} holds {self.options.maxsize} writes; "
            "the write was not queued and the cache is unchanged"
        )

    def put(self, key: str, call: WriteCall, on_queued: Callable[[], None]) -> bool:
        """Queue one write and return True; False (nothing queued) when the queue is full.

        ``on_queued`` runs under the queue's lock, as unpinning does, so a value pinned for a
        queued write can never be unpinned by an older write finishing at that moment.
        """
        with self.cond:
            if not self.has_room(key):
                return False
            on_queued()
            self._add(key, call)
        self.kick()
        return True

    def kick(self) -> None:
        """Wake the flusher (starting it if needed): there is a write, or someone flushes."""
        with self.cond:
            self.version += 1
            self.cond.notify_all()
        loop, kick = self._loop, self._kick
        if loop is not None and kick is not None and not loop.is_closed():
            if asyncio._get_running_loop() is loop:  # the public twin raises outside a loop
                kick.set()
            else:
                loop.call_soon_threadsafe(kick.set)
        self.ensure_flusher()

    def ensure_flusher(self) -> None:
        """Start the flusher if it is not running: a thread, or a task on the running loop."""
        if self.stopped:
            return
        if not self.is_async:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=run_sync,
                    args=(self._flusher(),),
                    name=f"cachewise-write-behind:{self.where}",
                    daemon=True,
                )
                self._thread.start()
            return
        loop = asyncio._get_running_loop()
        if loop is None:
            return  # started by the first write or flush made on a loop
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._kick = asyncio.Event()
            self._progress = asyncio.Event()
            self._task = loop.create_task(run_async(self._flusher()))

    # -- decisions, under the condition -------------------------------------------------------

    def _add(
        self,
        key: str,
        call: WriteCall,
        ids: Iterable[str] = (),
        packed: bytes = b"",
        replay: bool = False,
    ) -> None:
        self.seq += 1
        old = self.pending.get(key)
        if old is not None:
            self.totals.coalesced += 1
        # Coalesce: the newest call replaces the queued one, keeping the older place in line.
        self.pending[key] = PendingWrite(
            key,
            call,
            old.first_seq if old is not None else self.seq,
            ids=(old.ids if old is not None else []) + list(ids),
            packed=packed,
            replay=replay or (old is not None and old.replay),
        )

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

    def _finished(
        self, item: PendingWrite, error: BaseException | None, coalesced: bool = False
    ) -> Outcome:
        """Settle a write the flusher took: written (or, ``coalesced``, replaced by a newer
        queued write and so not needed), superseded, retried later, or dead."""
        outcome: Outcome
        with self.cond:
            del self.busy[item.key]
            newer = self.pending.get(item.key)
            if error is None:
                outcome = "written"
                if coalesced:
                    self.totals.coalesced += 1
                else:
                    self.totals.written += 1
            elif newer is not None:
                # A newer write to this key is queued: it supersedes the failed one, and stands
                # for its stream entries too.
                outcome = "superseded"
                newer.ids = item.ids + newer.ids
            elif item.attempts + 1 > self.options.retries:
                outcome = "dead"
                self.totals.dead_lettered += 1
                self.errors.append(repr(error))
                log.error("cachewise: write-behind of %s dead-lettered: %r", item.key, error)
            else:
                outcome = "retry"
                self.totals.retried += 1
                item.attempts += 1
                # Exponential backoff with jitter: 0.5x..1x of backoff * 2^(attempts-1).
                delay = self.options.backoff * 2 ** (item.attempts - 1)
                item.not_before = self.engine.timer() + delay * (0.5 + random.random() / 2)
                self.pending[item.key] = item
            if item.key not in self.pending:
                self.engine.unpin(item.key)
            self.cond.notify_all()
        if self._progress is not None and asyncio._get_running_loop() is self._loop:
            self._progress.set()
        return outcome

    def _idle_wait(self, wait: float | None) -> float:
        """How long an idle flusher sleeps: until the next retry is due, at most ``interval``
        (a new write or a flush wakes it sooner)."""
        return self.options.interval if wait is None else min(wait, self.options.interval)

    def drained_upto(self, seq: int) -> bool:
        items = list(self.pending.values()) + list(self.busy.values())
        return all(item.first_seq > seq for item in items)
