"""Write-behind loss detection: the writes this process queued in Redis and has not seen
settled, and what to do when the queue's keys vanish.

Rules of this module: ``HeldWrites`` does no I/O and reads no clock (the queue calls it under
its lock); ``LossDetection`` carries out what it decides, through its queue.

A writer's queue has an *epoch*, a random token in a key of its own (``<ns>:wbepoch:{<writer>}``,
no TTL). Every enqueue records the epoch its write went into. The epoch changes only when the
queue was lost: its key gone (``FLUSHALL``, eviction, a failover to a replica that never had
it), or the stream or its consumer group gone, which the process that notices records by
setting a new epoch. So, with the epoch unchanged, a write whose stream entry is gone was
settled; with the epoch changed, every write this process still holds from an older epoch is
enqueued again (the newest per key; writers are idempotent, delivery is at least once), and
each one it had to forget (past ``limit``) is counted as lost. Writes queued by a process that
died before the loss are lost without anyone able to count them; the docs say so.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any, NamedTuple

from .._drivers import Plan
from ..redis import (
    REDIS_ERRORS,
    RunPipeline,
    RunScript,
    ScriptCall,
    text,
)

if TYPE_CHECKING:
    from ..engine import StoreCall
    from .host import StreamHost

log = logging.getLogger("cachewise")


class Held(NamedTuple):
    """One write this process queued and has not seen settled: enough to queue it again."""

    key: str  # the cache key
    packed: bytes  # the call, as the stream holds it
    envelope: bytes  # the cached value written with it (the pending record's)
    epoch: str


def stream_order(ident: str) -> tuple[int, int]:
    """A stream id (``<ms>-<seq>``) as something that sorts like Redis sorts them."""
    ms, _, seq = ident.partition("-")
    return int(ms), int(seq or 0)


class HeldWrites:
    """The writes of one queue that this process enqueued and has not seen settled."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: dict[str, Held] = {}  # by stream id, in the order they were queued
        self.forgotten = 0  # held writes dropped past ``limit``: lost if the queue is lost
        self.forgotten_upto = "0-0"  # the newest of them
        self.per_epoch: dict[str, int] = {}  # how many held writes went into each epoch

    def add(self, ident: str, held: Held) -> None:
        if ident in self.items:
            self._drop(ident)
        self.items[ident] = held
        self.per_epoch[held.epoch] = self.per_epoch.get(held.epoch, 0) + 1
        while len(self.items) > self.limit:
            oldest = next(iter(self.items))
            self._drop(oldest)
            self.forgotten += 1
            self.forgotten_upto = max(self.forgotten_upto, oldest, key=stream_order)

    def _drop(self, ident: str) -> Held | None:
        held = self.items.pop(ident, None)
        if held is not None:
            left = self.per_epoch[held.epoch] - 1
            if left:
                self.per_epoch[held.epoch] = left
            else:
                del self.per_epoch[held.epoch]
        return held

    def epochs(self) -> set[str]:
        """The epochs of the writes held (one, unless a loss is being found): O(epochs), on the
        path of every enqueue."""
        return set(self.per_epoch)

    def settled(self, ids: list[str]) -> None:
        """Writes this process saw settled (its flusher acknowledged them)."""
        for ident in ids:
            self._drop(ident)

    def settled_before(self, epoch: str, first: str | None) -> None:
        """The queue of ``epoch`` holds nothing older than ``first`` (None: nothing at all), and
        nothing was lost: every held write of that epoch older than it was settled."""
        bound = stream_order(first) if first is not None else None
        for ident in [
            i
            for i, held in self.items.items()
            if held.epoch == epoch and (bound is None or stream_order(i) < bound)
        ]:
            self._drop(ident)
        if bound is None or stream_order(self.forgotten_upto) < bound:
            self.forgotten = 0  # the forgotten writes were older still: settled too

    def lost(self, epoch: str) -> tuple[list[tuple[str, Held]], int, int]:
        """The queue is at ``epoch`` now and writes held from other epochs were lost with their
        queue: the newest held write per key to queue again with its old id (oldest first), how
        many older writes to the same keys those stand for, and how many writes could not be
        queued again (forgotten past the limit). All are taken out of the bookkeeping."""
        newest: dict[str, tuple[str, Held]] = {}
        older = 0
        for ident in [i for i, held in self.items.items() if held.epoch != epoch]:
            held = self._drop(ident)
            assert held is not None
            if newest.pop(held.key, None) is not None:
                older += 1  # keep the order of the newest write per key
            newest[held.key] = (ident, held)
        forgotten, self.forgotten = self.forgotten, 0
        return list(newest.values()), older, forgotten


class LossDetection:
    """The writes one stream queue holds until it sees them settled, and what it does when it
    finds its queue lost: queue them again, log, count, report (see the rules above)."""

    def __init__(self, queue: StreamHost) -> None:
        self.queue = queue
        self.held = HeldWrites(max(1_000, 10 * queue.options.maxsize))
        self.losses = 0  # times this process found the queue lost
        self.check_due = 0.0  # when the flusher looks next
        self.nogroup: str | None = None  # the error that said the consumer group vanished
        self.epoch = ""  # the queue's epoch when this process last looked

    def enqueued(self, key: str, packed: bytes, envelope: bytes, reply: Any) -> str:
        """Hold a write just queued until it is seen settled; returns its pending id."""
        mine, epoch = text(reply).split(" ", 1)
        with self.queue.cond:
            self.held.add(mine.split("|", 1)[1], Held(key, packed, envelope, epoch))
            lost = len(self.held.per_epoch) > 1
        if lost:  # this write went into a new epoch: older held writes' queue was lost
            self.check_due = 0.0
            self.queue.kick()
        return mine

    # -- loss detection -----------------------------------------------------------------------

    def check(self) -> Plan[None]:
        """Learn whether the queue was lost since this process last looked, and if so queue
        again every write it still holds from before; forget the held writes
        that were settled. Logs the loss at ERROR with its cause, counts it, and reports it in
        the next ``flush()``. A queue lost again while its writes are queued again is looked
        at again at once (a few times; then the next check goes on)."""
        for _ in range(5):
            if not (yield from self._check_once()):
                return

    def unsettled_elsewhere(self) -> int:
        """Held writes of an epoch other than the queue's last seen: lost with their queue and
        not yet queued again (``flush()`` counts them as pending, never as done)."""
        with self.queue.cond:
            return sum(n for e, n in self.held.per_epoch.items() if e != self.epoch)

    def _check_once(self) -> Plan[int]:
        """One look (see ``check``); returns how many held writes are to be queued again still."""
        cause = self.nogroup
        reply = yield RunScript(
            self.queue.backend,
            "wb_state",
            [self.queue.stream, self.queue.epoch_key, self.queue.newest],
            [self.queue.GROUP, secrets.token_hex(8), "1" if cause else ""],
        )
        self.nogroup = None
        epoch, first = text(reply[0]), text(reply[1]) or None
        self.epoch = epoch
        with self.queue.cond:
            if not self.held.epochs() - {epoch}:
                self.held.settled_before(epoch, first)
                return 0
            again, older, forgotten = self.held.lost(epoch)
            # Their stream entries are gone; what is queued again comes back through the stream.
            self.queue.pending.clear()
            self.queue.known.clear()
        if int(reply[2]) and not cause:
            cause = "the queue's stream or its epoch key vanished"
        replies = (yield from self.requeue(again, epoch)) if again else []
        requeued = replaced = retry = 0
        with self.queue.cond:
            for (ident, held), got in zip(again, replies, strict=True):
                if got == -1:  # the queue was lost again meanwhile: looked at again
                    self.held.add(ident, held)
                    retry += 1
                elif got == 0:
                    replaced += 1  # a newer write to the key is queued: it lands instead
                else:
                    self.held.add(text(got), Held(held.key, held.packed, held.envelope, epoch))
                    requeued += 1
            self.losses += 1
            self.queue.totals.requeued += requeued
            self.queue.totals.lost += forgotten
            message = (
                f"write-behind queue of {self.queue.where} in Redis was lost "
                f"({cause or 'its epoch changed: FLUSHALL, eviction or a failover'}): "
                f"of the writes this process still held, {requeued} were queued again and "
                f"{replaced} had a newer write to their key queued already (together standing "
                f"for {older} older writes to the same keys); {forgotten} could not be and are "
                "lost; writes queued by processes that are gone are lost uncounted"
            )
            self.queue.totals.errors.append(message)
        log.error("cachewise: %s", message)
        self.queue.kick()
        return retry

    def requeue(self, again: list[tuple[str, Held]], epoch: str) -> Plan[list[Any]]:
        """Queue writes again (see ``check``), with their pending records."""
        q = self.queue
        pending = q.cache_backend.keys.pending
        calls: list[StoreCall]
        if not q.split:
            calls = [
                ScriptCall(
                    "requeue",
                    [q.stream, pending(h.key), q.newest, q.epoch_key],
                    [h.key, h.packed, h.envelope, epoch, ident],
                )
                for ident, h in again
            ]
            combined: list[Any] = yield RunPipeline(q.backend, calls)
            return combined
        calls = [
            ScriptCall(
                "requeue_queue", [q.stream, q.newest, q.epoch_key], [h.key, h.packed, epoch, ident]
            )
            for ident, h in again
        ]
        replies: list[Any] = yield RunPipeline(self.queue.backend, calls)
        records: list[StoreCall] = [
            ScriptCall(
                "pending_set", [pending(h.key)], [f"{self.queue.stream}|{text(got)}", h.envelope]
            )
            for (_, h), got in zip(again, replies, strict=True)
            if isinstance(got, bytes | str)
        ]
        if records:
            try:
                yield RunPipeline(self.queue.cache_backend, records)
            except REDIS_ERRORS as exc:  # queued all the same; reads may load the store's
                self.queue.engine.redis_failed(exc)
        return replies
