"""Entry <-> bytes: one versioned msgpack envelope per value stored in Redis.

``[FORMAT, value, fresh_until_ms, stale_until_ms, load_time_ms, tags, versions]``: the times
are on the Redis server's clock (``stale_until_ms`` is also the key's own ``PXAT`` expiry), so
every host decides freshness from the same clock whatever its own wall clock says. Bytes that
do not decode, a wrong shape or an unknown version are a miss (``None``), never an error: the
next load overwrites them. No pickle: a shared Redis must not be a path to code execution.

``versions[i]`` is the version ``tags[i]`` had when the entry was written (versioned tags): a read
whose tag versions are no longer the current ones is a miss, so a lost tag is never a stale hit.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import uuid
import zoneinfo
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from .errors import CacheError

FORMAT = 2  # 2: tag versions added; entries of format 1 are misses


class SerializationError(CacheError, TypeError):
    """A value msgpack cannot encode; nothing was stored."""


class Envelope(NamedTuple):
    """A decoded shared entry (a tuple: decoding one is on the hot path of an L2 hit)."""

    value: Any
    fresh_until_ms: int
    stale_until_ms: int
    load_time_ms: int
    tags: tuple[str, ...]
    versions: tuple[str, ...] = ()  # the version of each tag when the entry was written


# -- the types beyond msgpack's own, as extension types -----------------------------------------
#
# msgpack knows None, bool, int, float, str, bytes, list and dict. The types users cache beside
# those travel as extension types, so they come back as what they were: a tuple stays a tuple,
# a datetime keeps its time zone. Subclasses of the builtins (IntEnum, StrEnum, OrderedDict,
# namedtuple) come back as the builtin. Dataclasses come back only in a process where their class
# is registered (``register_dataclass``, or by encoding one): decoding never imports a module or
# builds a class named by the bytes, so a shared Redis is not a path to code execution.

_TUPLE, _SET, _FROZENSET, _DATETIME, _DATE, _TIME, _TIMEDELTA, _DECIMAL, _UUID, _DATACLASS = range(
    1, 11
)
#: A datetime in a named zone (``zoneinfo``): its wall time, fold and zone name, so it comes back
#: in that zone (a fixed offset would compare unequal in a gap or a fold, PEP 495).
_ZONED_DATETIME = 11
_DATACLASSES: dict[str, type] = {}


def register_dataclass(cls: type) -> type:
    """Let values of the dataclass ``cls`` be decoded in this process (usable as a decorator)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"register_dataclass() takes a dataclass, not {cls!r}")
    _DATACLASSES[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _packb(value: Any) -> bytes:
    return msgpack.packb(value, default=_encode, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]


def _encode(obj: Any) -> Any:
    """msgpack's ``default``: an extension type, the builtin a subclass stands for, or TypeError."""
    if isinstance(obj, tuple):
        return msgpack.ExtType(_TUPLE, _packb(list(obj)))
    if isinstance(obj, frozenset):
        return msgpack.ExtType(_FROZENSET, _packb(list(obj)))
    if isinstance(obj, set):
        return msgpack.ExtType(_SET, _packb(list(obj)))
    if isinstance(obj, datetime.datetime):
        zone = obj.tzinfo
        if isinstance(zone, zoneinfo.ZoneInfo) and zone.key:
            wall = obj.replace(tzinfo=None).isoformat()
            return msgpack.ExtType(_ZONED_DATETIME, _packb([wall, obj.fold, zone.key]))
        return msgpack.ExtType(_DATETIME, obj.isoformat().encode())
    if isinstance(obj, datetime.date):
        return msgpack.ExtType(_DATE, obj.isoformat().encode())
    if isinstance(obj, datetime.time):
        return msgpack.ExtType(_TIME, obj.isoformat().encode())
    if isinstance(obj, datetime.timedelta):
        return msgpack.ExtType(_TIMEDELTA, _packb([obj.days, obj.seconds, obj.microseconds]))
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(_DECIMAL, str(obj).encode())
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_UUID, obj.bytes)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        name = f"{cls.__module__}.{cls.__qualname__}"
        _DATACLASSES.setdefault(name, cls)
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return msgpack.ExtType(_DATACLASS, _packb([name, fields]))
    builtins: tuple[Callable[[Any], Any], ...] = (bool, int, float, str, bytes, list, dict)
    for builtin in builtins:
        if isinstance(obj, builtin):  # type: ignore[arg-type]
            return builtin(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"can not serialize {type(obj).__qualname__!r} object")


def _unpackb(raw: bytes) -> Any:
    return msgpack.unpackb(raw, ext_hook=_decode, strict_map_key=False)


_unpackb_raw = msgpack.unpackb


def _decode(code: int, data: bytes) -> Any:
    """msgpack's ``ext_hook``; raises (making the whole entry a miss) on anything unknown."""
    if code == _TUPLE:
        return tuple(_unpackb(data))
    if code == _SET:
        return set(_unpackb(data))
    if code == _FROZENSET:
        return frozenset(_unpackb(data))
    if code == _DATETIME:
        return datetime.datetime.fromisoformat(data.decode())
    if code == _ZONED_DATETIME:
        wall, fold, key = _unpackb(data)
        # ZoneInfo refuses keys that are not normalized relative names (no path escapes).
        return datetime.datetime.fromisoformat(wall).replace(
            tzinfo=zoneinfo.ZoneInfo(key), fold=fold
        )
    if code == _DATE:
        return datetime.date.fromisoformat(data.decode())
    if code == _TIME:
        return datetime.time.fromisoformat(data.decode())
    if code == _TIMEDELTA:
        days, seconds, micros = _unpackb(data)
        return datetime.timedelta(days, seconds, micros)
    if code == _DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _UUID:
        return uuid.UUID(bytes=data)
    if code == _DATACLASS:
        name, fields = _unpackb(data)
        cls = _DATACLASSES.get(name)
        if cls is None:
            raise ValueError(f"dataclass {name} is not registered in this process")
        return cls(**fields)
    raise ValueError(f"unknown extension type {code}")


def pack_value(value: Any, where: str) -> bytes:
    """Encode ``value`` alone (to fail early, before anything is stored)."""
    try:
        return _packb(value)
    except OverflowError:
        raise SerializationError(
            f"cannot store the value of {where} in Redis: it holds an integer outside "
            "-2**63..2**64-1, which msgpack cannot encode (store it as a str or Decimal)"
        ) from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"cannot store the value of {where} in Redis: {_culprit(value)} is not supported "
            f"by the codec ({exc}); supported: None, bool, int, float, str, bytes, list, tuple, "
            "dict, set, frozenset, datetime, date, time, timedelta, Decimal, UUID, dataclasses"
        ) from None


def unpack_value(raw: bytes) -> Any:
    """Decode what ``pack_value`` encoded."""
    return _unpackb(raw)


_SUPPORTED = (
    str, bytes, bytearray, int, float, bool, type(None), datetime.date, datetime.time,
    datetime.timedelta, decimal.Decimal, uuid.UUID,
)  # fmt: skip


def _culprit(value: Any) -> str:
    """Name the innermost type the codec refuses, for the error message."""
    seen: list[Any] = [value]
    while seen:
        item = seen.pop()
        if isinstance(item, (list, tuple, set, frozenset)):
            seen.extend(item)
        elif isinstance(item, dict):
            seen.extend(item.keys())
            seen.extend(item.values())
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            seen.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        elif not isinstance(item, _SUPPORTED):
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
        list(envelope.versions),
    ]
    try:
        return _packb(body)
    except (TypeError, ValueError, OverflowError):
        pack_value(envelope.value, where)  # raises the error that names the type
        raise


_new = tuple.__new__  # NamedTuple's own __new__ is Python code; this skips it


_int = int
_list = list


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
        version, _, fresh, stale, load_ms, tags, versions = got
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
        and (not tags or _checked(got) is not None)
    ):
        return got
    return None


#: Where a checked body (``body``, ``fresh_values``) holds the value, the server time it is
#: fresh until, and its tags.
VALUE, FRESH, TAGS = 1, 2, 5


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

    For bulk reads, where per-value Python work is what separates the read from the raw MGET:
    one msgpack call per value costs about as much as the decoding itself, so the values are
    decoded from one buffer in one loop that also checks and sorts them. Each value must end
    exactly where its own bytes end, so a malformed value can never be read into its
    neighbours' bytes; at the first surprise, every value is decoded again on its own.
    """
    bad: list[str] = []
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
            # body(), inlined: a call per value would cost a tenth of the whole bulk read. Seven
            # names unpack from a list, a tuple, a dict, a str or bytes; only a list can end
            # with a list.
            try:
                version, value, fresh, stale, load_ms, tags, versions = got
            except (TypeError, ValueError):
                bad.append(key)
                continue
            if (
                version == FORMAT
                and type(fresh) is int_
                and type(stale) is int_
                and type(load_ms) is int_
                and type(tags) is list_
                and type(versions) is list_
                and (not tags or _checked(got) is not None)
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
    return _new(Envelope, (body[1], body[2], body[3], body[4], tuple(body[5]), tuple(body[6])))


def _checked(body: Any) -> Envelope | None:
    """The envelope a decoded body holds, or None when its shape or types are wrong."""
    if type(body) is not _list or len(body) != 7:
        return None
    version, value, fresh, stale, load_ms, tags, versions = body
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
