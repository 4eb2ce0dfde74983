"""Stale-while-revalidate and probabilistic early refresh, with a fake clock."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from cachewise import Cache
from cachewise.testing import FakeClock

from .conftest import caches
from .test_concurrency import await_until, wait_until


class Source:
    """A loader whose next value and whose blocking the test controls."""

    def __init__(self) -> None:
        self.version = 0
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self) -> str:
        self.calls += 1
        assert self.gate.wait(10)
        if self.fail:
            raise ConnectionError("origin down")
        self.version += 1
        return f"v{self.version}"


def test_stale_value_is_served_at_once_with_one_refresh(cache: Cache, clock: FakeClock) -> None:
    src = Source()
    assert cache.get_or_load("k", src, ttl=10, stale_ttl=30) == "v1"
    clock.advance(15)  # stale, within the stale window
    src.gate.clear()  # the refresh will block
    for _ in range(20):
        assert cache.get_or_load("k", src, ttl=10, stale_ttl=30) == "v1"
    wait_until(lambda: src.calls == 2)
    stats = cache.stats()
    assert stats["refreshes"] == 1 and stats["stale_served"] == 20
    src.gate.set()
    wait_until(lambda: cache.get("k") == "v2")
    assert cache.get_or_load("k", src, ttl=10, stale_ttl=30) == "v2"
    assert src.calls == 2


def test_failed_refresh_keeps_serving_stale_until_the_window_ends(
    cache: Cache, clock: FakeClock
) -> None:
    src = Source()
    cache.get_or_load("k", src, ttl=10, stale_ttl=30)
    src.fail = True
    clock.advance(15)
    assert cache.get_or_load("k", src, ttl=10, stale_ttl=30) == "v1"
    wait_until(lambda: cache.stats()["refresh_errors"] == 1)
    assert cache.get_or_load("k", src, ttl=10, stale_ttl=30) == "v1"  # still served
    clock.advance(25)  # past stale_ttl: gone, the caller waits for a load and sees its error
    with pytest.raises(ConnectionError):
        cache.get_or_load("k", src, ttl=10, stale_ttl=30)
    src.fail = False
    assert cache.get_or_load("k", src, ttl=10, stale_ttl=30) == "v2"


async def test_async_stale_value_is_served_with_one_background_task(
    cache: Cache, clock: FakeClock
) -> None:
    release = asyncio.Event()
    calls: list[int] = []

    @cache.cached(ttl=10, stale_ttl=30)
    async def feed(user: int) -> str:
        calls.append(user)
        if len(calls) > 1:
            await release.wait()
        return f"feed{len(calls)}"

    assert await feed(7) == "feed1"
    clock.advance(11)
    results = await asyncio.gather(*(feed(7) for _ in range(50)))
    assert results == ["feed1"] * 50
    await await_until(lambda: len(calls) == 2)
    release.set()
    await await_until(lambda: cache.stats()["loads"] == 2)
    assert await feed(7) == "feed2" and len(calls) == 2


def test_early_refresh_uses_the_measured_load_time(clock: FakeClock, monkeypatch: Any) -> None:
    cache = Cache(clock=clock, ttl_jitter=0, early_refresh_beta=1.0)
    calls: list[int] = []

    def load() -> str:
        calls.append(1)
        clock.advance(2.0)  # this load "takes" 2 s of cache time
        return f"v{len(calls)}"

    assert cache.get_or_load("k", load, ttl=100) == "v1"
    entry = cache._engine.explicit["k"]
    assert entry.load_time == pytest.approx(2.0)
    # draw -> 1 - random(): make ln(draw) = -1, so XFetch fires when 2 s from expiry.
    import math

    monkeypatch.setattr("cachewise.engine.read.random.random", lambda: 1 - math.exp(-1))
    clock.advance(entry.fresh_until - clock() - 2.5)
    assert cache.get_or_load("k", load, ttl=100) == "v1"  # 2.5 s left: no refresh
    assert len(calls) == 1
    clock.advance(0.6)  # 1.9 s left: refresh starts in the background, old value served
    assert cache.get_or_load("k", load, ttl=100) == "v1"
    wait_until(lambda: cache.stats()["early_refreshes"] == 1 and cache.stats()["loads"] == 2)
    assert cache.get("k") == "v2"


def test_early_refresh_off_with_beta_zero(clock: FakeClock) -> None:
    cache = Cache(clock=clock, ttl_jitter=0, early_refresh_beta=0)
    calls: list[int] = []

    def load() -> int:
        calls.append(1)
        clock.advance(50)
        return 1

    cache.get_or_load("k", load, ttl=100)
    clock.advance(49)
    cache.get_or_load("k", load, ttl=100)
    assert len(calls) == 1 and cache.stats()["early_refreshes"] == 0


def test_a_copy_of_another_process_load_waits_a_little_for_its_refresh(
    redis_server: Any, namespace: str
) -> None:
    """At expiry, the process that loaded an entry refreshes it; another process' copy is
    served stale for two of its load times first (the refresh's notification should replace it),
    and only then does that process refresh it itself."""
    clock = FakeClock()
    with caches(redis_server.url, namespace=namespace, clock=clock, ttl_jitter=0,
                early_refresh_beta=0) as make:  # fmt: skip
        a, b = make(), make()
        loads: list[str] = []

        def load(x: int) -> int:
            loads.append("load")
            clock.advance(1.0)  # a load of one second
            return x

        load.__qualname__ = "shared_load"
        fa = a.cached(ttl=10, stale_ttl=60)(load)
        fb = b.cached(ttl=10, stale_ttl=60)(load)
        assert fa(1) == 1 and fb(1) == 1 and loads == ["load"]  # b took a's value
        clock.advance(10.5)  # both copies stale
        assert fb(1) == 1
        assert b.stats()["refreshes"] == 0 and b.stats()["stale_served"] == 1
        clock.advance(2.0)  # past two load times: b asks Redis itself
        assert fb(1) == 1
        assert b.stats()["refreshes"] == 1
