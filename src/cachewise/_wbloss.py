"""Write-behind loss detection: the writes this process queued in Redis and has not seen
settled, and what to do when the queue's keys vanish.

Rules of this module: no I/O, no clock; the queue calls it under its lock and carries out what
it returns.

A writer's queue has an *epoch*, a random token in a key of its own (``<ns>#wbepoch:<writer>``,
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

from dataclasses import dataclass


@dataclass(frozen=True)
class Held:
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

    def add(self, ident: str, held: Held) -> None:
        self.items[ident] = held
        while len(self.items) > self.limit:
            oldest = next(iter(self.items))
            del self.items[oldest]
            self.forgotten += 1
            self.forgotten_upto = max(self.forgotten_upto, oldest, key=stream_order)

    def epochs(self) -> set[str]:
        return {held.epoch for held in self.items.values()}

    def settled(self, ids: list[str]) -> None:
        """Writes this process saw settled (its flusher acknowledged them)."""
        for ident in ids:
            self.items.pop(ident, None)

    def settled_before(self, epoch: str, first: str | None) -> None:
        """The queue of ``epoch`` holds nothing older than ``first`` (None: nothing at all), and
        nothing was lost: every held write of that epoch older than it was settled."""
        bound = stream_order(first) if first is not None else None
        for ident in [
            i
            for i, held in self.items.items()
            if held.epoch == epoch and (bound is None or stream_order(i) < bound)
        ]:
            del self.items[ident]
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
            held = self.items.pop(ident)
            if newest.pop(held.key, None) is not None:
                older += 1  # keep the order of the newest write per key
            newest[held.key] = (ident, held)
        forgotten, self.forgotten = self.forgotten, 0
        return list(newest.values()), older, forgotten
