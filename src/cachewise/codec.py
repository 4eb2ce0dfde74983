"""Entry <-> bytes: one versioned msgpack envelope per value stored in Redis.

``[FORMAT, value, fresh_until_ms, stale_until_ms, load_time_ms, tags]``: the times are on the
Redis server's clock (``stale_until_ms`` is also the key's own ``PXAT`` expiry), so every host
decides freshness from the same clock whatever its own wall clock says. Bytes that do not decode,
a wrong shape or an unknown version are a miss (``None``), never an error: the next load
overwrites them. No pickle: a shared Redis must not be a path to code execution.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from .errors import CacheError

FORMAT = 1


class SerializationError(CacheError, TypeError):
    """A value msgpack cannot encode; nothing was stored."""


class Envelope(NamedTuple):
    """A decoded shared entry (a tuple: decoding one is on the hot path of an L2 hit)."""

    value: Any
    fresh_until_ms: int
    stale_until_ms: int
    load_time_ms: int
    tags: tuple[str, ...]


def pack_value(value: Any, where: str) -> bytes:
    """Encode ``value`` alone (to fail early, before anything is stored)."""
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"cannot store the value of {where} in Redis: {_culprit(value)} is not supported "
            f"by the msgpack codec ({exc})"
        ) from None


def _culprit(value: Any) -> str:
    """Name the innermost type msgpack refuses, for the error message."""
    seen: list[Any] = [value]
    while seen:
        item = seen.pop()
        if isinstance(item, (list, tuple)):
            seen.extend(item)
        elif isinstance(item, dict):
            seen.extend(item.keys())
            seen.extend(item.values())
        elif not isinstance(item, (str, bytes, bytearray, int, float, bool, type(None))):
            return f"{type(item).__module__}.{type(item).__qualname__}"
    return type(value).__qualname__


def pack(envelope: Envelope, where: str) -> bytes:
    body = [
        FORMAT,
        envelope.value,
        envelope.fresh_until_ms,
        envelope.stale_until_ms,
        envelope.load_time_ms,
        list(envelope.tags),
    ]
    try:
        return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError):
        pack_value(envelope.value, where)  # raises the error that names the type
        raise


_unpackb = msgpack.unpackb
_new = tuple.__new__  # NamedTuple's own __new__ is Python code; this skips it


def unpack(raw: bytes | None) -> Envelope | None:
    """The envelope in ``raw``, or None for a miss (absent, undecodable, unknown version).

    The caller tells "absent" (``raw is None``) from "undecodable" to count the latter.
    """
    if raw is None:
        return None
    try:
        body = _unpackb(raw, strict_map_key=False)  # raw=False is msgpack's default
        if type(body) is not list or len(body) != 6:
            return None
        version, value, fresh, stale, load_ms, tags = body
        if version != FORMAT:
            return None
        if not (type(fresh) is int and type(stale) is int and type(load_ms) is int):
            return None
        if tags and not all(type(tag) is str for tag in tags):
            return None
        return _new(Envelope, (value, fresh, stale, load_ms, tuple(tags) if tags else ()))
    except Exception:  # any malformed payload is a miss: ValueError, TypeError, ExtraData...
        return None
