"""The compiled ``Cache.get_or_load`` and L1 hit (``_speedups_front.c``, ``_speedups_lone.c``):
every call ends as with Python's alone (value, counters, errors); an L1 hit of ``get_or_load``
or ``aget_or_load`` is served without a plan (``served_now``), compiled or not."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

import cachewise
from cachewise import Cache
from cachewise import cache as cache_module
from cachewise.engine import lone
from cachewise.engine.lone import LoneReads
from cachewise.errors import ConfigTypeError, ConfigValueError
from cachewise.testing import FakeClock

from .test_concurrency import wait_until

compiled = pytest.mark.skipif(
    Cache.get_or_load is cache_module.PYTHON_GET_OR_LOAD, reason="built without the C extension"
)

COUNTED = ("hits", "l1_hits", "misses", "loads", "stale_served", "refreshes", "early_refreshes")


def _python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Cache, "get_or_load", cache_module.PYTHON_GET_OR_LOAD)
    for name, method in lone.PYTHON_READS.items():
        monkeypatch.setattr(LoneReads, name, method)


def _story(redis_url: str | None, namespace: str, how: str) -> tuple[list[Any], dict[str, Any]]:
    """A key through a miss, hits, its early-refresh window, staleness and expiry, bypass and
    the switch: what each call returned and what the cache counted."""
    clock = FakeClock()
    cache = Cache(redis_url, clock=clock, namespace=namespace) if redis_url else Cache(clock=clock)
    kept = random.getstate()
    random.seed(7)  # the early-refresh draws (XFetch), the same in both stories
    loads = iter(range(100))
    seen: list[Any] = []

    def call(**ttls: Any) -> None:
        loader, kw = (lambda: next(loads)), {"ttl": 10, **ttls}
        if how == "sync":
            seen.append(cache.get_or_load("k", loader, **kw))
        else:
            seen.append(asyncio.run(cache.aget_or_load("k", loader, **kw)))
        wait_until(lambda: not cache._engine.flights)  # a refresh it started has ended

    call(stale_ttl=5)
    call(stale_ttl=5)
    call()
    clock.advance(9.9)  # inside the early-refresh window of a 10 s TTL: Python decides
    call()
    clock.advance(10.5)  # expired; stale_ttl 5 s serves it stale while it refreshes
    call(stale_ttl=5)
    call(stale_ttl=5)
    with cache.bypass():
        call()
    with cachewise.disable():
        call()
    call()
    counts = cache.stats()
    cache.close()
    random.setstate(kept)
    return seen, {name: counts.get(name) for name in COUNTED}


@compiled
@pytest.mark.parametrize("how", ["sync", "async"])
@pytest.mark.parametrize("where", ["in-process", "two-tier"])
def test_the_compiled_front_and_hit_end_every_call_as_python_does(
    monkeypatch: pytest.MonkeyPatch, redis_server: Any, namespace: str, where: str, how: str
) -> None:
    url = redis_server.url if where == "two-tier" else None
    with_c = _story(url, f"{namespace}-c", how)
    _python(monkeypatch)
    assert _story(url, f"{namespace}-py", how) == with_c


@pytest.mark.parametrize("how", ["sync", "async"])
def test_an_l1_hit_is_served_without_a_plan(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    cache = Cache()
    cache.get_or_load("k", lambda: "v", ttl=60)

    def plan(*args: Any) -> Any:
        raise AssertionError("served by Python's plan")

    monkeypatch.setattr(LoneReads, "read", plan)
    if how == "sync":
        got = [cache.get_or_load("k", plan, ttl=60) for _ in range(3)]
    else:

        async def three() -> list[Any]:
            return [await cache.aget_or_load("k", plan, ttl=60) for _ in range(3)]

        got = asyncio.run(three())
    assert got == ["v"] * 3
    assert cache.stats()["l1_hits"] == 3


def _error(call: Callable[[Cache], Any], cache: Cache) -> tuple[type[BaseException], str]:
    with pytest.raises(Exception) as caught:
        call(cache)
    return caught.type, str(caught.value)


@compiled
def test_every_bad_call_raises_pythons_error_and_caches_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Callable[[Cache], Any]] = [
        lambda c: c.get_or_load("", lambda: 1, ttl=5),
        lambda c: c.get_or_load(3, lambda: 1, ttl=5),
        lambda c: c.get_or_load("k", 3, ttl=5),
        lambda c: c.get_or_load("k", lambda: 1, ttl=[1]),
        lambda c: c.get_or_load("k", lambda: 1, ttl=-1),
        lambda c: c.get_or_load("k", lambda: 1),
        lambda c: c.get_or_load("k", lambda: 1, ttl=5, extra=1),
        lambda c: c.get_or_load("k", lambda: 1, 5),
    ]

    def errors() -> list[tuple[type[BaseException], str]]:
        cache = Cache()
        cache.get_or_load("k", lambda: 1, ttl=6)  # its target remembered
        found = [_error(call, cache) for call in calls]
        assert cache.stats()["l1_size"] == 1
        return found

    with_c = errors()
    _python(monkeypatch)
    assert errors() == with_c
    assert [kind for kind, _ in with_c[:5]] == [
        ConfigValueError,
        ConfigTypeError,
        ConfigTypeError,
        ConfigTypeError,
        ConfigValueError,
    ]


def test_keywords_and_positions_are_taken_as_pythons_are() -> None:
    cache = Cache()
    assert cache.get_or_load(key="k", loader=lambda: 1, ttl=5) == 1
    assert cache.get_or_load("k", loader=lambda: 2, ttl=5) == 1
    assert cache.get_or_load("k", lambda: 3, stale_ttl=1, ttl=5) == 1
    assert cache.get_or_load("j", lambda: 4, ttl=5, stale_ttl=None) == 4


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_plain_get_that_l1_serves_needs_no_plan(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    clock = FakeClock()
    cache = Cache(clock=clock)
    cache.set("k", "v", ttl=10)
    engine = cache._engine
    read_many = type(engine).get_many
    planned: list[list[str]] = []

    def get_many(self: Any, keys: list[str]) -> Any:
        planned.append(keys)
        return read_many(self, keys)

    monkeypatch.setattr(type(engine), "get_many", get_many)

    def get() -> Any:
        if how == "sync":
            return cache.get("k", "default")
        return asyncio.run(cache.aget("k", "default"))

    assert [get(), get()] == ["v", "v"]
    assert planned == [] and cache.stats()["l1_hits"] == 2
    with cache.bypass():
        assert get() == "default"
    with cachewise.disable():
        assert get() == "default"
    clock.advance(10)  # expired: a plain get serves no stale value
    assert get() == "default"
    assert planned == [["k"]] * 3 and cache.stats()["l1_hits"] == 2
    with pytest.raises(ConfigValueError):
        cache.get("")
