"""The values of write-behind: a writer's call, a queued write, a dead letter, a flush's
report, the options; and how a writer and its calls are named and stored in Redis."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from .. import codec
from ..errors import (
    ConfigValueError,
)

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


Outcome = Literal["written", "retry", "superseded", "dead"]


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


def partition_names(writer: str, partitions: int) -> list[str]:
    """The names of a writer's queue partitions: the writer's own name when it has one (the
    layout of a queue that is not split), else ``<writer>/<n>``, each its own hash tag."""
    return [writer] if partitions == 1 else [f"{writer}/{n}" for n in range(partitions)]
