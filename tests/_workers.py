"""Code that runs in spawned processes for the multi-process tests (importable by name)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import redis

from cachewise import Cache, InvalidationEvent
from cachewise.testing import task_herd, thread_herd


def _counting_loader(url: str, namespace: str, load_s: float) -> Any:
    client = redis.Redis.from_url(url)

    def load() -> str:
        client.incr(f"{namespace}-test:loads")
        time.sleep(load_s)
        return "value"

    return load


def herd(url: str, namespace: str, callers: int, use_tasks: bool, start: Any, out: Any) -> None:
    """``callers`` threads (or tasks) call one cold key at once; report their latencies."""
    cache = Cache(url, namespace=namespace)
    cache.get("~warm-up")  # connect and subscribe before the herd starts
    listener = cache._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None and listener.ready.wait(10)
    load = _counting_loader(url, namespace, 0.05)
    start.wait()
    if use_tasks:

        async def aload() -> str:
            await asyncio.sleep(0)
            return load()  # a sync loader called from async code is allowed

        async def one() -> None:
            assert await cache.aget_or_load("cold", aload, ttl=30) == "value"

        latencies = asyncio.run(task_herd(callers, one))
    else:

        def caller() -> None:
            assert cache.get_or_load("cold", load, ttl=30) == "value"

        latencies = thread_herd(callers, caller)
    out.put(latencies)
    cache.close()


def slow_holder(url: str, namespace: str, started: Any) -> None:
    """Takes the lease of a cold key and loads forever (until it is killed)."""
    cache = Cache(url, namespace=namespace, lease_ttl=0.5)

    def never() -> str:
        started.set()
        time.sleep(3600)
        return "never"

    cache.get_or_load("k", never, ttl=30)


def waiter(url: str, namespace: str, out: Any) -> None:
    cache = Cache(url, namespace=namespace, lease_ttl=0.5)
    began = time.monotonic()
    value = cache.get_or_load("k", lambda: "taken over", ttl=30)
    out.put((value, time.monotonic() - began, cache.stats()["lease_waits"]))


def holder_of_copies(url: str, namespace: str, rounds: int, ready: Any, out: Any) -> None:
    """Keeps the key in its L1 and reports when each remote invalidation dropped it."""
    cache = Cache(url, namespace=namespace)
    dropped = threading.Event()
    heard_at: list[float] = []

    @cache.on_invalidate
    def heard(event: InvalidationEvent) -> None:
        if event.origin == "remote":
            heard_at.append(time.monotonic())
            dropped.set()

    for _ in range(rounds):
        dropped.clear()
        value = cache.get_or_load("k", lambda: "from-store", ttl=60)
        assert cache._engine.l1.held(f"{namespace}:k") is not None, value
        listener = cache._engine.backend.listener  # type: ignore[union-attr]
        assert listener is not None and listener.ready.wait(10)
        ready.put("holding")
        assert dropped.wait(10)
        assert cache._engine.l1.held(f"{namespace}:k") is None
    out.put(heard_at)
    cache.close()
