"""``@cache.cached`` and the writer decorators, for ``def`` and ``async def`` alike.

Every decorated function is a thin shell around a plan from ``engine``: the sync shell runs it
with ``run_sync``, the async one with ``await run_async`` (``_shell`` makes both from one plan
factory). Only the cached read has a hand-inlined fast path in front: an L1 hit on plain
``int``/``str`` arguments costs a tuple-typed dict lookup and one clock read.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Hashable, Iterable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from . import _hits, _switch, _validate, serializers, valuetypes
from ._codegen import make_wrapper
from ._drivers import Plan, run_async, run_sync
from ._l1 import Table
from .engine import Engine, Policy, Target
from .errors import ConfigTypeError, ConfigValueError
from .keys import ArgKeyer
from .serializers import Serializer

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class CachedFunction(Protocol[P, R_co]):
    """A sync function wrapped by ``cached``: call it as before, plus ``key``/``invalidate``."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def key(self, *args: P.args, **kwargs: P.kwargs) -> str: ...
    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> int: ...
    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def peek(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...
    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...


class AsyncCachedFunction(Protocol[P, R_co]):
    """An ``async def`` wrapped by ``cached``; ``invalidate`` is a coroutine, ``key`` is not."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...
    def key(self, *args: P.args, **kwargs: P.kwargs) -> str: ...
    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> int: ...
    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    async def peek(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...
    def uncached(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...


class CachedDecorator(Protocol):
    """What ``cache.cached(ttl=...)`` returns."""

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> AsyncCachedFunction[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> CachedFunction[P, R]: ...


Caller = Callable[[Callable[..., Any]], Any]


#: No in-process key equals it (``Spec._last`` before the first miss).
_NO_KEY = object()


class Spec(Generic[P]):
    """What the wrapper and the writer decorators need to know about a cached function."""

    def __init__(
        self,
        engine: Engine,
        fn: Callable[..., Any],
        policy: Policy,
        key: Callable[..., str] | None,
        tags: Callable[..., Iterable[str]] | Iterable[str] | None,
        serializer: Serializer | None = None,
        ignore: frozenset[str] = frozenset(),
        when: Callable[..., Any] | None = None,
    ) -> None:
        self.engine = engine
        self.serializer = serializer
        self.when = when
        self.fn = fn
        self.policy = policy
        self.where = f"{fn.__module__}.{fn.__qualname__}"
        self.keyer = ArgKeyer(fn, self.where, ignore)
        self.custom_key = key
        self.tags = tags
        # Explicit keys (key=...) share the table of get/set so cache.invalidate(k) reaches them.
        self.base = f"{fn.__module__}:{fn.__qualname__}:"
        #: The full key of one of this function's in-process keys. Not a method: its tables'
        #: entries keep it, and must not keep the function alive.
        self.name_of = engine.space.entry_of(self.base, self.keyer.args_text)
        self.table = engine.explicit if key is not None else Table(self.name_of)
        #: The generated wrapper (``_codegen``), whose globals ``_switch`` and ``_hits`` change.
        self.wrapper: Callable[..., Any] | None = None
        #: The in-process key and full key of the last call that missed L1: the callers of a
        #: herd, or of a hot key with L1 off, ask for one key again and again, and building its
        #: text is a third of what each of them does before it waits. One tuple, replaced whole.
        self._last: tuple[Hashable, str] = (_NO_KEY, "")
        engine.functions.add(self)

    def _tags_for(self, call: Caller) -> Callable[[], Iterable[str]] | None:
        tags = self.tags
        if tags is None:
            return None
        if callable(tags):
            return functools.partial(call, tags)
        return lambda: tags

    def target(self, values: tuple[Any, ...], call: Caller) -> Target:
        """The entry of one call, from its bound ``values``; ``call(f)`` calls ``f`` with the
        call's own arguments (for ``key=``, ``tags=`` and ``when=`` functions)."""
        target = self._target(values, call)
        if self.when is not None:
            try:
                target.through = not call(self.when)
            except Exception as exc:
                raise ConfigValueError(
                    f"when= of {self.where} raised {exc!r}: the call was not made"
                ) from exc
        return target

    def _target(self, values: tuple[Any, ...], call: Caller) -> Target:
        if self.custom_key is not None:
            key = _validate.cache_key(call(self.custom_key), f"the key= function of {self.where}")
            full_key = self.engine.explicit_name(key)
            return Target(
                self.table, key, full_key, self.where, self._tags_for(call), self.serializer
            )
        l1_key = self.keyer.l1_key(values)
        last_key, full_key = self._last
        if last_key != l1_key:  # equal in-process keys have one text (``ArgKeyer.l1_key``)
            full_key = self.name_of(l1_key)
            self._last = (l1_key, full_key)
        return Target(
            self.table, l1_key, full_key, self.where, self._tags_for(call), self.serializer
        )

    def target_of_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Target:
        """The entry that ``fn(*args, **kwargs)`` reads and fills."""
        values = self.keyer.bind(args, kwargs)
        return self.target(values, lambda f: f(*args, **kwargs))

    def args_of(self, result: Any) -> tuple[Any, ...]:
        """An ``args=`` result as the cached function's positional arguments."""
        return result if isinstance(result, tuple) else (result,)


def _shell(fn: Callable[..., Any], plan: Callable[..., Plan[Any]]) -> Callable[..., Any]:
    """A sync or async function (matching ``fn``) that runs ``plan(*args, **kwargs)``."""
    if inspect.iscoroutinefunction(fn):

        async def run_plan_async(*args: Any, **kwargs: Any) -> Any:
            return await run_async(plan(*args, **kwargs))

        return run_plan_async

    def run_plan(*args: Any, **kwargs: Any) -> Any:
        return run_sync(plan(*args, **kwargs))

    return run_plan


def _check_function(fn: Any, what: str) -> None:
    if isinstance(fn, (classmethod, staticmethod)):
        return
    if not callable(fn):
        raise ConfigTypeError(f"{what} decorates functions, not {type(fn).__name__} ({fn!r})")


def positional_ttl(positional: tuple[Any, ...], ttl: Any) -> Any:
    """The TTL given to ``cached``: positionally (a number: ``cached(60)``) or by keyword (a
    number, or a function of the result). A function given positionally is the decorator used
    bare (``@cache.cached`` on a function): a clear error at decoration time."""
    if not positional:
        return ttl
    if len(positional) > 1 or ttl is not None:
        raise ConfigTypeError("cached() takes the TTL once: cached(<seconds>) or cached(ttl=...)")
    (given,) = positional
    if callable(given):
        raise ConfigTypeError(
            f"cached() was applied to {getattr(given, '__qualname__', given)!r} without "
            "arguments: write @cache.cached(ttl=<seconds>), every cached value must expire (a "
            "TTL computed from the result is given by keyword: ttl=lambda result: ...)"
        )
    return given


def _lifetime(value: Any, where: str, name: str) -> tuple[float, Callable[[Any], Any] | None]:
    """A fixed TTL (checked now) or a function of the result (checked on each result)."""
    if callable(value) and not isinstance(value, (int, float)):
        return 0.0, value
    if name == "ttl":
        return _validate.ttl_seconds(value, where), None
    return _validate.stale_seconds(value, where), None


def make_cached(
    engine: Engine,
    *,
    ttl: Any,
    stale_ttl: Any = None,
    tags: Callable[..., Iterable[str]] | Iterable[str] | None = None,
    key: Callable[..., str] | None = None,
    fail_closed: bool = False,
    unless: Callable[[Any], Any] | None = None,
    serializer: Any = None,
    ignore: Iterable[str] | str | None = None,
    when: Callable[..., Any] | None = None,
) -> CachedDecorator:
    """Return the ``cached`` decorator; TTLs and options are checked here, at decoration time
    (a TTL function's results, and ``unless``, on each result). ``serializer`` None: the
    cache's."""
    if unless is not None:
        _validate.callable_(unless, "unless=")
    if when is not None:
        _validate.callable_(when, "when=")
    if ignore is not None and key is not None:
        raise ConfigValueError("ignore= with key=: key= builds the whole key, give one of them")
    if key is not None:
        _validate.callable_(key, "key=")
    if tags is not None and not callable(tags):
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise ConfigTypeError("tags= must be a function of the arguments or a list of str")
        tags = tuple(tags)

    def decorate(fn: Any) -> Any:
        _check_function(fn, "cached()")
        if isinstance(fn, (classmethod, staticmethod)):
            return type(fn)(decorate(fn.__func__))
        where = f"{fn.__module__}.{fn.__qualname__}"
        fixed_ttl, ttl_of = _lifetime(ttl, where, "ttl")
        fixed_stale, stale_of = _lifetime(stale_ttl, where, "stale_ttl")
        policy = Policy(fixed_ttl, fixed_stale, fail_closed, ttl_of, stale_of, unless)
        chosen = engine.serializer if serializer is None else serializers.resolve(serializer, where)
        valuetypes.register_annotation(fn)  # a process that only reads them decodes them too
        left_out = _ignored(ignore, fn, where)
        spec: Spec[Any] = Spec(engine, fn, policy, key, tags, chosen, left_out, when)
        wrapper = _cached_wrapper(spec, fn)
        functools.update_wrapper(wrapper, fn)
        wrapper.key = lambda *a, **kw: spec.target_of_call(a, kw).full_key  # type: ignore[attr-defined]
        wrapper.invalidate = _shell(  # type: ignore[attr-defined]
            fn, lambda *a, **kw: engine.invalidate([spec.target_of_call(a, kw).full_key])
        )
        wrapper.refresh = _shell(  # type: ignore[attr-defined]
            fn, functools.partial(_refresh, spec)
        )
        wrapper.peek = _shell(  # type: ignore[attr-defined]
            fn, lambda *a, **kw: engine.peek(spec.target_of_call(a, kw))
        )
        wrapper.uncached = fn  # type: ignore[attr-defined]
        wrapper._cachewise = spec  # type: ignore[attr-defined]
        return wrapper

    return cast(CachedDecorator, decorate)


def _ignored(
    ignore: Iterable[str] | str | None, fn: Callable[..., Any], where: str
) -> frozenset[str]:
    """``ignore=`` checked against ``fn``'s signature, at decoration time."""
    if ignore is None:
        return frozenset()
    names = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    params = list(inspect.signature(fn).parameters)
    for name in names:
        if not isinstance(name, str):
            raise ConfigTypeError(f"ignore= of {where} must name parameters (str), got {name!r}")
        if name not in params:
            raise ConfigValueError(
                f"ignore= of {where} names {name!r}, which is not one of its parameters "
                f"({', '.join(params) or 'none'})"
            )
        if name == params[0] and name in ("self", "cls"):
            raise ConfigValueError(
                f"ignore= of {where} names {name!r}: the method's receiver is never part of the "
                "key (define __cache_key__() to make it one)"
            )
    return frozenset(names)


def _refresh(spec: Spec[Any], *args: Any, **kwargs: Any) -> Plan[Any]:
    """Reload one call's entry now: every process drops it, then one load (single-flight, as
    any miss) stores the new value, which every L1 then learns."""
    target = spec.target_of_call(args, kwargs)
    yield from spec.engine.invalidate([target.full_key])
    loader = functools.partial(spec.fn, *args, **kwargs)
    return (yield from spec.engine.read(target, loader, spec.policy))


def _cached_wrapper(spec: Spec[Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    engine, policy, read = spec.engine, spec.policy, spec.engine.read
    is_async = inspect.iscoroutinefunction(fn)

    def args(values: tuple[Any, ...], call: Caller) -> tuple[Target, Callable[[], Any], Policy]:
        return spec.target(values, call), functools.partial(call, fn), policy

    made = make_wrapper(
        fn,
        is_async=is_async,
        is_method=spec.keyer.is_method,
        fast=spec.custom_key is None and spec.when is None,
        table=spec.table,
        now=engine.clock,
        args=args,
        read=engine.read_async if is_async else engine.read_sync,
        ignore=spec.keyer.ignore,
    )
    if made is not None:
        wrapper, spec.wrapper = made
        _switch.register(engine)
        if engine.l1.counted is not None:  # an exporter counts this cache's hits
            _hits.counting(spec.wrapper)
    else:  # a parameter name the generated code cannot use: no fast path
        wrapper = _shell(
            fn,
            lambda *a, **kw: read(
                spec.target_of_call(a, kw), functools.partial(fn, *a, **kw), policy
            ),
        )
    return wrapper


def spec_of(target: Any, what: str) -> Spec[Any]:
    """The ``Spec`` of a function decorated with ``cached``, or a clear error."""
    spec = getattr(target, "_cachewise", None)
    if not isinstance(spec, Spec):
        raise ConfigTypeError(
            f"{what} needs a function decorated with @cache.cached(...), got {target!r}"
        )
    return spec
