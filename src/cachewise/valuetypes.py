"""The value types beyond msgpack's own, as msgpack extension types.

msgpack knows None, bool, int, float, str, bytes, list and dict. The types users cache beside
those travel as extension types, so they come back as what they were: a tuple stays a tuple, a
datetime keeps its time zone, an Enum member is the member. Subclasses of the builtins
(OrderedDict, namedtuple) come back as the builtin. Dataclasses, pydantic models and Enums come
back only in a process where their class is registered (``register_type``, by encoding one, or
by a cached function's return annotation): decoding never imports a module or builds a class
named by the bytes, so a shared Redis is not a path to code execution. A value a serializer of
its own encoded (``serializers``) travels as bytes tagged with that serializer's name.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import typing
import uuid
import zoneinfo
from collections.abc import Callable
from typing import Any

import msgpack

from .errors import SerializationError

_TUPLE, _SET, _FROZENSET, _DATETIME, _DATE, _TIME, _TIMEDELTA, _DECIMAL, _UUID, _DATACLASS = range(
    1, 11
)
#: A datetime in a named zone (``zoneinfo``): its wall time, fold and zone name, so it comes back
#: in that zone (a fixed offset would compare unequal in a gap or a fold, PEP 495).
_ZONED_DATETIME = 11
#: Bytes a serializer of its own made: ``[its name, the bytes]``.
_SERIALIZED = 12
#: A pydantic model: ``[class name, model_dump()]``, rebuilt with ``model_validate``.
_MODEL = 13
#: An Enum member: ``[class name, its value]``.
_ENUM = 14

#: Classes whose values this process decodes, by ``module.qualname``.
REGISTERED: dict[str, type] = {}
#: Serializers of their own, by name (``serializers.Serializer`` registers itself).
SERIALIZERS: dict[str, Any] = {}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_model(cls: type) -> bool:
    """A pydantic v2 model class, told by its API (pydantic stays an optional dependency)."""
    return callable(getattr(cls, "model_validate", None)) and callable(
        getattr(cls, "model_dump", None)
    )


def register_type(cls: type) -> type:
    """Let values of ``cls`` (a dataclass, a pydantic model or an Enum) be decoded in this
    process; usable as a class decorator."""
    if not isinstance(cls, type) or not (
        dataclasses.is_dataclass(cls) or _is_model(cls) or issubclass(cls, enum.Enum)
    ):
        raise TypeError(
            f"register_type() takes a dataclass, a pydantic model or an Enum class, not {cls!r}"
        )
    REGISTERED[_name(cls)] = cls
    return cls


def register_dataclass(cls: type) -> type:
    """Let values of the dataclass ``cls`` be decoded in this process (usable as a decorator)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"register_dataclass() takes a dataclass, not {cls!r}")
    return register_type(cls)


def register_annotation(fn: Callable[..., Any]) -> None:
    """Register the classes a function's return annotation names (``Model``, ``list[Model]``,
    ``Model | None``...), so that a process that only reads them decodes them. An annotation
    that does not resolve is left alone: registering by encoding still works."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # forward references to names not importable here, and the like
        return
    seen = [hints.get("return")]
    while seen:
        hint = seen.pop()
        if isinstance(hint, type) and (
            dataclasses.is_dataclass(hint) or _is_model(hint) or issubclass(hint, enum.Enum)
        ):
            REGISTERED.setdefault(_name(hint), hint)
        seen.extend(typing.get_args(hint))


def pooled_packb(make: Callable[[], msgpack.Packer]) -> Callable[[Any], bytes]:
    """A ``msgpack.packb`` that keeps the packers ``make`` makes, rather than making one (its
    options parsed, its buffer allocated) on every call: 670 ns for an envelope that a kept
    packer packs in 180, and a write packs two or three things.

    A packer's buffer serves one ``pack`` at a time, so each call takes one off the free list
    and puts it back (``pop`` and ``append`` are atomic under the GIL): another thread, or a
    nested call (``_encode`` packs the parts of an extension type from inside a ``pack``),
    takes another or makes one. The list holds as many as ever ran at once.
    """
    free: list[msgpack.Packer] = []

    def packb(value: Any) -> bytes:
        try:
            packer = free.pop()
        except IndexError:
            packer = make()
        try:
            return packer.pack(value)  # type: ignore[no-any-return]  # buffer emptied, raising or not
        finally:
            free.append(packer)

    return packb


packb = pooled_packb(lambda: msgpack.Packer(default=_encode, use_bin_type=True, strict_types=True))


def unpackb(raw: bytes) -> Any:
    return msgpack.unpackb(raw, ext_hook=decode, strict_map_key=False)


def _known(cls: type) -> str:
    name = _name(cls)
    REGISTERED.setdefault(name, cls)
    return name


def _encode(obj: Any) -> Any:
    """msgpack's ``default``: an extension type, the builtin a subclass stands for, or TypeError."""
    if isinstance(obj, enum.Enum):
        return msgpack.ExtType(_ENUM, packb([_known(type(obj)), obj.value]))
    if isinstance(obj, tuple):
        return msgpack.ExtType(_TUPLE, packb(list(obj)))
    if isinstance(obj, frozenset):
        return msgpack.ExtType(_FROZENSET, packb(list(obj)))
    if isinstance(obj, set):
        return msgpack.ExtType(_SET, packb(list(obj)))
    if isinstance(obj, datetime.datetime):
        zone = obj.tzinfo
        if isinstance(zone, zoneinfo.ZoneInfo) and zone.key:
            wall = obj.replace(tzinfo=None).isoformat()
            return msgpack.ExtType(_ZONED_DATETIME, packb([wall, obj.fold, zone.key]))
        return msgpack.ExtType(_DATETIME, obj.isoformat().encode())
    if isinstance(obj, datetime.date):
        return msgpack.ExtType(_DATE, obj.isoformat().encode())
    if isinstance(obj, datetime.time):
        return msgpack.ExtType(_TIME, obj.isoformat().encode())
    if isinstance(obj, datetime.timedelta):
        return msgpack.ExtType(_TIMEDELTA, packb([obj.days, obj.seconds, obj.microseconds]))
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(_DECIMAL, str(obj).encode())
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_UUID, obj.bytes)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return msgpack.ExtType(_DATACLASS, packb([_known(type(obj)), fields]))
    if _is_model(type(obj)):
        return msgpack.ExtType(_MODEL, packb([_known(type(obj)), obj.model_dump()]))
    builtins: tuple[Callable[[Any], Any], ...] = (bool, int, float, str, bytes, list, dict)
    for builtin in builtins:
        if isinstance(obj, builtin):  # type: ignore[arg-type]
            return builtin(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"can not serialize {type(obj).__qualname__!r} object")


def _registered(name: str) -> type:
    cls = REGISTERED.get(name)
    if cls is None:
        raise ValueError(f"{name} is not registered in this process")
    return cls


def decode(code: int, data: bytes) -> Any:
    """msgpack's ``ext_hook``; raises (making the whole entry a miss) on anything unknown."""
    if code == _TUPLE:
        return tuple(unpackb(data))
    if code == _SET:
        return set(unpackb(data))
    if code == _FROZENSET:
        return frozenset(unpackb(data))
    if code == _DATETIME:
        return datetime.datetime.fromisoformat(data.decode())
    if code == _ZONED_DATETIME:
        wall, fold, key = unpackb(data)
        # ZoneInfo refuses keys that are not normalized relative names (no path escapes).
        return datetime.datetime.fromisoformat(wall).replace(
            tzinfo=zoneinfo.ZoneInfo(key), fold=fold
        )
    if code == _DATE:
        return datetime.date.fromisoformat(data.decode())
    if code == _TIME:
        return datetime.time.fromisoformat(data.decode())
    if code == _TIMEDELTA:
        days, seconds, micros = unpackb(data)
        return datetime.timedelta(days, seconds, micros)
    if code == _DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _UUID:
        return uuid.UUID(bytes=data)
    if code == _DATACLASS:
        name, fields = unpackb(data)
        return _registered(name)(**fields)
    if code == _MODEL:
        name, fields = unpackb(data)
        return _registered(name).model_validate(fields)  # type: ignore[attr-defined]
    if code == _ENUM:
        name, value = unpackb(data)
        return _registered(name)(value)
    if code == _SERIALIZED:
        name, raw = unpackb(data)
        serializer = SERIALIZERS.get(name)
        if serializer is None:
            raise ValueError(f"serializer {name!r} is not in use in this process")
        return serializer.loads(raw)
    raise ValueError(f"unknown extension type {code}")


def serialized(name: str, raw: bytes) -> msgpack.ExtType:
    """What a serializer of its own made, as the envelope carries it."""
    return msgpack.ExtType(_SERIALIZED, packb([name, raw]))


def pack_value(value: Any, where: str) -> bytes:
    """Encode ``value`` alone (to fail early, before anything is stored)."""
    try:
        return packb(value)
    except OverflowError:
        raise SerializationError(
            f"cannot cache the value of {where}: it holds an integer outside "
            "-2**63..2**64-1, which msgpack cannot encode (store it as a str or Decimal)"
        ) from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"cannot cache the value of {where}: {culprit(value)} is not supported by the "
            f"msgpack serializer ({exc}); supported: None, bool, int, float, str, bytes, list, "
            "tuple, dict, set, frozenset, datetime, date, time, timedelta, Decimal, UUID, Enum, "
            "dataclasses, pydantic models (or choose another serializer=)"
        ) from None


def unpack_value(raw: bytes) -> Any:
    """Decode what ``pack_value`` encoded."""
    return unpackb(raw)


_SUPPORTED = (
    str, bytes, bytearray, int, float, bool, type(None), datetime.date, datetime.time,
    datetime.timedelta, decimal.Decimal, uuid.UUID, enum.Enum,
)  # fmt: skip


def culprit(value: Any) -> str:
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
        elif _is_model(type(item)):
            seen.extend(vars(item).values())
        elif not isinstance(item, _SUPPORTED):
            return f"{type(item).__module__}.{type(item).__qualname__}"
    return type(value).__qualname__
