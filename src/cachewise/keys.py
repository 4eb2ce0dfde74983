"""Cache keys: a canonical, process-independent encoding of a call's arguments.

Rules of this module:

1. The same call gives the same key in every process and every run: no ``hash()``, no ``id()``,
   no ``repr`` that shows a memory address. ``f(1)``, ``f(a=1)`` and ``f(1, b=0)`` (``b``'s
   default) are one call and one key.
2. Different values give different keys: every value is encoded with its type where JSON alone
   would confuse two of them (``1`` vs ``True``, a tuple vs a list, ``"1"`` vs ``1``).
3. An argument that cannot be encoded stably is a ``KeyBuildError`` telling the user to pass
   ``key=`` or to define ``__cache_key__()``; it never runs uncached or falls back to ``str()``.

Why hand-written: cachetools' ``hashkey`` and ``functools`` keys are built on ``hash()``, which is
salted per process for ``str`` and so cannot name a Redis key shared by a fleet.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import inspect
import json
import uuid
from collections.abc import Callable, Hashable
from typing import Any

from .errors import KeyBuildError

__all__ = ["ArgKeyer", "canonical", "encode"]

#: Argument encodings longer than this are replaced by their SHA-256, so Redis keys stay short.
MAX_ARGS_CHARS = 512

_MISSING: Any = object()


class _Unstable(Exception):
    """Raised inside ``canonical`` for a value with no stable representation."""

    def __init__(self, value: Any) -> None:
        super().__init__(type(value))
        self.value = value


def _type_name(value: Any) -> str:
    tp = type(value)
    return f"{tp.__module__}.{tp.__qualname__}"


def canonical(value: Any) -> Any:
    """Return a JSON-ready structure that identifies ``value`` across processes and runs."""
    tp = type(value)
    if value is None or tp is bool or tp is int or tp is str:
        return value
    if tp is float:
        # JSON keeps 1.0 apart from 1; NaN and infinities are spelled out to stay valid JSON.
        return (
            value
            if value == value and value not in (float("inf"), float("-inf"))
            else {"~f": repr(value)}
        )
    custom = getattr(value, "__cache_key__", None)
    if custom is not None and callable(custom):
        return {"~k": _type_name(value), "v": canonical(custom())}
    if isinstance(value, enum.Enum):
        return {"~e": _type_name(value), "v": canonical(value.value)}
    if tp is list:
        return [canonical(v) for v in value]
    if isinstance(value, tuple):
        items = [canonical(v) for v in value]
        return {"~t": items} if tp is tuple else {"~nt": _type_name(value), "v": items}
    if isinstance(value, dict):
        pairs = [(encode(canonical(k)), canonical(v)) for k, v in value.items()]
        pairs.sort(key=lambda kv: kv[0])
        return {"~d": pairs}
    if isinstance(value, (set, frozenset)):
        return {"~s": sorted(encode(canonical(v)) for v in value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"~b": bytes(value).hex()}
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal)):
        return {"~v": _type_name(value), "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {"~u": str(value)}
    if isinstance(value, (int, str, float)):  # subclasses not caught above (IntFlag handled)
        return {"~v": _type_name(value), "v": canonical(tp.__mro__[-2](value))}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"~dc": _type_name(value), "v": fields}
    # Objects whose class defines its own repr (Path, Fraction, IPv4Address...) are identified by
    # it, unless that repr is the default one with a memory address in it.
    if tp.__repr__ is not object.__repr__:  # type: ignore[comparison-overlap]
        text = repr(value)
        if " at 0x" not in text and " object at " not in text:
            return {"~r": _type_name(value), "v": text}
    raise _Unstable(value)


def encode(structure: Any) -> str:
    """Serialize a ``canonical`` structure to its one textual form."""
    return json.dumps(structure, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _shorten(text: str) -> str:
    if len(text) <= MAX_ARGS_CHARS:
        return text
    return "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _is_method(params: list[inspect.Parameter]) -> bool:
    return (
        bool(params)
        and params[0].name in ("self", "cls")
        and params[0].kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    )


class _Self:
    """Stands for an instance that defines ``__cache_key__`` in a normalized argument tuple."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key


class ArgKeyer:
    """Turns a call of one function into its in-process key and its canonical argument string.

    ``l1_key(args, kwargs)`` is what the in-process tier is indexed by: the normalized argument
    tuple itself when every argument is an exact ``int`` or ``str`` (hashing those is as cheap as
    it gets and they cannot be confused with each other), otherwise the canonical string. The two
    kinds never compare equal (a tuple is never a str), and each maps to exactly one
    ``args_text``, so the in-process key and the shared key name the same entry.
    """

    def __init__(self, fn: Callable[..., Any], where: str) -> None:
        self.where = where
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        self.is_method = _is_method(params)
        kinds = {p.kind for p in params}
        #: Only positional-or-keyword parameters: binding can be done by hand, quickly.
        self.simple = kinds <= {inspect.Parameter.POSITIONAL_OR_KEYWORD}
        self.names = [p.name for p in params]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.defaults = [p.default for p in params]
        self.nargs = len(params)

    # -- binding -----------------------------------------------------------------------------

    def normalize(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """Return the call's arguments in parameter order with defaults applied, ``self`` dropped.

        Raises ``TypeError`` exactly as calling the function would for a call that does not bind.
        """
        if self.simple and len(args) <= self.nargs:
            values = list(args) + [_MISSING] * (self.nargs - len(args))
            ok = True
            for name, value in kwargs.items():
                i = self.index.get(name)
                if i is None or values[i] is not _MISSING:
                    ok = False
                    break
                values[i] = value
            if ok:
                for i, value in enumerate(values):
                    if value is _MISSING:
                        default = self.defaults[i]
                        if default is inspect.Parameter.empty:
                            ok = False
                            break
                        values[i] = default
            if ok:
                return self._drop_self(tuple(values))
        bound = self.signature.bind(*args, **kwargs)  # raises the usual TypeError
        bound.apply_defaults()
        out: list[Any] = []
        for param in self.signature.parameters.values():
            value = bound.arguments[param.name]
            if param.kind is inspect.Parameter.KEYWORD_ONLY:
                value = (param.name, value)
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                value = dict(value)
            out.append(value)
        return self._drop_self(tuple(out))

    def _drop_self(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        if not self.is_method:
            return values
        custom = getattr(values[0], "__cache_key__", None)
        if custom is not None and callable(custom):
            return (_Self(custom()), *values[1:])
        return values[1:]

    # -- keys --------------------------------------------------------------------------------

    def l1_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        """Return the in-process key of a call (see the class docstring)."""
        values = self.normalize(args, kwargs)
        for value in values:
            tp = type(value)
            if tp is not int and tp is not str:
                return self.text(values)
        return values

    def text(self, values: tuple[Any, ...]) -> str:
        """Return the canonical argument string of normalized ``values``."""
        parts: list[Any] = []
        # Parameter names line up with values, except for a method whose ``self`` was dropped.
        names = (
            self.names[1:]
            if self.is_method and not (values and isinstance(values[0], _Self))
            else self.names
        )
        for i, value in enumerate(values):
            name = names[i] if i < len(names) else f"#{i}"
            if isinstance(value, _Self):
                parts.append({"~self": self._canonical(value.key, "self.__cache_key__()")})
            else:
                parts.append(self._canonical(value, name))
        return _shorten(encode(parts))

    def args_text(self, l1_key: Hashable) -> str:
        """Return the canonical argument string for an in-process key made by ``l1_key``."""
        return l1_key if isinstance(l1_key, str) else self.text(l1_key)  # type: ignore[arg-type]

    def _canonical(self, value: Any, name: str) -> Any:
        try:
            return canonical(value)
        except _Unstable as exc:
            raise KeyBuildError(
                f"cannot build a stable cache key for {self.where}: argument {name!r} is a "
                f"{_type_name(exc.value)}, whose only representation is its memory address. "
                f"Pass key=... to cached(), or define __cache_key__() on that class"
            ) from None
        except RecursionError:
            raise KeyBuildError(
                f"cannot build a cache key for {self.where}: argument {name!r} refers to itself"
            ) from None
