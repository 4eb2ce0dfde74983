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


def herd(
    url: str,
    namespace: str,
    callers: int,
    use_tasks: bool,
    start: Any,
    out: Any,
    counter_url: str | None = None,
) -> None:
    """``callers`` threads (or tasks) call one cold key at once; report their latencies. Loads
    are counted on ``counter_url`` (a plain Redis), or on ``url``."""
    cache = Cache(url, namespace=namespace)
    cache.get("~warm-up")  # connect and subscribe before the herd starts
    listener = cache._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None and listener.ready.wait(10)
    load = _counting_loader(counter_url or url, namespace, 0.05)
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
        assert cache._engine.l1.held(f"{namespace}:{{k}}") is not None, value
        listener = cache._engine.backend.listener  # type: ignore[union-attr]
        assert listener is not None and listener.ready.wait(10)
        ready.put("holding")
        assert dropped.wait(10)
        assert cache._engine.l1.held(f"{namespace}:{{k}}") is None
    out.put(heard_at)
    cache.close()


# -- write-behind: a "store" kept in Redis, so every process sees the same rows ---------------

_store: dict[str, Any] = {}


def use_store(url: str, namespace: str, hang: bool = False) -> redis.Redis:
    """Point ``store_row`` at this test's rows; ``hang`` makes every store write block forever."""
    client = redis.Redis.from_url(url)
    _store.update(client=client, ns=namespace, hang=hang, fail=set(), flaky={})
    return client


def store_row(row: int, value: str) -> None:
    """The store write of the write-behind tests: logs every call, keeps the last value."""
    if _store["hang"]:
        time.sleep(3600)
    gate = _store.get("blocking", {}).pop(value, None)  # blocks the first such call only
    if gate is not None:
        entered, release = gate
        entered.set()
        release.wait(30)
    client, ns = _store["client"], _store["ns"]
    client.incr(f"{ns}-store:calls")
    if row in _store["fail"]:
        raise RuntimeError(f"cannot write {row}")
    if _store["flaky"].get(row, 0) > 0:
        _store["flaky"][row] -= 1
        raise ConnectionError(f"store busy for {row}")
    client.rpush(f"{ns}-store:log:{row}", value)
    client.hset(f"{ns}-store:rows", str(row), value)


def store_rows(calls: list[Any]) -> None:
    """A batch writer for ``store_row``: one store call for a whole batch."""
    client, ns = _store["client"], _store["ns"]
    client.incr(f"{ns}-store:batches")
    for call in calls:
        store_row(*call.args, **call.kwargs)


def rows_cache(url: str, namespace: str, batch: bool = False, **options: Any) -> Any:
    """A cache whose ``get_row`` reads the store and whose ``save`` writes behind it."""
    cache = Cache(url, namespace=namespace, **options)
    client = _store["client"]

    @cache.cached(ttl=60)
    def get_row(row: int) -> str | None:
        client.incr(f"{namespace}-store:reads")
        found = client.hget(f"{namespace}-store:rows", str(row))
        return found.decode() if found is not None else None

    save = cache.write_behind(
        get_row,
        args=lambda row, value: row,
        value=lambda row, value: value,
        batch=store_rows if batch else None,
    )(store_row)
    return cache, get_row, save


def enqueue_then_hang(url: str, namespace: str, writes: int, queued: Any) -> None:
    """Queues ``writes`` writes to 25 rows; its flusher takes them and hangs in the store."""
    use_store(url, namespace, hang=True)
    _cache, _, save = rows_cache(url, namespace, write_behind_claim_idle=0.5)
    for i in range(writes):
        save(i % 25, f"v{i}")
    queued.set()
    time.sleep(3600)


def finish_writes(url: str, namespace: str, out: Any) -> None:
    """Registers the same writer and flushes what a killed process left."""
    use_store(url, namespace)
    cache, _, _ = rows_cache(url, namespace, write_behind_claim_idle=0.5)
    report = cache.flush(timeout=60)
    out.put((report.written, report.pending))
    cache.close()


async def astore_row(row: int, value: str) -> None:
    """The async store write: keeps the last value of each row."""
    await _store["aclient"].hset(f"{_store['ns']}-store:rows", str(row), value)
