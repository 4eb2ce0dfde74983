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

from ._codegen import make_binder
from .errors import KeyBuildError

__all__ = ["ArgKeyer", "canonical", "encode"]

#: Argument encodings longer than this are replaced by their SHA-256, so Redis keys stay short.
MAX_ARGS_CHARS = 512


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


# One encoder for the process: ``json.dumps`` with options builds a new one on every call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode
# The string quoting that encoder applies with ensure_ascii=False (the C one when available).
_quote: Callable[[str], str] = getattr(json.encoder, "c_encode_basestring", None) or (
    json.encoder.py_encode_basestring
)


def encode(structure: Any) -> str:
    """Serialize a ``canonical`` structure to its one textual form."""
    return _encode(structure)


def _plain_text(values: tuple[Any, ...]) -> str | None:
    """``encode(list(values))`` without the encoder's overhead, when every value is an exact
    ``int`` or ``str`` (the common case, and the one a cache miss pays for): the same text."""
    parts = []
    for value in values:
        tp = type(value)
        if tp is int:
            parts.append(int.__repr__(value))
        elif tp is str:
            parts.append(_quote(value))
        else:
            return None
    return _shorten("[" + ",".join(parts) + "]")


def explicit(key: str) -> str:
    """The Redis form of an explicit key: itself, or its SHA-256 when it is long or starts with
    ``#`` (so that no key given as is can equal the hashed form of another)."""
    if len(key) <= MAX_ARGS_CHARS and key[0] != "#":
        return key
    return "#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _shorten(text: str) -> str:
    if len(text) <= MAX_ARGS_CHARS:
        return text
    return "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _is_method(params: list[inspect.Parameter]) -> bool:
    return (
        bool(params)
        and params[0].name in ("self", "cls")
        and params[0].kind
        in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


class _Self:
    """Stands for an instance that defines ``__cache_key__`` in a normalized argument tuple."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key


class _Canonical(tuple):  # type: ignore[type-arg]
    """A 1-tuple holding the canonical text: the in-process key of a one-argument call whose
    argument is not a plain int/str (those are keyed by the bare value, which never equals a
    tuple)."""

    __slots__ = ()


class ArgKeyer:
    """Turns the bound arguments of one function into its in-process key and canonical text.

    ``values`` are all parameters in signature order, as the generated wrapper (``_codegen``)
    or ``bind`` sees them after Python itself bound the call: ``f(1)``, ``f(a=1)`` and
    ``f(1, b=0)`` give the same values.

    The in-process key (``l1_key``) is, when every keyed argument is an exact ``int`` or ``str``
    (cheap to hash, impossible to confuse with each other): the bare argument for a function of
    one argument, the tuple of them otherwise. Any other call is keyed by its canonical text,
    wrapped so it can never equal one of those: a 1-tuple for one-argument functions, the plain
    ``str`` otherwise. Each in-process key maps to exactly one canonical text.
    """

    def __init__(
        self, fn: Callable[..., Any], where: str, ignore: frozenset[str] = frozenset()
    ) -> None:
        self.where = where
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        self.is_method = _is_method(params)
        self.ignore = ignore
        #: Where the keyed arguments sit among all parameter values (None: all of them).
        self.kept: tuple[int, ...] | None = None
        if ignore:
            self.kept = tuple(i for i, p in enumerate(params) if p.name not in ignore)
            params = [p for p in params if p.name not in ignore]
        keyed = params[1:] if self.is_method else params
        self.names = [p.name for p in keyed]
        self.single = len(keyed) == 1 and keyed[0].kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        )
        self._binder = make_binder(fn)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """All parameter values of a call, in signature order (raises ``TypeError`` as the
        function would for a call that does not bind)."""
        try:
            if self._binder is not None:
                return self._binder(*args, **kwargs)
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            if not self.ignore:
                raise
            # Arguments left out of the key may be left out of a writer's args= too.
            bound = self.signature.bind_partial(*args, **kwargs)
            for name in self.ignore:
                bound.arguments.setdefault(name, None)
            bound.apply_defaults()
            if len(bound.arguments) < len(self.signature.parameters):
                raise
            return tuple(bound.arguments[n] for n in self.signature.parameters)
        bound.apply_defaults()
        return tuple(bound.arguments.values())

    def keyed(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """``values`` without ``self``/``cls`` (or with its ``__cache_key__()``), and without
        the arguments ``ignore=`` leaves out."""
        if self.kept is not None:
            values = tuple(values[i] for i in self.kept)
        if not self.is_method:
            return values
        custom = getattr(values[0], "__cache_key__", None)
        if custom is not None and callable(custom):
            return (_Self(custom()), *values[1:])
        return values[1:]

    def l1_key(self, values: tuple[Any, ...]) -> Hashable:
        """The in-process key of a call's bound ``values`` (see the class docstring)."""
        keyed = self.keyed(values)
        for value in keyed:
            tp = type(value)
            if tp is not int and tp is not str:
                text = self.text(keyed)
                return _Canonical((text,)) if self.single else text
        return keyed[0] if self.single else keyed

    def args_text(self, l1_key: Hashable) -> str:
        """The canonical argument text behind an in-process key made by ``l1_key``."""
        if self.single:  # one int or str argument, the key every miss of such a function pays
            tp = type(l1_key)
            if tp is int or tp is str:
                text = "[" + (int.__repr__(l1_key) if tp is int else _quote(l1_key)) + "]"  # type: ignore[arg-type]
                return _shorten(text)
        if isinstance(l1_key, _Canonical):
            return l1_key[0]  # type: ignore[no-any-return]
        if isinstance(l1_key, str) and not self.single:
            return l1_key
        return self.text((l1_key,) if self.single else l1_key)  # type: ignore[arg-type]

    def text(self, keyed: tuple[Any, ...]) -> str:
        """The canonical argument text of keyed values."""
        plain = _plain_text(keyed)
        if plain is not None:
            return plain
        parts: list[Any] = []
        offset = 0
        for i, value in enumerate(keyed):
            if isinstance(value, _Self):
                parts.append({"~self": self._canonical(value.key, "self.__cache_key__()")})
                offset = 1
                continue
            j = i - offset
            parts.append(self._canonical(value, self.names[j] if j < len(self.names) else "?"))
        return _shorten(encode(parts))

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
