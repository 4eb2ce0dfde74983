"""Write-behind: the queue of one writer, the flusher that empties it, and where writes wait.

One decision core, ``WriteBehindQueue``: coalesce the writes of a key (the newest arguments
win, the oldest place in line is kept), one write per key at a time so that a key's writes land in
the order they were made, retry with exponential backoff and jitter, dead-letter after the last
try. One flusher, written once as a plan: the sync driver runs it in a daemon thread for a ``def``
writer, the async driver as a task for an ``async def`` one. Where the writes wait differs:

- In memory (no Redis): the queue is the only copy, bounded (block or raise when full). A crash
  loses what is queued; ``flush()``, ``close()`` and interpreter exit drain it.
- In Redis (``StreamQueue``): a Stream per namespace and writer, read through a consumer group.
  Each process that registered the writer runs a flusher; the one holding the writer's flusher
  lease reads the stream (one reader keeps each key's writes in order), claims what a dead
  holder left pending (``XAUTOCLAIM``) and acknowledges a write only once the store has it. A
  process killed mid-flush loses nothing: its entries stay pending and are claimed. Delivery is
  at least once, so writers must be idempotent.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import redis.exceptions

from . import codec
from ._drivers import Invoke, Op, Plan, Sleep, Spawn, run_async, run_sync
from ._redis import (
    REDIS_ERRORS,
    RedisBackend,
    RedisCall,
    RunPipeline,
    RunReplicated,
    RunScript,
    text,
)
from ._wbloss import Held, HeldWrites
from .errors import (
    ConfigValueError,
    ValueTooLarge,
    WriteBehindFull,
    WriteBehindNotDurable,
    describe,
)

if TYPE_CHECKING:
    from ._engine import Engine, StoreCall

log = logging.getLogger("cachewise")


class WriteCall(NamedTuple):
    """One call of a writer, as a batch writer receives it: ``fn(*args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class PendingWrite:
    """One coalesced write: the latest call for one cache key."""

    key: str
    call: WriteCall
    first_seq: int  # the oldest enqueued write this one stands for (flush waits on it)
    ids: list[str] = field(default_factory=list)  # its stream entries (Redis), oldest first
    packed: bytes = b""  # the call as stored in the stream (Redis)
    attempts: int = 0
    not_before: float = 0.0
    replay: bool = False  # a dead letter sent again: the cache may hold an older store value


@dataclass(frozen=True)
class DeadLetter:
    """A write that failed every try: what it was, and the last error."""

    writer: str
    key: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int
    error: str
    id: str = ""  # its entry in the dead-letter stream (Redis); "" in memory


@dataclass
class FlushReport:
    """What happened since the previous ``flush()``: writes, store calls, retries, dead letters."""

    written: int = 0
    coalesced: int = 0  # writes a newer write to the same key replaced: no store call
    store_calls: int = 0
    retried: int = 0
    dead_lettered: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)
    #: The queue in Redis was lost (``FLUSHALL``, eviction, failover): writes this process still
    #: held were queued again; the ones it could not were lost (logged at ERROR, never silent).
    requeued: int = 0
    lost: int = 0


@dataclass(frozen=True)
class WriteBehindOptions:
    maxsize: int = 10_000
    when_full: Literal["block", "raise"] = "block"
    batch_size: int = 100
    interval: float = 0.05
    retries: int = 5
    backoff: float = 0.1
    claim_idle: float = 5.0
    retention: float = 7 * 24 * 3600.0
    #: Queue writes on a Redis whose eviction policy may evict them (``allkeys-*``): refused
    #: unless this says the user accepts that a write may then be lost (and reported lost).
    allow_eviction: bool = False
    #: With replicas, how long an enqueue waits for one of them to have the write (``WAIT``); 0
    #: returns at once (faster; a failover may then lose writes acknowledged just before it).
    replica_wait: float = 0.2

    def __post_init__(self) -> None:
        if self.when_full not in ("block", "raise"):
            raise ConfigValueError(
                f"write_behind_when_full must be 'block' or 'raise', got {self.when_full!r}"
            )
        for name in ("maxsize", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigValueError(f"write_behind {name} must be >= 1")
        if not isinstance(self.allow_eviction, bool):
            raise ConfigValueError(
                f"write_behind_allow_eviction must be a bool, got {self.allow_eviction!r}"
            )
        if not (isinstance(self.replica_wait, (int, float)) and 0 <= self.replica_wait < 60):
            raise ConfigValueError(
                "write_behind_replica_wait must be seconds from 0 (off) to below 60, got "
                f"{self.replica_wait!r}"
            )
        if self.retention < self.claim_idle * 10:
            raise ConfigValueError(
                "write_behind_retention must be at least ten times write_behind_claim_idle"
            )


Outcome = Literal["written", "retry", "superseded", "dead"]


class QueueWait(Op):
    """Wait until ``ready()`` holds or ``timeout`` passes; True when it holds.

    A thread waits on the queue's condition. A task waits on one of the queue's events, set on
    its loop: ``kick`` (a write or a flush for the flusher) or ``progress`` (a write settled, for
    callers), checking ``ready()`` again after each.
    """

    def __init__(
        self,
        queue: WriteBehindQueue,
        ready: Callable[[], bool],
        timeout: float | None,
        event: Literal["kick", "progress"],
    ) -> None:
        self.queue = queue
        self.ready = ready
        self.timeout = timeout
        self.event = event

    def run_sync(self) -> bool:
        with self.queue.cond:
            return self.queue.cond.wait_for(self.ready, self.timeout)

    async def run_async(self) -> bool:
        queue = self.queue
        if not queue.is_async:  # its flusher is a thread: wait in one
            return await asyncio.to_thread(self.run_sync)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not self.ready():
            if self.event == "progress":
                queue.ensure_flusher()  # wakes it, or restarts it on this loop
            event = queue._kick if self.event == "kick" else queue._progress
            left = None if deadline is None else deadline - time.monotonic()
            if event is None or (left is not None and left <= 0):
                return self.ready()
            event.clear()  # no await since ready() was checked: a set cannot be lost
            try:
                await asyncio.wait_for(event.wait(), left)
            except (asyncio.TimeoutError, TimeoutError):
                return self.ready()
        return True


class WriteBehindQueue:
    """The writes of one writer function not yet in the store, and its flusher (in memory)."""

    durable = False

    def __init__(
        self,
        fn: Callable[..., Any],
        batch_fn: Callable[[list[WriteCall]], Any] | None,
        where: str,
        options: WriteBehindOptions,
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
                item.not_before = time.monotonic() + delay * (0.5 + random.random() / 2)
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

    # -- the flusher --------------------------------------------------------------------------

    def _flusher(self) -> Plan[None]:
        """Write what is due, batch by batch, until stopped and drained."""
        while True:
            with self.cond:
                version = self.version
                batch, wait = self._take(time.monotonic())
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
        yield QueueWait(self, lambda: self.drained_upto(upto), timeout, "progress")
        return self._end_flush()

    def check_sync_flush(self) -> None:
        """Refuse a sync flush of an async writer's Redis queue: its flusher is a task."""
        if self.durable and self.is_async and (self.pending or self.busy):
            raise RuntimeError(f"write-behind of {self.where} is async: use await cache.aflush()")

    def flush_from_sync(self, timeout: float | None) -> FlushReport:
        """``flush`` for sync code (``Cache.flush``, ``close``, interpreter exit). An ``async
        def`` writer's in-memory queue that holds writes is drained on the writer's loop if it
        still runs in another thread, else on an event loop of its own in a helper thread (the
        writer's loop is closed or stopped). Raises when called on the thread of the writer's
        running loop, which it would block."""
        if not (self.is_async and not self.durable and (self.pending or self.busy)):
            return run_sync(self.flush(timeout))
        loop, here = self._loop, asyncio._get_running_loop()  # public twin raises without one
        if loop is not None and loop.is_running():
            if loop is here:
                raise RuntimeError(
                    f"write-behind of {self.where} runs on this event loop: await "
                    "cache.aflush() or cache.aclose() there"
                )
            return asyncio.run_coroutine_threadsafe(run_async(self.flush(timeout)), loop).result()
        reports: list[FlushReport] = []
        failures: list[BaseException] = []

        def drain() -> None:
            try:
                reports.append(asyncio.run(run_async(self.flush(timeout))))
            except BaseException as exc:  # raised in the caller's thread below
                failures.append(exc)

        helper = threading.Thread(target=drain, name=f"cachewise-drain:{self.where}")
        helper.start()
        helper.join()
        if failures:
            raise failures[0]
        return reports[0]

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


def stream_name(fn: Callable[..., Any]) -> str:
    """The writer's name in Redis: the same in every process that imports it.

    Spawned processes import the main script as ``__mp_main__``; it is the same writer.
    """
    module = fn.__module__ or ""
    if module == "__mp_main__":
        module = "__main__"
    qualname = fn.__qualname__
    if not module or "<" in qualname:
        raise ConfigValueError(
            f"write_behind() with Redis needs a writer other processes can register by name "
            f"(module-level function or method); {module}.{qualname} is not one, so its queued "
            "writes could never be flushed by another process"
        )
    return f"{module}.{qualname}"


def pack_call(call: WriteCall, where: str) -> bytes:
    """A writer's arguments as stored in the stream (the values' codec: tuples stay tuples)."""
    return codec.pack_value([list(call.args), call.kwargs], f"the arguments of {where}")


def unpack_call(raw: bytes) -> WriteCall:
    args, kwargs = codec.unpack_value(raw)
    return WriteCall(tuple(args), dict(kwargs))


class StreamQueue(WriteBehindQueue):
    """A writer's queue kept in a Redis Stream, flushed by whichever live process leads it."""

    durable = True
    GROUP = "cachewise"

    def _put_back(self, batch: list[PendingWrite]) -> None:
        """Nothing to do: an unfinished batch stays pending in the stream, where a flusher
        claims it after ``write_behind_claim_idle``."""

    def _start(self) -> None:
        """Name the writer's Redis keys and start flushing: a process that only registered the
        writer flushes too."""
        cache_backend = self.engine.backend
        assert cache_backend is not None
        #: Where cached values, their pending records and leases live, and events go.
        self.cache_backend: RedisBackend = cache_backend
        #: Where the queue lives: ``write_behind_redis``, else the cache's own Redis. Apart, a
        #: call, a settle and a requeue are each two scripts (queue first), not one.
        self.backend: RedisBackend = self.engine.queue_backend or cache_backend
        self.split = self.backend is not cache_backend
        self._cache_backlog: list[StoreCall] = []  # cache halves of settles Redis refused
        ns = cache_backend.namespace
        self.stream = f"{ns}#wb:{self.where}"
        self.dead_stream = f"{ns}#wbdead:{self.where}"
        self.lease = f"{ns}#wbflusher:{self.where}"
        self.newest = f"{ns}#wbnewest:{self.where}"
        self.epoch_key = f"{ns}#wbepoch:{self.where}"
        self.held = HeldWrites(max(1_000, 10 * self.options.maxsize))
        self.losses = 0  # times this process found the queue lost
        self._loss_check_due = 0.0
        self._nogroup: str | None = None  # the error that said the consumer group vanished
        self.token = secrets.token_hex(8)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{self.token}"
        self.leading = False
        self.known: set[str] = set()  # stream ids held here (queued or being written)
        self.claimed = 0.0
        self.retention_ms = int(self.options.retention * 1000)
        self.lease_ms = int(self.options.claim_idle * 1000)
        self.replicas = 0  # of the queue's Redis, as last seen by ``check_server``
        self.unreplicated = 0  # enqueues acknowledged before a replica had them
        self._unreplicated_logged = 0.0
        self._checked_opens = -1
        self._check_due = 0.0
        self.ensure_flusher()  # a process that only registered the writer flushes too

    def enqueue(self, key: str, call: WriteCall) -> Callable[[StoreCall], Plan[Any]]:
        """The plan that runs the ENQUEUE script made from the STORE call of the new value (one
        round trip), after the queue's Redis was found fit to hold it; with replicas, the reply
        comes once one of them has the write too (or ``replica_wait`` passed, counted)."""
        packed = pack_call(call, self.where)  # raises before anything is stored

        def run(store: StoreCall) -> Plan[Any]:
            name, keys, args = store
            if name != "store":
                raise ValueTooLarge(
                    f"the value written behind by {self.where} is over max_value_bytes: a "
                    "durable write needs it in Redis until the store has it; nothing was queued"
                )
            yield from self.check_server()
            pending = self.cache_backend.pending_key(key)
            nonce = secrets.token_hex(8)
            script: StoreCall = (
                ("enqueue_queue", [self.stream, self.newest, self.epoch_key], [key, packed, nonce])
                if self.split
                else (
                    "enqueue",
                    [self.stream, pending, self.newest, self.epoch_key, *keys],
                    [*args[:5], key, packed, self.retention_ms, nonce, *args[5:]],
                )
            )
            acked = 1
            if not self.replicas or not self.options.replica_wait:
                reply = yield RunScript(self.backend, *script)
            else:
                wait_ms = max(
                    1, int(min(self.options.replica_wait, self.backend.block_limit) * 1000)
                )
                reply, acked = yield RunReplicated(self.backend, script, wait_ms)
            mine = self._enqueued(key, packed, args[1], reply)
            if self.split:  # queued: now the cache half, which may fail open like any set
                try:
                    yield RunScript(
                        self.cache_backend, "pending_store", [pending, *keys],
                        [*args[:5], mine, *args[5:]],
                    )  # fmt: skip
                except REDIS_ERRORS as exc:
                    self.engine.redis_failed(exc)
                    self.engine.remember([key])
            if acked < 1:
                self.unreplicated += 1
                now = time.monotonic()
                if now - self._unreplicated_logged > 60:
                    self._unreplicated_logged = now
                    log.warning(
                        "cachewise: a write-behind write of %s was acknowledged before any of "
                        "the %d replicas had it (write_behind_replica_wait=%ss): a failover now "
                        "could lose it",
                        self.where, self.replicas, self.options.replica_wait,
                    )  # fmt: skip
            return reply

        return run

    def _enqueued(self, key: str, packed: bytes, envelope: bytes, reply: Any) -> str:
        """Hold a write just queued until it is seen settled (``_wbloss``); its pending id."""
        mine, epoch = text(reply[0]), text(reply[1])
        with self.cond:
            self.held.add(mine.split("|", 1)[1], Held(key, packed, envelope, epoch))
            lost = bool(self.held.epochs() - {epoch})
        if lost:  # this write went into a new epoch: older held writes' queue was lost
            self._loss_check_due = 0.0
            self.kick()
        return mine

    # -- loss detection -----------------------------------------------------------------------

    def check_loss(self) -> Plan[None]:
        """Learn whether the queue was lost since this process last looked, and if so queue
        again every write it still holds from before (see ``_wbloss``); forget the held writes
        that were settled. Logs the loss at ERROR with its cause, counts it, and reports it in
        the next ``flush()``."""
        cause = self._nogroup
        reply = yield RunScript(
            self.backend,
            "wb_state",
            [self.stream, self.epoch_key],
            [self.GROUP, secrets.token_hex(8), "1" if cause else ""],
        )
        self._nogroup = None
        epoch, first = text(reply[0]), text(reply[1]) or None
        with self.cond:
            if not self.held.epochs() - {epoch}:
                self.held.settled_before(epoch, first)
                return
            again, older, forgotten = self.held.lost(epoch)
            self.pending.clear()  # their stream entries are gone; what is queued again returns
            self.known.clear()
        if int(reply[2]) and not cause:
            cause = "the queue's stream or its epoch key vanished"
        replies = (yield from self._requeue(again, epoch)) if again else []
        requeued = replaced = 0
        with self.cond:
            for (ident, held), got in zip(again, replies, strict=True):
                if got == -1:  # the epoch moved again meanwhile: the next check retries it
                    self.held.add(ident, held)
                elif got == 0:
                    replaced += 1  # a newer write to the key is queued: it lands instead
                else:
                    self.held.add(text(got), Held(held.key, held.packed, held.envelope, epoch))
                    requeued += 1
            self.losses += 1
            self.totals.requeued += requeued
            self.totals.lost += forgotten
            message = (
                f"write-behind queue of {self.where} in Redis was lost "
                f"({cause or 'its epoch changed: FLUSHALL, eviction or a failover'}): "
                f"of the writes this process still held, {requeued} were queued again and "
                f"{replaced} had a newer write to their key queued already (together standing "
                f"for {older} older writes to the same keys); {forgotten} could not be and are "
                "lost; writes queued by processes that are gone are lost uncounted"
            )
            self.totals.errors.append(message)
        log.error("cachewise: %s", message)
        self.kick()

    def _requeue(self, again: list[tuple[str, Held]], epoch: str) -> Plan[list[Any]]:
        """Queue writes again (see ``check_loss``), with their pending records."""
        pending = self.cache_backend.pending_key
        calls: list[StoreCall]
        if not self.split:
            calls = [
                ("requeue", [self.stream, pending(h.key), self.newest, self.epoch_key],
                 [h.key, h.packed, h.envelope, epoch, ident])
                for ident, h in again
            ]  # fmt: skip
            combined: list[Any] = yield RunPipeline(self.backend, calls)
            return combined
        calls = [
            ("requeue_queue", [self.stream, self.newest, self.epoch_key],
             [h.key, h.packed, epoch, ident])
            for ident, h in again
        ]  # fmt: skip
        replies: list[Any] = yield RunPipeline(self.backend, calls)
        records: list[StoreCall] = [
            ("pending_set", [pending(h.key)], [f"{self.stream}|{text(got)}", h.envelope])
            for (_, h), got in zip(again, replies, strict=True)
            if isinstance(got, bytes | str)
        ]
        if records:
            try:
                yield RunPipeline(self.cache_backend, records)
            except REDIS_ERRORS as exc:  # queued all the same; reads may load the store's
                self.engine.redis_failed(exc)
        return replies

    #: How often the queue's Redis is looked at again (its policy, its replicas): a failover or a
    #: reconfiguration changes them, and a reconnect (the breaker opened and closed) too.
    CHECK_EVERY = 30.0

    def check_server(self) -> Plan[None]:
        """Refuse to queue on a Redis that may evict the queue; learn how many replicas it has.

        Read from ``INFO`` (managed services allow it where ``CONFIG GET`` is refused). Done
        before the first enqueue, again after the breaker reopened and closed, and every
        ``CHECK_EVERY`` seconds."""
        backend = self.backend
        now = time.monotonic()
        if self._checked_opens == backend.breaker.opens and now < self._check_due:
            return
        try:
            info = yield RedisCall(backend, "info", "all")
        except redis.exceptions.NoPermissionError as exc:
            # A Redis that will not say whether it evicts cannot be trusted with the queue.
            if not self.options.allow_eviction:
                raise WriteBehindNotDurable(
                    f"cachewise could not read the eviction policy of the Redis holding the "
                    f"write-behind queue of {self.where} (INFO refused: {describe(exc)}), so it "
                    "cannot tell whether queued writes could be evicted; nothing was queued. "
                    "Allow the INFO command for this user, give the queue a Redis of its own "
                    "(write_behind_redis=), or pass write_behind_allow_eviction=True"
                ) from None
            info = {}
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if policy.startswith("allkeys-") and not self.options.allow_eviction:
            raise WriteBehindNotDurable(
                f"the Redis holding the write-behind queue of {self.where} evicts any key under "
                f"memory pressure (maxmemory-policy {policy}), so queued writes could vanish "
                "before they reach the store; nothing was queued. Either give the queue a Redis "
                "of its own that does not evict (write_behind_redis=<URL or client> with "
                "maxmemory-policy noeviction or volatile-*: cachewise's queue keys carry no TTL, "
                "so volatile-* never picks them), or change this Redis' policy to one of those, "
                "or pass write_behind_allow_eviction=True to accept the risk (a loss is then "
                "detected, logged and counted, not prevented)"
            )
        self.replicas = int(info.get("connected_slaves", 0) or 0)
        self._checked_opens = backend.breaker.opens
        self._check_due = now + self.CHECK_EVERY

    # -- leading the stream -------------------------------------------------------------------

    def _lead(self) -> Plan[bool]:
        """True while this process leads the stream; takes the flusher lease when it is free."""
        if self.leading:
            return True
        backend = self.backend
        # SET lease token PX lease_ms NX
        taken = yield RedisCall(backend, "set", self.lease, self.token, None, self.lease_ms, True)
        if taken:
            yield RunScript(backend, "group", [self.stream], [self.GROUP, self.retention_ms])
            self.leading = True
            self.claimed = 0.0
            yield Spawn(self._keep_lease(), self.engine.keep, background=True)
            yield from self._prune_consumers()
        return self.leading

    def _prune_consumers(self) -> Plan[None]:
        """Remove the group's consumers of processes long gone (nothing pending, idle for ten
        claim periods): each restart adds one, and the group would otherwise keep them all."""
        consumers = yield RedisCall(self.backend, "xinfo_consumers", self.stream, self.GROUP)
        for consumer in consumers:
            name = text(consumer["name"])
            if (
                name != self.consumer
                and int(consumer["pending"]) == 0
                and int(consumer["idle"]) > 10 * self.lease_ms
            ):
                yield RedisCall(self.backend, "xgroup_delconsumer", self.stream, self.GROUP, name)

    def _keep_lease(self) -> Plan[None]:
        """Renew the flusher lease while this process leads, beside the flusher (a thread or a
        task of its own): a slow store call is not a dead flusher, and its writes must not be
        claimed by another process meanwhile."""
        while self.leading and not self.stopped:
            yield Sleep(self.options.claim_idle / 3)
            try:
                held = yield RunScript(
                    self.backend, "renew", [self.lease], [self.token, self.lease_ms]
                )
            except REDIS_ERRORS as exc:
                self.engine.redis_failed(exc)
                continue  # the lease may still hold; the next renewal tells
            if not held and self.leading:
                self._lost_lease()

    def _lost_lease(self) -> None:
        self.leading = False
        with self.cond:
            self.pending.clear()  # still pending in the group: the new leader claims them
            self.known = {i for item in self.busy.values() for i in item.ids}
        log.warning("cachewise: lost the write-behind lease of %s", self.where)

    def _superseded(self, batch: list[PendingWrite]) -> Plan[set[str]]:
        """Keys whose write is not this writer's newest to that key: a newer one is queued (and
        will land), or has landed already (this one was claimed late, or delivered again). They
        are acknowledged without a store call, so a key's store never goes back in time."""
        mine = [item for item in batch if item.ids and not item.replay]
        if not mine:
            return set()
        try:
            newest = yield RedisCall(self.backend, "hmget", self.newest, [i.key for i in mine])
        except REDIS_ERRORS as exc:
            self.engine.redis_failed(exc)
            return set()
        return {
            item.key
            for item, last in zip(mine, newest, strict=True)
            if last is None or text(last) != item.ids[-1]
        }

    def _refill(self, version: int, wait: float) -> Plan[None]:
        """Lead the stream, claim what a dead flusher left, and read new writes (blocking in
        Redis for up to ``wait``)."""
        try:
            if time.monotonic() >= self._loss_check_due and not self.stopped:
                self._loss_check_due = time.monotonic() + self.options.claim_idle / 2
                yield from self.check_loss()
            if self.stopped or not (yield from self._lead()):
                yield Sleep(min(self.options.claim_idle / 4, max(wait, self.options.interval)))
                return
            room = self.options.maxsize - len(self.pending) - len(self.busy)
            if room <= 0:
                yield Sleep(wait)
                return
            if time.monotonic() - self.claimed > self.options.claim_idle / 2:
                yield from self._claim(room)
                return
            block = max(1, int(min(wait, self.backend.block_limit) * 1000))
            reply = yield RedisCall(
                self.backend,
                "xreadgroup",
                self.GROUP,
                self.consumer,
                {self.stream: ">"},
                min(room, self.options.batch_size),
                block,
            )
        except REDIS_ERRORS as exc:
            self.engine.redis_failed(exc)
            if "NOGROUP" in str(exc):
                # The stream or its group was deleted, evicted or flushed: its writes are lost
                # unless queued again. Checked at once (the group is made again there).
                self.leading = False
                self._nogroup = describe(exc)
                self._loss_check_due = 0.0
            yield Sleep(min(1.0, self.options.claim_idle / 4))  # Redis is in trouble: slow down
            return
        for _, entries in reply or []:
            self._take_entries(entries)

    def _claim(self, room: int) -> Plan[None]:
        """Claim the entries other consumers left pending for ``claim_idle`` (a dead flusher)."""
        start = "0-0"
        while room > 0:
            reply = yield RedisCall(
                self.backend,
                "xautoclaim",
                self.stream,
                self.GROUP,
                self.consumer,
                self.lease_ms,
                start,
                min(room, self.options.batch_size),
            )
            start, entries = text(reply[0]), reply[1]
            if entries:
                log.info("cachewise: %s claimed %d pending writes", self.where, len(entries))
            room -= self._take_entries(entries)
            if start == "0-0":
                break
        self.claimed = time.monotonic()

    def _take_entries(self, entries: list[Any]) -> int:
        taken = 0
        with self.cond:
            for entry_id, fields in entries:
                ident = text(entry_id)
                if not fields or ident in self.known:
                    continue  # deleted meanwhile, or claimed back while it waits here
                self.known.add(ident)
                key = text(fields[b"k"])
                raw = fields[b"a"]
                try:
                    call = unpack_call(raw)
                except Exception:
                    call = WriteCall((), {})  # undecodable: the call fails and is dead-lettered
                self._add(key, call, [ident], raw, replay=b"r" in fields)
                taken += 1
        return taken

    def _settle(
        self, settled: list[tuple[PendingWrite, Outcome, BaseException | None]]
    ) -> Plan[None]:
        """Acknowledge what landed, dead-letter what failed for good: one round trip (two when
        the queue has a Redis of its own: the queue's half first)."""
        cache = self.cache_backend
        queue_calls: list[StoreCall] = []
        cache_calls: list[StoreCall] = []
        dropped: list[str] = []
        acked: list[str] = []
        for item, outcome, error in settled:
            if outcome == "retry":
                continue
            if outcome == "superseded":
                continue  # its entries are acknowledged with the newer write
            self.known.difference_update(item.ids)
            acked.extend(item.ids)
            mode = "dead" if outcome == "dead" else "drop" if item.replay else "ok"
            if mode != "ok":
                self.engine.drop_local([item.key])
                dropped.append(item.key)
            queue_keys = [self.stream, self.dead_stream, self.newest]
            queue_args = [
                self.GROUP, mode, self.retention_ms, item.key, item.packed,
                repr(error) if error is not None else "", item.attempts + 1, *item.ids,
            ]  # fmt: skip
            cache_keys = [cache.pending_key(item.key), item.key, cache.lease_key(item.key)]
            cache_args = [
                f"{self.stream}|{item.ids[-1]}" if item.ids else "", mode, cache.inbox,
                cache.message("i", [item.key], []) if mode != "ok" else "",
            ]  # fmt: skip
            if self.split:
                queue_calls.append(("settle_queue", queue_keys, queue_args))
                cache_calls.append(("settle_cache", cache_keys, cache_args))
            else:
                keys = [self.stream, cache_keys[0], item.key, cache_keys[2], self.dead_stream,
                        self.newest]  # fmt: skip
                args = [self.GROUP, cache_args[0], mode, cache_args[2], cache_args[3],
                        self.retention_ms, item.key, item.packed, queue_args[5],
                        item.attempts + 1, *item.ids]  # fmt: skip
                queue_calls.append(("settle", keys, args))
        if not queue_calls:
            return
        try:
            yield RunPipeline(self.backend, queue_calls)
        except REDIS_ERRORS as exc:
            # Not acknowledged: the entries stay pending and are written again (at least once).
            self.engine.redis_failed(exc)
            return
        with self.cond:
            self.held.settled(acked)
        yield from self._settle_cache(cache_calls)
        self.engine.wake_waiters(dropped)  # their values and leases are gone: load instead

    def _settle_cache(self, calls: list[StoreCall]) -> Plan[None]:
        """The cache halves of settled writes (a queue of its own), with any the cache's Redis
        refused before: a pending record left behind would be read instead of the store."""
        calls = self._cache_backlog + calls
        self._cache_backlog = []
        if not calls:
            return
        try:
            yield RunPipeline(self.cache_backend, calls)
        except REDIS_ERRORS as exc:
            self.engine.redis_failed(exc)
            self._cache_backlog = calls[-10_000:]

    def _retire(self) -> Plan[None]:
        if self.leading:
            self.leading = False
            try:
                yield RunScript(self.backend, "release", [self.lease], [self.token])
            except REDIS_ERRORS as exc:
                self.engine.redis_failed(exc)

    # -- flush, dead letters ------------------------------------------------------------------

    def flush(self, timeout: float | None) -> Plan[FlushReport]:
        """Wait until every write in the stream when this was called is in the store or
        dead-lettered, by whichever process flushes it (polled: other processes do the work)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        errors: list[str] = []
        left = 0
        try:
            yield from self.check_loss()  # a lost queue is reported, never a silent pending=0
            last = yield RedisCall(self.backend, "xrevrange", self.stream, "+", "-", 1)
            while last:
                if not (yield RedisCall(self.backend, "xrange", self.stream, "-", last[0][0], 1)):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.kick()
                yield Sleep(0.005)
            left = yield RedisCall(self.backend, "xlen", self.stream)
        except REDIS_ERRORS as exc:
            self.engine.redis_failed(exc)
            errors.append(f"Redis failed while flushing {self.where}: {describe(exc)}")
        report = self._end_flush(pending=left)
        report.errors.extend(errors)
        return report

    def dead_letters(self) -> Plan[list[DeadLetter]]:
        found = yield RedisCall(self.backend, "xrange", self.dead_stream, "-", "+")
        letters = []
        for entry_id, fields in found:
            try:
                call = unpack_call(fields[b"a"])
            except Exception:
                call = WriteCall((), {})
            letters.append(
                DeadLetter(
                    self.where,
                    text(fields[b"k"]),
                    call.args,
                    call.kwargs,
                    int(fields[b"n"]),
                    text(fields[b"e"]),
                    text(entry_id),
                )
            )
        return letters

    def replay(self, letters: list[DeadLetter]) -> Plan[int]:
        ids = [dead.id for dead in letters if dead.writer == self.where and dead.id]
        if not ids:
            return 0
        moved = yield RunScript(
            self.backend, "replay", [self.stream, self.dead_stream], [self.retention_ms, *ids]
        )
        self.kick()
        return int(moved)

    def stop(self) -> None:
        with self.cond:
            self.pending.clear()  # still pending in the group: the next flusher claims them
        super().stop()
