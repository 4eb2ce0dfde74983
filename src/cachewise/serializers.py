"""How values become bytes in Redis: ``serializer=`` on ``Cache`` and on ``cached``.

The default, msgpack (``valuetypes``), keeps the types people return (tuples, sets, datetimes,
Decimal, UUID, Enums, dataclasses, pydantic models). ``"json"`` writes plain JSON, readable by
other languages. A pair of the user's own (any object with ``dumps`` and ``loads``, e.g.
``orjson``) is used as given. ``"pickle"`` only when named: whoever can write to the Redis can
then run code in every process that reads it.

Whatever the serializer, its bytes sit inside cachewise's own envelope (deadlines, tags), tagged
with the serializer's name, so processes decode them without being told which function wrote
them; a name this process does not use is a miss, never a guess. A value the serializer refuses
is a ``SerializationError`` when the value is stored, with Redis or without it.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import pickle
import uuid
from collections.abc import Callable
from typing import Any

from . import valuetypes
from .errors import ConfigTypeError, ConfigValueError, SerializationError


class Serializer:
    """A named ``dumps``/``loads`` pair. ``dumps`` may return ``str`` (encoded as UTF-8)."""

    __slots__ = ("dumps", "loads", "name")

    def __init__(
        self, name: str, dumps: Callable[[Any], bytes | str], loads: Callable[[bytes], Any]
    ) -> None:
        self.name, self.dumps, self.loads = name, dumps, loads

    def encode(self, value: Any, where: str) -> Any:
        """``value`` as the envelope carries it; a refusal is a ``SerializationError``."""
        try:
            raw = self.dumps(value)
        except Exception as exc:
            raise SerializationError(
                f"cannot cache the value of {where}: the {self.name} serializer refused "
                f"{valuetypes.culprit(value)} ({exc!r})"
            ) from None
        if isinstance(raw, str):
            raw = raw.encode()
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise SerializationError(
                f"cannot cache the value of {where}: the {self.name} serializer's dumps() "
                f"returned {type(raw).__name__}, not bytes or str"
            )
        return valuetypes.serialized(self.name, bytes(raw))

    def __repr__(self) -> str:
        return f"Serializer({self.name!r})"


def _json_default(obj: Any) -> Any:
    """What JSON has no type for, as the nearest JSON (the type is not kept: it is JSON)."""
    if callable(getattr(obj, "model_dump", None)):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, datetime.date | datetime.time):
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal | uuid.UUID | datetime.timedelta):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, bytes):
        raise TypeError("bytes have no JSON form")
    raise TypeError(f"{type(obj).__qualname__} has no JSON form")


JSON = Serializer(
    "json",
    lambda value: json.dumps(value, default=_json_default, separators=(",", ":")).encode(),
    json.loads,
)
#: Only when named: unpickling what a shared Redis holds runs whatever code its writer chose.
PICKLE = Serializer(
    "pickle", lambda value: pickle.dumps(value, pickle.HIGHEST_PROTOCOL), pickle.loads
)
_BUILTIN = {"json": JSON, "pickle": PICKLE}


def resolve(spec: Any, where: str) -> Serializer | None:
    """The serializer ``serializer=`` names (None: msgpack, the default), registered for
    decoding in this process. A bad one is a clear configuration error naming ``where``."""
    if spec is None or spec == "msgpack":
        return None
    if isinstance(spec, Serializer):
        chosen = spec
    elif isinstance(spec, str):
        if spec not in _BUILTIN:
            raise ConfigValueError(
                f"serializer= of {where} must be 'msgpack', 'json', 'pickle' or an object with "
                f"dumps() and loads(), not {spec!r}"
            )
        chosen = _BUILTIN[spec]
    else:
        missing = [m for m in ("dumps", "loads") if not callable(getattr(spec, m, None))]
        if missing:
            raise ConfigTypeError(
                f"serializer= of {where} must have callable dumps() and loads(): "
                f"{spec!r} lacks {' and '.join(m + '()' for m in missing)}"
            )
        # Named after the module or class it comes from, apart from the built-in names.
        name = getattr(spec, "__name__", None) or type(spec).__qualname__
        chosen = Serializer(f"{name}()", spec.dumps, spec.loads)
    known: Serializer = valuetypes.SERIALIZERS.setdefault(chosen.name, chosen)
    if known is not chosen and (known.dumps, known.loads) != (chosen.dumps, chosen.loads):
        raise ConfigValueError(
            f"serializer= of {where}: another serializer named {chosen.name!r} is in use in "
            "this process; name this one apart (cachewise.Serializer(name, dumps, loads))"
        )
    return known


_PLAIN = frozenset({str, bytes, float, bool, type(None)})


def check(serializer: Serializer | None, value: Any, where: Callable[[], str]) -> None:
    """Raise the ``SerializationError`` storing ``value`` in Redis would: the same error in
    every configuration, so a test run without Redis fails where production would.
    ``where()`` names the entry (made only when there is something to try)."""
    if serializer is None:
        kind = type(value)
        if kind in _PLAIN or (kind is int and -(2**63) <= value < 2**64):
            return  # msgpack's own scalars: nothing to try (the in-process miss path)
        valuetypes.pack_value(value, where())
    else:
        serializer.encode(value, where())
