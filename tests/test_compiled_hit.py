"""The compiled L1 hit (``_speedups.HitWrapper``, see ``_codegen``): built here, and a cached
function behaves the same with it and without it, call for call."""

from __future__ import annotations

import asyncio
import copy
import gc
import os
import pickle
import subprocess
import sys
import time
import weakref
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cachewise
from cachewise import Cache, _codegen, _hits
from cachewise._codegen import pure_python
from cachewise.testing import FakeClock

pure_only = os.environ.get("CACHEWISE_PURE_PYTHON", "").strip() not in ("", "0")
needs_compiled = pytest.mark.skipif(pure_only, reason="CACHEWISE_PURE_PYTHON=1")


@cachewise.cached(ttl=60)
def module_level(x: int) -> int:
    """Doubles."""
    return x * 2


@needs_compiled
def test_the_compiled_hit_is_built_and_used_for_sync_positional_functions() -> None:
    assert _codegen._speedups is not None, "the C extension was not built (see setup.py)"
    cache = Cache(namespace="compiled")

    @cache.cached(ttl=60)
    def sync(x: int, y: str = "") -> str:
        return f"{x}{y}"

    @cache.cached(ttl=60)
    async def asynchronous(x: int) -> int:
        return x

    @cache.cached(ttl=60)
    def keyword_only(*, x: int) -> int:
        return x

    class Shop:
        @cache.cached(ttl=60)
        def price(self, item: int) -> int:
            return item

    compiled = type(sync)
    assert compiled.__module__ == "cachewise._speedups"
    for python in (asynchronous, keyword_only, Shop.price):
        assert type(python) is not compiled
    with pure_python():

        @cache.cached(ttl=60)
        def plain(x: int) -> int:
            return x

    assert type(plain) is not compiled
    cache.close()


class Functions:
    """One cache's cached functions of every shape the compiled hit serves differently."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.cache = cache = Cache(namespace="parity", clock=clock, ttl_jitter=0,
                                   early_refresh_beta=0)  # fmt: skip
        self.loads = loads = []  # type: list[tuple[Any, ...]]

        @cache.cached(ttl=10)
        def one(x: Any) -> tuple[Any, ...]:  # the compiled front
            loads.append(("one", x))
            return ("one", type(x).__name__, x, len(loads))

        @cache.cached(ttl=10)
        def two(a: Any, b: Any = 0) -> tuple[Any, ...]:
            loads.append(("two", a, b))
            return ("two", type(a).__name__, a, type(b).__name__, b, len(loads))

        @cache.cached(ttl=10)
        def keyword(*, x: Any) -> tuple[Any, ...]:  # the probe, sync
            loads.append(("keyword", x))
            return ("keyword", type(x).__name__, x, len(loads))

        @cache.cached(ttl=10)
        async def asynchronous(x: Any) -> tuple[Any, ...]:  # the probe, async
            loads.append(("async", x))
            return ("async", type(x).__name__, x, len(loads))

        class Shop:
            @cache.cached(ttl=10)
            def price(self, x: Any) -> tuple[Any, ...]:  # the probe, a method
                loads.append(("method", x))
                return ("method", type(x).__name__, x, len(loads))

        self.one, self.two, self.keyword, self.shop = one, two, keyword, Shop()
        self.asynchronous = asynchronous
        self.loop = asyncio.new_event_loop()

    def run(self, step: tuple[Any, ...]) -> Any:
        kind, *args = step
        if kind == "one":
            return self.one(args[0])
        if kind == "one-kw":
            return self.one(x=args[0])
        if kind == "two":
            return self.two(args[0], args[1])
        if kind == "two-default":
            return self.two(args[0])
        if kind == "two-kw":
            return self.two(args[0], b=args[1])
        if kind == "keyword":
            return self.keyword(x=args[0])
        if kind == "method":
            return self.shop.price(args[0])
        if kind == "async":
            return self.loop.run_until_complete(self.asynchronous(args[0]))
        if kind == "tick":
            self.clock.advance(args[0])
            return None
        if kind == "invalidate":
            return self.one.invalidate(args[0])
        if kind == "count":  # an exporter starts counting hits per function
            return _hits.start(self.cache._engine)
        with cachewise.disable():
            return self.one(args[0])

    def close(self) -> None:
        self.cache.close()
        self.loop.close()


_args = st.one_of(
    st.integers(-2, 2), st.sampled_from(["a", "b", ""]), st.booleans(), st.just(1.0), st.none()
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("one"), _args),
        st.tuples(st.just("one-kw"), _args),
        st.tuples(st.just("two"), _args, _args),
        st.tuples(st.just("two-default"), _args),
        st.tuples(st.just("two-kw"), _args, _args),
        st.tuples(st.sampled_from(["keyword", "method", "async"]), _args),
        st.tuples(st.just("tick"), st.sampled_from([1.0, 9.99, 10.0, 11.0])),
        st.tuples(st.just("invalidate"), _args),
        st.tuples(st.just("count")),
        st.tuples(st.just("disabled"), _args),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_steps)
def test_compiled_and_python_wrappers_answer_every_call_alike(steps: list[tuple[Any, ...]]) -> None:
    compiled = Functions(FakeClock())
    with pure_python():
        python = Functions(FakeClock())
    try:
        for step in steps:
            assert compiled.run(step) == python.run(step), step
        assert compiled.loads == python.loads
        names = ("l1_hits", "misses", "loads")
        compiled_stats, python_stats = compiled.cache.stats(), python.cache.stats()
        assert {n: compiled_stats[n] for n in names} == {n: python_stats[n] for n in names}
        hits = compiled.cache._engine.function_hits(), python.cache._engine.function_hits()
        assert hits[0] == hits[1]
    finally:
        compiled.close()
        python.close()


def test_the_monotonic_clock_read_in_c_is_time_monotonic() -> None:
    """Default clock: the compiled hit reads CLOCK_MONOTONIC itself, on time.monotonic's scale."""
    cache = Cache(namespace="monotonic")
    loads = []

    @cache.cached(ttl=60)
    def f(x: int) -> int:
        loads.append(x)
        return x

    f(1)
    spec = f._cachewise
    entry = spec.table[1]
    entry.early_at = time.monotonic() + 30
    f(1)
    assert loads == [1]
    entry.early_at = entry.fresh_until = entry.stale_until = time.monotonic() - 0.001
    f(1)
    assert loads == [1, 1]
    cache.close()


def test_a_bool_or_a_float_argument_is_not_served_from_the_ints_entry(cache: Cache) -> None:
    @cache.cached(ttl=60)
    def kind(x: Any) -> str:
        return type(x).__name__

    assert kind(1) == "int"
    assert kind(True) == "bool"
    assert kind(1.0) == "float"
    assert kind(1) == "int"


def test_hits_are_counted_once_an_exporter_counts(cache: Cache) -> None:
    @cache.cached(ttl=60)
    def f(x: int) -> int:
        return x

    f(1)
    f(1)
    _hits.start(cache._engine)
    for _ in range(5):
        f(1)
    f(x=1)  # the Python wrapper's counting code
    assert cache.stats()["l1_hits"] == 7


@needs_compiled
def test_stats_sum_a_count_per_function_never_the_entries(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the extension, hits are counted as they are served (the compiled front, the probe
    of a generated wrapper, the slow path): ``stats()`` costs the same whatever L1 holds."""

    @cache.cached(ttl=60)
    def f(x: int) -> int:
        return x

    @cache.cached(ttl=60)
    async def g(x: int) -> int:
        return x

    async def hit_g() -> None:
        for i in range(50):
            await g(i)
            await g(i)

    for i in range(100):
        f(i)
    for _ in range(3):
        for i in range(100):
            f(i)
    f(x=1)  # through the generated wrapper's slow path
    cache.set("k", 1, ttl=60)
    cache.get("k")  # an explicit key's hit
    asyncio.run(hit_g())

    def walked(*args: Any) -> int:
        raise AssertionError("stats() walked L1's entries")

    monkeypatch.setattr(type(cache._engine.l1), "hits_of", walked)
    assert cache.stats()["l1_hits"] == 300 + 1 + 1 + 50
    assert f.served == 300


def test_it_behaves_as_a_function_would(cache: Cache) -> None:
    assert pickle.loads(pickle.dumps(module_level)) is module_level
    assert copy.copy(module_level) is module_level and copy.deepcopy(module_level) is module_level
    assert module_level.__name__ == "module_level" and module_level.__doc__ == "Doubles."
    assert "module_level" in repr(module_level)
    assert module_level.__wrapped__(2) == 4

    @cache.cached(ttl=60)
    def double(x: int) -> int:
        return x * 2

    class Holder:
        method = double  # bound like a function: the instance is the first argument

    with pytest.raises(TypeError):
        Holder().method(1)
    assert Holder.method(3) == 6
    assert double.key(3) == double.key(x=3)
    double.invalidate(3)

    ref = weakref.ref(double)
    del double, Holder
    gc.collect()
    assert ref() is None


@needs_compiled
def test_hitwrapper_refuses_what_is_not_a_generated_wrapper() -> None:
    compiled = type(module_level)
    with pytest.raises(TypeError, match="generated wrapper"):
        compiled(lambda x: x, 1, None)
    with pytest.raises(TypeError, match="nargs"):
        compiled(module_level.fallback, 0, None)


def test_wrappers_with_a_probe_are_collected_and_bind_as_before(cache: Cache) -> None:
    @cache.cached(ttl=60)
    async def fetch(x: int) -> int:
        return x

    class Shop:
        @cache.cached(ttl=60)
        def price(self, item: int) -> int:
            return item * 10

        @cache.cached(ttl=60)
        @classmethod
        def tax(cls, item: int) -> int:
            return item

    assert asyncio.iscoroutinefunction(fetch)
    assert asyncio.run(fetch(2)) == 2 and asyncio.run(fetch(2)) == 2
    assert Shop().price(3) == 30 and Shop().price(3) == 30
    assert Shop.tax(4) == 4 and Shop().tax(4) == 4
    refs = [weakref.ref(fetch), weakref.ref(Shop)]
    del fetch, Shop
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_a_clock_that_calls_back_into_the_cache_is_served_safely() -> None:
    """An injected clock runs Python code inside the compiled hit: here it drops the very
    entry being read, every time, and the call is still answered (from the entry it read)."""
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        if calls[0] > 2:
            double.invalidate(1)  # the entry the hit holds goes away while it is read
        return 1_000.0

    cache = Cache(namespace="reentrant", clock=clock)

    @cache.cached(ttl=60)
    def double(x: int) -> int:
        return x * 2

    for _ in range(5):
        assert double(1) == 2
    cache.close()


def test_cachewise_pure_python_turns_the_compiled_hit_off() -> None:
    """What a package built without a C compiler runs: the generated wrappers alone."""
    script = (
        "from cachewise import Cache, _codegen\n"
        "assert _codegen._speedups is None\n"
        "cache = Cache()\n"
        "@cache.cached(ttl=60)\n"
        "def double(x): return x * 2\n"
        "assert type(double).__name__ == 'function'\n"
        "assert [double(2), double(2), double(x=2)] == [4, 4, 4]\n"
        "assert cache.stats()['l1_hits'] == 2 and cache.stats()['loads'] == 1\n"
    )
    env = {**os.environ, "CACHEWISE_PURE_PYTHON": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@needs_compiled
def test_an_extension_built_from_other_c_is_not_used() -> None:
    """An editable install whose extension was not rebuilt after the C changed: the package
    says so (a RuntimeWarning) and runs in pure Python, rather than failing or misreading."""
    from cachewise import _compiled, _speedups

    assert _speedups.VERSION == _compiled.VERSION
    script = (
        "import sys, types, warnings\n"
        "stale = types.ModuleType('cachewise._speedups')\n"
        "stale.__file__ = 'stale.so'\n"
        "stale.HitWrapper = stale.HitProbe = stale.bind_entry = object()\n"
        "sys.modules['cachewise._speedups'] = stale\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    from cachewise import Cache, _compiled, core\n"
        "assert _compiled.speedups is None\n"
        "assert any('built from another version' in str(w.message) for w in seen)\n"
        "assert core.Entry.__mro__[1] is core._Fields\n"
        "cache = Cache()\n"
        "@cache.cached(ttl=60)\n"
        "def double(x): return x * 2\n"
        "assert [double(2), double(2)] == [4, 4]\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
