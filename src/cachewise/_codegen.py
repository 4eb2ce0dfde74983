"""Generates the wrapper of a cached function with that function's own signature.

Why generate code: a ``def wrapper(*args, **kwargs)`` pays for packing its arguments and for
binding them by hand on every call, which alone is several times the cost of the dictionary
lookup a hit should cost. A wrapper declared with the function's own parameters lets Python bind
the call (so ``f(1)``, ``f(a=1)`` and ``f(1, b=0)`` arrive as the same locals) and turns the hit
path into a few type checks, one dict lookup and one clock read. ``dataclasses`` and ``attrs``
generate their methods the same way.

The sync and async wrappers come from one template (``async``/``await`` filled in or left out),
so the two cannot drift apart.

A sync function whose key arguments are all positional gets, where the package was built with
its C extension (``_speedups.c``), a compiled front: the same hit in C, for the calls that give
every argument by position as an exact ``int`` or ``str``; every other call goes to the
generated wrapper. Why: the Python function call alone costs three ``functools.lru_cache``
hits. Async functions keep a generated wrapper (a compiled one would be neither a coroutine
function nor return a coroutine, which frameworks and ``asyncio.create_task`` check), as do
methods and functions with keyword-only or ignored parameters; with the extension, their hit
is one call of a compiled probe (``HitProbe``: the type checks, the lookup, the clock and the
count) instead of those steps in Python. ``CACHEWISE_PURE_PYTHON=1`` turns both off.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._compiled import speedups
from .core import Entry

_speedups = speedups
if _speedups is not None:
    _speedups.bind_entry(Entry)


@contextlib.contextmanager
def pure_python() -> Iterator[None]:
    """Functions decorated inside the block get the generated wrappers alone, as where the
    extension is not built (for the tests and the benchmark's fallback row)."""
    global _speedups
    saved, _speedups = _speedups, None  # type: ignore[assignment]
    try:
        yield
    finally:
        _speedups = saved


#: The L1 hit is ``core.serves_at_once``, inlined: a call would be a fifth of the whole hit.
#: ``{count}`` is empty, or (the counting variant, ``_hits``) a per-function hit counter.
_TEMPLATE = """\
{async_}def {name}({params}):
    if {fast}:
        _cw_entry = _cw_table.get({key})
        if _cw_entry is not None and _cw_now() < _cw_entry.early_at:
            _cw_entry.hits += 1{count}
            return _cw_entry.value
    return {await_}_cw_slow({call})
"""
_COUNT = "\n            _cw_count[0] += 1"

#: Past the hit, in a function of its own: the lambda closes over the parameters, and in the
#: wrapper itself that would make each a cell, allocated on every call, hits included.
_SLOW_TEMPLATE = """\
def _cw_slow({params}):
    return _cw_read(*_cw_args(({values}), lambda _cw_f: _cw_f({call})))
"""

#: The same, with the hit in the compiled probe (which counts by itself while the wrapper runs
#: its counting code, so both variants are this one).
_PROBE_TEMPLATE = """\
{async_}def {name}({params}):
    if {fast}:
        _cw_value = _cw_hit({keyed})
        if _cw_value is not _cw_miss:
            return _cw_value
    return {await_}_cw_slow({call})
"""
#: What the probe answers for a call it does not serve (never a cached value).
_MISS = object()

_BIND_TEMPLATE = """\
def _cw_bind({params}):
    return ({values})
"""


def _render(signature: inspect.Signature) -> tuple[str, str, str, dict[str, Any]] | None:
    """``(params, values, call, defaults)`` source fragments, or None if names would clash."""
    params: list[str] = []
    values: list[str] = []
    call: list[str] = []
    defaults: dict[str, Any] = {}
    star_done = False
    positional_only = False
    kinds = inspect.Parameter
    for i, p in enumerate(signature.parameters.values()):
        if p.name.startswith("_cw_"):
            return None
        text = p.name
        if p.default is not kinds.empty:
            defaults[f"_cw_default{i}"] = p.default
            text += f"=_cw_default{i}"
        if p.kind is kinds.POSITIONAL_ONLY:
            positional_only = True
        elif positional_only:
            params.append("/")
            positional_only = False
        if p.kind is kinds.VAR_POSITIONAL:
            params.append(f"*{p.name}")
            call.append(f"*{p.name}")
            star_done = True
        elif p.kind is kinds.VAR_KEYWORD:
            params.append(f"**{p.name}")
            call.append(f"**{p.name}")
        elif p.kind is kinds.KEYWORD_ONLY:
            if not star_done:
                params.append("*")
                star_done = True
            params.append(text)
            call.append(f"{p.name}={p.name}")
        else:
            params.append(text)
            call.append(p.name)
        values.append(p.name)
    if positional_only:
        params.append("/")
    return ", ".join(params), "".join(v + ", " for v in values), ", ".join(call), defaults


def _fast_condition(
    signature: inspect.Signature,
    is_method: bool,
    enabled: bool,
    ignore: frozenset[str],
    compiled: bool,
) -> tuple[str, str, list[str]]:
    """The hit-path guard and in-process key expressions (see ``keys.ArgKeyer``; the
    parameters ``ignore`` names are not part of the key), and the key's parameters (empty: no
    hit path). With ``compiled`` the guard leaves the key arguments' types to the probe."""
    params = [p for p in signature.parameters.values() if p.name not in ignore]
    keyed = params[1:] if is_method else params
    if not enabled or any(
        p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) for p in keyed
    ):
        return "False", "None", []
    checks = [] if compiled and keyed else [f"type({p.name}) in _cw_plain" for p in keyed]
    if is_method:
        checks.append(f"not hasattr({params[0].name}, '__cache_key__')")
    key = keyed[0].name if len(keyed) == 1 else "(" + "".join(p.name + ", " for p in keyed) + ")"
    return " and ".join(checks) or "True", key, [p.name for p in keyed]


def make_wrapper(
    fn: Callable[..., Any],
    *,
    is_async: bool,
    is_method: bool,
    fast: bool,
    table: dict[Any, Any],
    now: Callable[[], float],
    args: Callable[[tuple[Any, ...], Callable[[Callable[..., Any]], Any]], tuple[Any, ...]],
    read: Callable[..., Any],
    ignore: frozenset[str] = frozenset(),
) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``(front, generated)``: what callers call, and the generated wrapper (the same function,
    or behind the compiled front); None when ``fn``'s signature cannot be mirrored.

    Past the L1 hit, the wrapper returns ``read(*args(values, call))``: ``values`` are the
    parameters in order, ``call(f)`` calls ``f`` with the caller's own arguments."""
    signature = inspect.signature(fn)
    rendered = _render(signature)
    if rendered is None:
        return None
    params, values, call, defaults = rendered
    guard, key, keyed = _fast_condition(
        signature, is_method, fast, ignore, compiled=_speedups is not None
    )
    probed = _speedups is not None and bool(keyed)
    fill = dict(
        async_="async " if is_async else "",
        await_="await " if is_async else "",
        name="cached_wrapper",
        params=params,
        fast=guard,
        key=key,
        keyed=", ".join(keyed),
        values=values,
        call=call,
    )
    template = _PROBE_TEMPLATE if probed else _TEMPLATE
    sources = [template.format(count=count, **fill) for count in ("", _COUNT)]
    slow = _SLOW_TEMPLATE.format(params=params, values=values, call=call)
    namespace: dict[str, Any] = {
        "_cw_table": table,
        "_cw_real_table": table,  # ``_cw_table`` is swapped while caching is off (``_switch``)
        "_cw_now": now,
        "_cw_args": args,
        "_cw_read": read,
        "_cw_plain": (int, str),
        "_cw_miss": _MISS,
        "_cw_count": [0],
        **defaults,
    }
    where = f"<cachewise wrapper of {fn.__qualname__}>"
    exec(compile(slow, where, "exec"), namespace)
    exec(compile(sources[1], where, "exec"), namespace)
    #: The counting variant's code, swapped in while an exporter needs exact hits (``_hits``).
    namespace["_cw_counting_code"] = namespace["cached_wrapper"].__code__
    exec(compile(sources[0], where, "exec"), namespace)
    generated: Callable[..., Any] = namespace["cached_wrapper"]
    if not probed:
        return generated, generated
    clock = None if now is time.monotonic else now  # None: the C side reads that clock itself
    namespace["_cw_hit"] = _speedups.HitProbe(generated, len(keyed), clock, _MISS)
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = signature.parameters.values()
    if is_async or is_method or ignore or any(p.kind not in plain for p in parameters):
        return generated, generated
    front = _speedups.HitWrapper(generated, len(parameters), clock)
    namespace["_cw_front"] = front  # its count of hits served (``_hits.of``)
    return front, generated


def make_binder(fn: Callable[..., Any]) -> Callable[..., tuple[Any, ...]] | None:
    """A function with ``fn``'s signature returning all its parameter values in order."""
    rendered = _render(inspect.signature(fn))
    if rendered is None:
        return None
    params, values, _, defaults = rendered
    namespace: dict[str, Any] = dict(defaults)
    source = _BIND_TEMPLATE.format(params=params, values=values)
    exec(compile(source, f"<cachewise binder of {fn.__qualname__}>", "exec"), namespace)
    binder = namespace["_cw_bind"]
    binder.__qualname__ = binder.__name__ = fn.__qualname__  # errors name the user's function
    return binder  # type: ignore[no-any-return]
