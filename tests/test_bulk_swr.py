"""Stale-while-revalidate in a bulk read: ``get_or_load_many`` serves the values held past their
TTL but within ``stale_ttl`` at once, as a read of one key does, and refreshes them in the
background in one ``load_many`` call (keys loaded together mostly expire together: a call per
key would multiply the store's queries at every expiry). In-process, and on Redis with L1 on
and off, across processes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

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


def test_a_bulk_read_serves_stale_values_while_they_are_refreshed_together() -> None:
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
    assert sorted(store.calls) == [["a", "b"], ["a", "b"], ["c"]]  # one refresh call for both
    assert cache.stats()["refreshes"] == 2
    cache.close()


async def test_an_async_bulk_read_serves_stale_values_while_they_are_refreshed_together() -> None:
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
    assert store.calls == [["a", "b"], ["a", "b"]]
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


def test_with_redis_unreachable_values_loaded_meanwhile_are_served_stale_in_bulk() -> None:
    """Fail-open: what L1 holds (loaded since the outage began) is served stale by a bulk read
    as by a read of one key, and refreshed in one call, with no Redis error reaching the caller."""
    clock = FakeClock()
    cache = Cache("redis://127.0.0.1:1/0", namespace="bulk-down", clock=clock)
    store = Store()

    def bulk(keys: list[str]) -> dict[str, Any]:
        return cache.get_or_load_many(keys, store.load_many, ttl=10, stale_ttl=30)

    assert bulk(["a", "b"]) == {"a": "a1", "b": "b1"}
    clock.advance(15)
    store.version = 2
    assert bulk(["a", "b"]) == {"a": "a1", "b": "b1"}  # stale, served at once
    wait_until(lambda: not cache._engine.flights)
    assert bulk(["a", "b"]) == {"a": "a2", "b": "b2"}
    assert [sorted(call) for call in store.calls] == [["a", "b"], ["a", "b"]]  # one refresh call
    stats = cache.stats()
    assert stats["stale_served"] == 2 and stats["redis_errors"] + stats["short_circuits"] > 0
    cache.close(timeout=5)


# -- on Redis: the shared entries' freshness is the server's clock, so these wait it out ---------

TTL = 0.3  # seconds; the stale window (30 s) is far longer than any test


def _loaded(make: Callable[..., Cache], store: Store, keys: list[str], **options: Any) -> Cache:
    """A cache on the test server whose ``keys`` were loaded and have just gone stale."""
    cache = make(**options)
    assert cache.get_or_load_many(keys, store.load_many, ttl=TTL, stale_ttl=30)
    time.sleep(TTL + 0.1)
    return cache


@pytest.mark.parametrize("l1_maxsize", [1000, 0], ids=["two-tier", "L1 off"])
def test_on_redis_stale_values_are_served_and_refreshed_in_one_call(
    make_cache: Callable[..., Cache], l1_maxsize: int
) -> None:
    store = Store()
    cache = _loaded(make_cache, store, ["a", "b", "c"], l1_maxsize=l1_maxsize)
    store.version, store.held = 2, {"a"}  # the refresh waits: the callers must not
    got = cache.get_or_load_many(["a", "b", "c"], store.load_many, ttl=TTL, stale_ttl=30)
    assert got == {"a": "a1", "b": "b1", "c": "c1"}
    wait_until(lambda: len(store.calls) == 2)
    store.gate.set()
    wait_until(lambda: not cache._engine.flights)
    assert sorted(store.calls[1]) == ["a", "b", "c"] and len(store.calls) == 2
    assert cache.get_many(["a", "b", "c"]) == {"a": "a2", "b": "b2", "c": "c2"}
    stats = cache.stats()
    assert (stats["stale_served"], stats["refreshes"], stats["loads"]) == (3, 3, 6)


async def test_on_redis_an_async_bulk_read_refreshes_in_one_call(
    make_cache: Callable[..., Cache],
) -> None:
    store = Store()
    cache = _loaded(make_cache, store, ["a", "b"], l1_maxsize=0)
    store.version = 2
    got = await cache.aget_or_load_many(["a", "b"], store.load_many, ttl=TTL, stale_ttl=30)
    assert got == {"a": "a1", "b": "b1"}
    for _ in range(200):  # the refresh task runs on this loop
        if not cache._engine.flights:
            break
        await asyncio.sleep(0.01)
    assert store.calls == [["a", "b"], ["a", "b"]]
    assert await cache.aget_many(["a", "b"]) == {"a": "a2", "b": "b2"}


def test_across_processes_one_refresh_loads_and_the_others_wait_for_its_fill(
    make_cache: Callable[..., Cache],
) -> None:
    store = Store()
    first = _loaded(make_cache, store, ["a", "b"], l1_maxsize=0)
    second = make_cache(l1_maxsize=0)  # another process
    store.version, store.held = 2, {"a", "b"}
    assert first.get_or_load_many(["a", "b"], store.load_many, ttl=TTL, stale_ttl=30) == {
        "a": "a1",
        "b": "b1",
    }
    wait_until(lambda: len(store.calls) == 2)  # the first one's refresh holds the leases
    assert second.get_or_load_many(["a", "b"], store.load_many, ttl=TTL, stale_ttl=30) == {
        "a": "a1",
        "b": "b1",
    }
    # The second one's refreshes find the leases taken, and wait for that fill.
    wait_until(lambda: second.stats()["lease_waits"] == 2)
    store.gate.set()
    wait_until(lambda: not first._engine.flights and not second._engine.flights)
    assert len(store.calls) == 2  # the second process loaded nothing: it took the fill
    assert second.get_many(["a", "b"]) == {"a": "a2", "b": "b2"}


def test_a_refresh_that_finds_a_newer_value_keeps_it_and_loads_nothing(
    make_cache: Callable[..., Cache],
) -> None:
    store = Store()
    cache = _loaded(make_cache, store, ["a", "b"], l1_maxsize=0)
    other = make_cache(l1_maxsize=0)
    engine = cache._engine
    refresh_many = engine._refresh_many

    def written_first(targets: Any, stale: Any, *rest: Any) -> Any:
        if stale:  # a write lands between the stale read and the refresh's leases
            other.set("a", "written", ttl=60)
        return refresh_many(targets, stale, *rest)

    engine._refresh_many = written_first  # type: ignore[method-assign]
    store.version = 2
    assert cache.get_or_load_many(["a", "b"], store.load_many, ttl=TTL, stale_ttl=30) == {
        "a": "a1",
        "b": "b1",
    }
    wait_until(lambda: not engine.flights)
    assert store.calls == [["a", "b"], ["b"]]  # "a" was newer already: not loaded again
    assert cache.get_many(["a", "b"]) == {"a": "written", "b": "b2"}
    leases = other._engine.backend.sync_client().keys(f"{engine.space.prefix}lease:*")  # type: ignore[union-attr]
    assert not leases  # the lease taken for "a" was given back, not left to run out


def test_a_failing_bulk_refresh_on_redis_is_logged_and_counted(
    make_cache: Callable[..., Cache], caplog: pytest.LogCaptureFixture
) -> None:
    store = Store()
    cache = _loaded(make_cache, store, ["a", "b"], l1_maxsize=0)
    store.failing = True
    assert cache.get_or_load_many(["a", "b"], store.load_many, ttl=TTL, stale_ttl=30) == {
        "a": "a1",
        "b": "b1",
    }
    wait_until(lambda: not cache._engine.flights)
    assert cache.stats()["refresh_errors"] == 2
    assert "background refresh of ['a', 'b'] failed" in caplog.text


@pytest.mark.parametrize("l1_maxsize", [1000, 0], ids=["two-tier", "L1 off"])
def test_an_invalidation_during_a_bulk_refresh_wins(
    make_cache: Callable[..., Cache], l1_maxsize: int
) -> None:
    store = Store()
    cache = _loaded(make_cache, store, ["a", "b"], l1_maxsize=l1_maxsize)
    other = make_cache(l1_maxsize=l1_maxsize)  # another process, which invalidates
    store.version, store.held = 2, {"a", "b"}
    assert cache.get_or_load_many(["a", "b"], store.load_many, ttl=TTL, stale_ttl=30) == {
        "a": "a1",
        "b": "b1",
    }
    wait_until(lambda: len(store.calls) == 2)  # the refresh is loading version 2
    store.version = 3  # the store changes, and says so
    other.invalidate("a")
    store.gate.set()
    wait_until(lambda: not cache._engine.flights)
    # "a"'s refresh began before the invalidation: what it loaded is stored nowhere.
    assert cache.stats()["fills_refused"] == 1
    store.held = set()
    got = cache.get_or_load_many(["a", "b"], store.load_many, ttl=TTL, stale_ttl=30)
    assert got == {"a": "a3", "b": "b3"}  # "b" as its refresh loaded it, kept
    assert store.calls[2:] == [["a"]]


def test_bulk_reads_of_overlapping_keys_across_processes_load_each_key_once_per_expiry(
    make_cache: Callable[..., Cache],
) -> None:
    """Threads of four caches (L1 on and off) read overlapping sets of keys through several
    expiries: every call gets every key, and each key is loaded once per expiry in all."""
    loads: dict[str, int] = {}
    lock = threading.Lock()

    def load_many(keys: list[str]) -> dict[str, Any]:
        time.sleep(0.02)
        with lock:
            for key in keys:
                loads[key] = loads.get(key, 0) + 1
        return {key: key for key in keys}

    caches = [make_cache(l1_maxsize=size) for size in (1000, 0, 1000, 0)]
    keys = [f"k{i}" for i in range(12)]
    errors: list[BaseException] = []
    began = time.monotonic()
    stop = began + 2.0

    def reader(cache: Cache, seed: int) -> None:
        turned = keys[seed:] + keys[:seed]
        picks = [turned[i : i + 6] for i in range(0, len(keys), 3)]  # overlapping sets
        try:
            while time.monotonic() < stop:
                for wanted in picks:
                    got = cache.get_or_load_many(wanted, load_many, ttl=TTL, stale_ttl=30)
                    assert got == {key: key for key in wanted}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(caches[i % 4], i)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    assert not errors
    assert set(loads) == set(keys)
    # The first load, then at most one refresh per TTL that passed (and one in flight).
    assert max(loads.values()) <= elapsed / TTL + 2
    wait_until(lambda: not any(cache._engine.flights for cache in caches))
    for cache in caches:
        assert cache.stats()["load_errors"] == 0 and cache.stats()["refresh_errors"] == 0
