"""The events processes send each other over pub/sub, as typed values.

Their wire form, a msgpack list led by a letter code and the sender's origin (``["f", origin,
key, value]``...), is written and read here only; everywhere else an event is one of the
classes below. Bytes that are not an event decode to None (logged by the listener, never
raised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from .valuetypes import pooled_packb

__all__ = ["Event", "Fill", "Invalidated", "Released", "Reset", "decode", "encode"]


@dataclass(frozen=True, slots=True)
class Fill:
    """A process filled or wrote ``key``; ``value`` is the stored envelope, or None when it was
    too large to travel with the event (copies elsewhere are dropped instead of replaced)."""

    origin: str
    key: str
    value: bytes | None = None


@dataclass(frozen=True, slots=True)
class Released:
    """A load gave its lease of ``key`` back without a fill: its waiters look again."""

    origin: str
    key: str


@dataclass(frozen=True, slots=True)
class Invalidated:
    """Keys and tags were invalidated: copies of them (and of the tags' members) are dropped."""

    origin: str
    keys: tuple[str, ...]
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reset:
    """A process lost track of its invalidations (an outage longer than its backlog): every
    process empties its L1."""

    origin: str


Event = Fill | Released | Invalidated | Reset


def encode(event: Event) -> bytes:
    """The wire form of ``event``."""
    body: list[Any]
    if isinstance(event, Fill):
        body = ["f", event.origin, event.key]
        if event.value is not None:
            body.append(event.value)
    elif isinstance(event, Released):
        body = ["l", event.origin, event.key]
    elif isinstance(event, Invalidated):
        body = ["i", event.origin, list(event.keys), list(event.tags)]
    else:
        body = ["r", event.origin]
    return _packb(body)


_packb = pooled_packb(lambda: msgpack.Packer(use_bin_type=True))


def decode(data: bytes) -> Event | None:
    """The event in ``data``, or None when it is not one (a wrong shape, an unknown code)."""
    try:
        body = msgpack.unpackb(data, raw=False)
    except Exception:
        return None
    if not isinstance(body, list) or len(body) < 2 or not isinstance(body[1], str):
        return None
    code, origin, fields = body[0], body[1], body[2:]
    if code == "f" and fields and isinstance(fields[0], str):
        value = fields[1] if len(fields) > 1 and isinstance(fields[1], bytes) else None
        return Fill(origin, fields[0], value)
    if code == "l" and fields and isinstance(fields[0], str):
        return Released(origin, fields[0])
    if code == "i" and len(fields) >= 2 and _strings(fields[0]) and _strings(fields[1]):
        return Invalidated(origin, tuple(fields[0]), tuple(fields[1]))
    if code == "r":
        return Reset(origin)
    return None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
