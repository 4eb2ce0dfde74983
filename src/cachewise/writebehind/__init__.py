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

from .loss import Held, HeldWrites, LossDetection, stream_order
from .queue import WriteBehindQueue
from .stream import StreamQueue
from .types import (
    DeadLetter,
    FlushReport,
    PendingWrite,
    WriteCall,
    pack_call,
    partition_names,
    stream_name,
    unpack_call,
)
from .wait import QueueWait

__all__ = [
    "DeadLetter",
    "FlushReport",
    "Held",
    "HeldWrites",
    "LossDetection",
    "PendingWrite",
    "QueueWait",
    "StreamQueue",
    "WriteBehindQueue",
    "WriteCall",
    "pack_call",
    "partition_names",
    "stream_name",
    "stream_order",
    "unpack_call",
]
