"""A Redis stream queue's dead letters: read them, send them back to the queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._drivers import Plan
from ..redis import (
    RedisCall,
    RunScript,
    text,
)
from .types import DeadLetter, WriteCall, unpack_call

if TYPE_CHECKING:
    from .host import StreamHost


def read(queue: StreamHost) -> Plan[list[DeadLetter]]:
    """The dead letters of a writer, from its dead-letter stream."""
    found = yield RedisCall(queue.backend, "xrange", queue.dead_stream, "-", "+")
    return [letter(queue.where, entry_id, fields)[0] for entry_id, fields in found]


def letter(writer: str, entry_id: Any, fields: dict[bytes, Any]) -> tuple[DeadLetter, bool]:
    """A dead letter from its entry in the dead-letter stream, and whether its call decoded
    (one that does not comes with no arguments)."""
    try:
        call, decoded = unpack_call(fields[b"a"]), True
    except Exception:
        call, decoded = WriteCall((), {}), False
    dead = DeadLetter(
        writer, text(fields[b"k"]), call.args, call.kwargs, int(fields[b"n"]),
        text(fields[b"e"]), text(entry_id),
    )  # fmt: skip
    return dead, decoded


def replay(queue: StreamHost, letters: list[DeadLetter]) -> Plan[int]:
    """Move dead letters back to the writer's stream, marked as replays; how many moved."""
    ids = [dead.id for dead in letters if dead.writer == queue.where and dead.id]
    if not ids:
        return 0
    moved = yield RunScript(queue.backend, "replay", [queue.stream, queue.dead_stream], ids)
    queue.kick()
    return int(moved)
