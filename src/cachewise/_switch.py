"""Caching switched off: ``cachewise.disable()`` and ``CACHEWISE_DISABLE=1`` (every cache in the
process: for tests), and ``Cache.bypass()`` (one cache, in this thread or task only).

While a switch is on, a call reads nothing and keeps nothing: a cached function and
``get_or_load`` call the loader, ``get`` misses, ``set`` and the writers drop the entry instead
of storing it (what others hold must not outlive the write), invalidations run as always.

Why the wrappers' table is swapped instead of a flag checked on every call: the L1 hit in a
generated wrapper is one dict lookup and one clock read (DESIGN.md section 4), and a flag there
would cost every hit of every process for a switch that is almost always off. So while a switch
concerns a cache, its wrappers look in an empty table, every call takes the slow path, and the
engine there asks ``passing(engine)``; other threads' calls of a cache being bypassed still
read their L1 there, only a little slower, until the bypass ends.
"""

from __future__ import annotations

import contextlib
import os
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

#: What wrappers look in while a switch is on: empty, and read-only so nothing fills it.
EMPTY: types.MappingProxyType[Any, Any] = types.MappingProxyType({})

_lock = threading.Lock()
#: ``disable()`` blocks open now, plus one for ``CACHEWISE_DISABLE=1``.
_disabled = [1 if os.environ.get("CACHEWISE_DISABLE", "").strip() not in ("", "0") else 0]
#: The engines bypassed in this thread or task (ids: the set is copied into every new task).
_bypassing: ContextVar[frozenset[int]] = ContextVar("cachewise_bypassing", default=frozenset())
#: Per engine: how many ``bypass()`` blocks are open on it, in any thread or task.
_bypasses: dict[int, int] = {}
#: The engines with generated wrappers (each cached function's ``Spec.wrapper``, in
#: ``engine.functions``; their globals hold the table they read).
_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def passing(engine: Any) -> bool:
    """Whether a call on ``engine`` here goes straight through (the slow path asks)."""
    return _disabled[0] > 0 or (id(engine) in _bypassing.get())


def register(engine: Any) -> None:
    """``engine`` has a new generated wrapper: its table follows the switches from now on."""
    with _lock:
        _engines.add(engine)
        _apply(engine)


def wrappers_of(engine: Any) -> list[Callable[..., Any]]:
    """The generated wrappers of ``engine`` alive now."""
    return [spec.wrapper for spec in list(engine.functions) if spec.wrapper is not None]


def _apply(engine: Any) -> None:
    off = _disabled[0] > 0 or _bypasses.get(id(engine), 0) > 0
    for wrapper in wrappers_of(engine):
        names = wrapper.__globals__
        names["_cw_table"] = EMPTY if off else names["_cw_real_table"]


def _apply_all(change: int) -> None:
    with _lock:
        _disabled[0] += change
        for engine in list(_engines):
            _apply(engine)


@contextlib.contextmanager
def disable() -> Iterator[None]:
    """Every cache of this process calls straight through inside the block (see the module)."""
    _apply_all(+1)
    try:
        yield
    finally:
        _apply_all(-1)


@contextlib.contextmanager
def bypass(engine: Any) -> Iterator[None]:
    """``engine``'s calls in this thread or task go straight through inside the block."""
    token = _bypassing.set(_bypassing.get() | {id(engine)})
    with _lock:
        _bypasses[id(engine)] = _bypasses.get(id(engine), 0) + 1
        _apply(engine)
    try:
        yield
    finally:
        _bypassing.reset(token)
        with _lock:
            left = _bypasses.pop(id(engine)) - 1
            if left:
                _bypasses[id(engine)] = left
            _apply(engine)
