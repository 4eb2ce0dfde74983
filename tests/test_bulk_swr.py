"""Stale-while-revalidate in a bulk read without Redis: ``get_or_load_many`` serves the values L1
holds past their TTL but within ``stale_ttl`` at once and refreshes each in the background, as
a read of one key does (with Redis the bulk read hands such keys to the one-key path)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from cachewise import Cache
from cachewise.testing import FakeClock

from .test_concurrency import wait_until


class Store:
    """A ``load_many`` whose loads of the ``held`` keys wait for ``gate``, or that fails."""

    def __init__(self) -> None:
        self.version = 1
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.held: set[str] = set()
        self.failing = False

    def load_many(self, keys: list[str]) -> dict[str, Any]:
        self.calls.append(list(keys))
        if self.held & set(keys):
            assert self.gate.wait(10)
        if self.failing:
            raise RuntimeError("the store is down")
        return {key: f"{key}{self.version}" for key in keys}


def test_a_bulk_read_serves_stale_values_while_each_is_refreshed() -> None:
    clock = FakeClock()
    cache = Cache(clock=clock)
    store = Store()

    def bulk(keys: list[str]) -> dict[str, Any]:
        return cache.get_or_load_many(keys, store.load_many, ttl=10, stale_ttl=30)

    assert bulk(["a", "b"]) == {"a": "a1", "b": "b1"}
    clock.advance(15)  # past the TTL, within stale_ttl
    store.version, store.held = 2, {"a", "b"}  # their refreshes wait
    assert bulk(["a", "b", "c"]) == {"a": "a1", "b": "b1", "c": "c2"}  # c: a miss, loaded
    stats = cache.stats()
    assert (stats["stale_served"], stats["refreshes"]) == (2, 2)
    assert bulk(["a", "b"]) == {"a": "a1", "b": "b1"}  # still refreshing: served, not again
    store.gate.set()
    wait_until(lambda: not cache._engine.flights)
    assert bulk(["a", "b"]) == {"a": "a2", "b": "b2"}
    assert sorted(map(tuple, store.calls)) == [("a",), ("a", "b"), ("b",), ("c",)]
    assert cache.stats()["refreshes"] == 2
    cache.close()


async def test_an_async_bulk_read_serves_stale_values_while_each_is_refreshed() -> None:
    clock = FakeClock()
    cache = Cache(clock=clock)
    store = Store()

    async def bulk(keys: list[str]) -> dict[str, Any]:
        return await cache.aget_or_load_many(keys, store.load_many, ttl=10, stale_ttl=30)

    assert await bulk(["a", "b"]) == {"a": "a1", "b": "b1"}
    clock.advance(15)
    store.version = 2
    assert await bulk(["a", "b"]) == {"a": "a1", "b": "b1"}
    for _ in range(100):  # the refresh tasks run on this loop
        if not cache._engine.flights:
            break
        await asyncio.sleep(0.01)
    assert await bulk(["a", "b"]) == {"a": "a2", "b": "b2"}
    stats = cache.stats()
    assert (stats["stale_served"], stats["refreshes"]) == (2, 2)
    cache.close()


def _loaded_then(seconds: float) -> tuple[Cache, Store]:
    """A cache that loaded ``a`` (ttl 10 s, stale_ttl 30 s) ``seconds`` ago."""
    clock = FakeClock()
    cache, store = Cache(clock=clock), Store()
    cache.get_or_load_many(["a"], store.load_many, ttl=10, stale_ttl=30)
    clock.advance(seconds)
    return cache, store


def test_past_stale_ttl_a_bulk_read_waits_for_its_load() -> None:
    cache, store = _loaded_then(41)
    store.version = 2
    assert cache.get_or_load_many(["a"], store.load_many, ttl=10, stale_ttl=30) == {"a": "a2"}
    assert cache.stats()["stale_served"] == 0
    cache.close()


def test_a_failing_refresh_keeps_the_stale_value_served() -> None:
    cache, store = _loaded_then(15)
    store.failing = True
    for _ in range(2):
        assert cache.get_or_load_many(["a"], store.load_many, ttl=10, stale_ttl=30) == {"a": "a1"}
        wait_until(lambda: not cache._engine.flights)
    stats = cache.stats()
    assert stats["refresh_errors"] == 2 and stats["stale_served"] == 2
    cache.close()
