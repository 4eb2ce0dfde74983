"""What the parts of a durable queue (loss detection, the server check, dead letters) may use of
the queue they serve: its names, its Redis, and its state under ``cond``. They name this, not
``StreamQueue``, so that the queue imports its parts and never the other way round."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..engine import Engine
    from ..options import WriteBehind
    from ..redis import Backend
    from .types import FlushReport, PendingWrite


class StreamHost(Protocol):
    """A writer's durable queue, as its parts see it."""

    #: The consumer group every process of the writer reads the stream through.
    GROUP: str
    where: str
    options: WriteBehind
    engine: Engine
    #: Where the queue lives, and where cached values live (the same Redis unless
    #: ``write_behind_redis`` gives the queue its own).
    backend: Backend
    cache_backend: Backend

    @property
    def split(self) -> bool: ...

    stream: str
    #: The record of each key's newest write in the stream.
    newest: str
    dead_stream: str
    epoch_key: str
    cond: threading.Condition
    pending: dict[str, PendingWrite]
    #: Stream ids held by this process (queued or being written).
    known: set[str]
    totals: FlushReport

    def kick(self) -> None: ...
