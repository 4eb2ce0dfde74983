"""Stale-while-revalidate in every configuration: within ``stale_ttl`` after expiry no caller
waits for a loader, and exactly one refresh runs fleet-wide.

The loader of the refresh blocks on a gate that opens only after every caller has returned, so a
caller that waited for it would never return: the test fails on a hang, not on a timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cachewise import Cache

from .conftest import caches
from .test_concurrency import wait_until
from .test_swr import Source

TTL = 0.3
STALE_TTL = 30.0
CALLS = 20


def configurations() -> Iterator[Any]:
    for mode in ("sync", "async"):
        for tier in ("in-process", "redis-only", "two-tier"):
            for processes in (1, 2):
                if tier == "in-process" and processes == 2:
                    continue  # nothing is shared: each process is its own one-process case
                for beta in (0.0, 1.0):
                    for failing in (False, True):
                        yield pytest.param(
                            mode, tier, processes, beta, failing,
                            id=f"{mode}-{tier}-{processes}p-beta{beta:g}"
                            + ("-failing" if failing else ""),
                        )  # fmt: skip


@pytest.fixture
def make(redis_server: Any, namespace: str) -> Iterator[Callable[..., Cache]]:
    with caches(redis_server.url, namespace=namespace, ttl_jitter=0) as build:
        yield build


@pytest.mark.parametrize(("mode", "tier", "processes", "beta", "failing"), list(configurations()))
def test_no_caller_waits_for_a_refresh_and_one_refresh_runs(
    make: Callable[..., Cache],
    mode: str,
    tier: str,
    processes: int,
    beta: float,
    failing: bool,
) -> None:
    origin = Source()
    if tier == "in-process":
        fleet = [Cache(namespace="swr", ttl_jitter=0, early_refresh_beta=beta)]
    else:
        l1 = 0 if tier == "redis-only" else 1000
        fleet = [make(l1_maxsize=l1, early_refresh_beta=beta) for _ in range(processes)]
    try:
        functions = [decorate(cache, origin, mode) for cache in fleet]
        call = caller(mode)
        assert [call(f, 1) for f in functions] == ["v1"] * len(fleet)
        assert origin.calls == 1  # the other processes read it from Redis

        time.sleep(TTL + 0.05)  # stale now, well inside stale_ttl
        origin.gate.clear()
        origin.fail = failing
        before = origin.calls
        served = run_bounded(lambda: [call(f, 1) for _ in range(CALLS) for f in functions])
        assert served == ["v1"] * CALLS * len(fleet)  # every caller got the stale value
        wait_until(lambda: origin.calls == before + 1)
        time.sleep(0.05)
        assert origin.calls == before + 1  # one refresh fleet-wide
        stale = sum(cache.stats()["stale_served"] for cache in fleet)
        assert stale >= CALLS * len(fleet)

        origin.gate.set()
        if failing:
            wait_until(lambda: sum(c.stats()["refresh_errors"] for c in fleet) >= 1)
            # The stale value keeps being served, and the next caller may retry.
            assert run_bounded(lambda: [call(f, 1) for f in functions]) == ["v1"] * len(fleet)
            origin.fail = False
        wait_until(
            lambda: all(call(f, 1).startswith("v") and call(f, 1) != "v1" for f in functions)
        )
    finally:
        origin.gate.set()
        for cache in fleet:
            cache.close(timeout=5)


def decorate(cache: Cache, origin: Source, mode: str) -> Callable[..., Any]:
    if mode == "sync":

        @cache.cached(ttl=TTL, stale_ttl=STALE_TTL)
        def get(x: int) -> str:
            return origin()

        return get

    @cache.cached(ttl=TTL, stale_ttl=STALE_TTL)
    async def aget(x: int) -> str:
        return await asyncio.to_thread(origin)

    return aget


def caller(mode: str) -> Callable[[Callable[..., Any], int], Any]:
    """Call a decorated function; async ones on one event loop kept for the whole test (its
    background refreshes run there)."""
    if mode == "sync":
        return lambda f, x: f(x)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(f: Callable[..., Any], x: int) -> Any:
        return asyncio.run_coroutine_threadsafe(f(x), loop).result(30)

    return call


def run_bounded(fn: Callable[[], Any], seconds: float = 10.0) -> Any:
    """``fn()`` in a thread: a caller that waited for the gated loader would never return."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, "a caller waited for the refresh instead of getting the stale value"
    return out[0]
