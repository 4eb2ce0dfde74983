"""Entry <-> bytes: one versioned msgpack envelope per value stored in Redis.

``[FORMAT, fresh_until_ms, stale_until_ms, load_time_ms, tags, versions, value]``: the times
are on the Redis server's clock (``stale_until_ms`` is also the key's own ``PXAT`` expiry), so
every host decides freshness from the same clock whatever its own wall clock says. Bytes that
do not decode, a wrong shape or an unknown version are a miss (``None``), never an error: the
next load overwrites them. No pickle: a shared Redis must not be a path to code execution.

``versions[i]`` is the version ``tags[i]`` had when the entry was written (versioned tags): a read
whose tag versions are no longer the current ones is a miss, so a lost tag is never a stale hit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from . import valuetypes
from ._compiled import speedups
from .errors import SerializationError as SerializationError  # where earlier releases had it

#: 2: tag versions added; 3: the value last, after the fields every read checks first (a
#: bulk read reads them without decoding them as objects). Entries of other formats are misses.
FORMAT = 3


class Envelope(NamedTuple):
    """A decoded shared entry (a tuple: decoding one is on the hot path of an L2 hit)."""

    value: Any
    fresh_until_ms: int
    stale_until_ms: int
    load_time_ms: int
    tags: tuple[str, ...]
    versions: tuple[str, ...] = ()  # the version of each tag when the entry was written


# The value types beyond msgpack's own live in ``valuetypes``; re-exported here, where earlier
# releases had them.
_packb, _unpackb, _decode = valuetypes.packb, valuetypes.unpackb, valuetypes.decode
_unpackb_raw = msgpack.unpackb
_DATACLASSES = valuetypes.REGISTERED
register_dataclass = valuetypes.register_dataclass
pack_value, unpack_value = valuetypes.pack_value, valuetypes.unpack_value


def pack(envelope: Envelope, where: str) -> bytes:
    body = [
        FORMAT,
        envelope.fresh_until_ms,
        envelope.stale_until_ms,
        envelope.load_time_ms,
        list(envelope.tags),
        list(envelope.versions),
        envelope.value,
    ]
    try:
        return _packb(body)
    except (TypeError, ValueError, OverflowError):
        pack_value(envelope.value, where)  # raises the error that names the type
        raise


_new = tuple.__new__  # NamedTuple's own __new__ is Python code; this skips it


_int = int
_list = list
#: ``fresh_values``' loop compiled, where the C extension is built, and how it calls msgpack.
_compiled_values = None if speedups is None else speedups.fresh_values
_UNPACK_NAMES, _UNPACK_VALUES = ("ext_hook", "strict_map_key"), (_decode, False)
#: How a compiled decoder decodes an envelope as ``body`` does (``_speedups``): msgpack's
#: ``unpackb``, its keyword arguments, the envelope's format.
UNPACKING = {
    "unpackb": _unpackb_raw,
    "kwnames": _UNPACK_NAMES,
    "kwvalues": _UNPACK_VALUES,
    "format": FORMAT,
}


def unpack(raw: bytes | None) -> Envelope | None:
    """The envelope in ``raw``, or None for a miss (absent, undecodable, unknown version).

    The caller tells "absent" (``raw is None``) from "undecodable" to count the latter. On the
    hot path of every shared-tier hit: one C call to decode, then as few Python steps as the
    checks allow.
    """
    if raw is None:
        return None
    try:
        body = _unpackb(raw)  # raw=False is msgpack's default
    except Exception:  # any malformed payload is a miss: ValueError, TypeError, ExtraData...
        return None
    return _checked(body)


def body(raw: bytes) -> list[Any] | None:
    """The checked envelope body in ``raw`` (index it with ``VALUE`` and ``FRESH``), or None.

    ``unpack`` without building the ``Envelope``, and with its checks inlined: this is all the
    Python a shared-tier hit runs besides the GET, and a call or an object less is measurable.
    """
    try:
        got = _unpackb_raw(raw, ext_hook=_decode, strict_map_key=False)
        version, fresh, stale, load_ms, tags, versions, _ = got
    except Exception:  # malformed, or not seven items: a miss
        return None
    if (
        type(got) is _list
        and version == FORMAT
        and type(fresh) is _int
        and type(stale) is _int
        and type(load_ms) is _int
        and type(tags) is _list
        and type(versions) is _list
        and ((not tags and not versions) or _checked(got) is not None)
    ):
        return got
    return None


#: Where a checked body (``body``, ``fresh_values``) holds the value, the server time it is
#: fresh until, and its tags.
FRESH, TAGS, VALUE = 1, 4, 6


def fresh_values(
    keys: list[str],
    raws: list[bytes | None],
    now_ms: float,
    found: dict[str, Any],
    kept: list[tuple[str, list[Any]]] | None = None,
) -> list[str]:
    """Decode an MGET reply: ``found[key]`` is set to the value of each entry fresh at server
    time ``now_ms``, and ``kept`` (if given) gets ``(key, body)`` for each of them (``envelope``
    makes one an ``Envelope``). Returns the keys whose bytes are not an envelope.

    For bulk reads, where per-value Python work is what separates the read from the raw MGET.
    Where the C extension is built, a compiled loop decodes each value alone and checks it as
    ``body`` does. In Python, one msgpack call per value costs about as much as the decoding
    itself, so the values are decoded from one buffer in one loop that also checks and sorts
    them. Each value must end exactly where its own bytes end, so a malformed value can never
    be read into its neighbours' bytes; at the first surprise, every value is decoded again on
    its own.
    """
    bad: list[str] = []
    if _compiled_values is not None:  # the same, each value decoded alone, in C (``_speedups``)
        compiled = _compiled_values(
            keys, raws, now_ms, found, kept, _unpackb_raw, _UNPACK_NAMES, _UNPACK_VALUES,
            FORMAT, _checked,
        )  # fmt: skip
        if compiled is not None:
            return compiled
        if kept is not None:
            kept.clear()
    try:
        data = b"".join([raw for raw in raws if raw is not None] if None in raws else raws)  # type: ignore[arg-type]
        decoder = msgpack.Unpacker(
            ext_hook=_decode, strict_map_key=False, max_buffer_size=max(len(data), 1)
        )
        decoder.feed(data)
        next_body, tell = decoder.unpack, decoder.tell
        int_, list_ = int, list  # locals: read once per value
        end = 0
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            end += len(raw)
            got = next_body()
            if tell() != end:
                raise ValueError("a value ran into its neighbour's bytes")
            # body(), inlined: a call per value would cost a tenth of the whole bulk read.
            if type(got) is not list_ or len(got) != 7:
                bad.append(key)
                continue
            version, fresh, stale, load_ms, tags, versions, value = got
            if (
                version == FORMAT
                and type(fresh) is int_
                and type(stale) is int_
                and type(load_ms) is int_
                and type(tags) is list_
                and type(versions) is list_
                and ((not tags and not versions) or _checked(got) is not None)
            ):
                if now_ms < fresh:
                    found[key] = value
                    if kept is not None:
                        kept.append((key, got))
            else:
                bad.append(key)
        return bad
    except Exception:  # decode every value on its own; what was found so far stays right
        pass
    bad.clear()
    if kept is not None:
        kept.clear()
    for key, raw in zip(keys, raws, strict=True):
        got = body(raw) if raw is not None else None
        if got is None:
            if raw is not None:
                bad.append(key)
        elif now_ms < got[FRESH]:
            found[key] = got[VALUE]
            if kept is not None:
                kept.append((key, got))
    return bad


def envelope(body: list[Any]) -> Envelope:
    """The ``Envelope`` of a checked body (``body``, ``fresh_values``)."""
    return _new(Envelope, (body[6], body[1], body[2], body[3], tuple(body[4]), tuple(body[5])))


def _checked(body: Any) -> Envelope | None:
    """The envelope a decoded body holds, or None when its shape or types are wrong."""
    if type(body) is not _list or len(body) != 7:
        return None
    version, fresh, stale, load_ms, tags, versions, value = body
    if (
        version != FORMAT
        or type(fresh) is not _int
        or type(stale) is not _int
        or type(load_ms) is not _int
        or type(tags) is not _list
        or type(versions) is not _list
    ):
        return None
    if tags:
        if len(versions) != len(tags):
            return None
        for tag, ver in zip(tags, versions, strict=True):
            if type(tag) is not str or type(ver) is not str:
                return None
        return _new(Envelope, (value, fresh, stale, load_ms, tuple(tags), tuple(versions)))
    if versions:
        return None
    return _new(Envelope, (value, fresh, stale, load_ms, (), ()))
