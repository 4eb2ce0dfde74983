"""``python -m cachewise demo``: a thundering herd with and without cachewise, measured.

Uses Redis when ``REDIS_URL`` is set; otherwise starts a ``redis-server`` of its own on a free
loopback port when one is installed (and stops it by its pid); otherwise runs in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

from . import Cache
from .testing import RedisServer, task_herd


class Database:
    """A stand-in origin: each query takes ``load_s`` and only ``pool`` run at once, as with a
    real connection pool, so a herd of queries queues up behind each other."""

    def __init__(self, load_s: float, pool: int) -> None:
        self.load_s = load_s
        self.pool = asyncio.Semaphore(pool)
        self.queries = 0

    async def query(self, key: str) -> dict[str, Any]:
        self.queries += 1
        async with self.pool:
            await asyncio.sleep(self.load_s)
        return {"key": key, "at": time.time()}


def _pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _row(label: str, loads: int, latencies: list[float]) -> str:
    p50, p99 = _pct(latencies, 0.50) * 1e3, _pct(latencies, 0.99) * 1e3
    return f"  {label:<44} {loads:>6} {p50:>9.1f} {p99:>9.1f}"


@contextlib.contextmanager
def _redis() -> Iterator[tuple[str | None, str]]:
    """``(url, what)``: REDIS_URL, a redis-server started here, or none (in-process)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url, f"Redis at REDIS_URL ({url.split('@')[-1]})"
        return
    if shutil.which("redis-server") is None:
        yield None, "in-process only (no REDIS_URL, no redis-server installed)"
        return
    with RedisServer() as server:  # stopped by its pid, never by name
        yield server.url, f"a redis-server started for this demo on :{server.port}"


def _fleet_worker(
    url: str, namespace: str, callers: int, load_s: float, start: Any, out: Any
) -> None:
    """One process of the fleet: ``callers`` tasks ask one cold key at once."""
    import redis

    counter = redis.Redis.from_url(url)
    cache = Cache(url, namespace=namespace)

    async def query() -> str:
        counter.incr(f"{namespace}-demo:queries")
        await asyncio.sleep(load_s)
        return "row"

    async def run() -> list[float]:
        await cache.aget("~connect")
        listener = cache._engine.backend.listener  # type: ignore[union-attr]
        if listener is not None:
            await asyncio.to_thread(listener.ready.wait, 5)
        await asyncio.to_thread(start.wait)
        return await task_herd(callers, lambda: cache.aget_or_load("fleet", query, ttl=30))

    out.put(asyncio.run(run()))
    cache.close()


def _fleet(url: str, processes: int, callers: int, load_s: float) -> tuple[int, list[float]]:
    ctx = multiprocessing.get_context("spawn")
    namespace = f"demo-fleet-{os.getpid()}-{time.monotonic_ns()}"
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_fleet_worker, args=(url, namespace, callers, load_s, start, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    latencies = [lat for _ in procs for lat in out.get(timeout=120)]
    for p in procs:
        p.join(30)
    import redis

    queries = int(redis.Redis.from_url(url).get(f"{namespace}-demo:queries") or 0)
    return queries, latencies


async def demo(
    callers: int, load_ms: float, pool: int, ttl: float, url: str | None, backend: str
) -> None:
    load_s = load_ms / 1000
    print(f"cachewise demo: {callers} concurrent callers on one key; the origin takes "
          f"{load_ms:.0f} ms per query, {pool} at a time.")  # fmt: skip
    print(f"backend: {backend}\n")
    rows: list[str] = []
    steps = 6 if url else 5

    def step(n: int, text: str) -> None:
        print(f"[{n}/{steps}] {text} ...", flush=True)

    db = Database(load_s, pool)
    step(1, "no cache, cold key: every caller queries the origin")
    lat = await task_herd(callers, lambda: db.query("user:42"))
    rows.append(_row("no cache (cold key)", db.queries, lat))

    cache = Cache(url, namespace=f"demo-{os.getpid()}-{time.monotonic_ns()}")
    db = Database(load_s, pool)

    @cache.cached(ttl=ttl)
    async def get_user(user_id: int) -> dict[str, Any]:
        return await db.query(f"user:{user_id}")

    step(2, "cachewise, cold key: one caller loads, the others wait for it")
    lat = await task_herd(callers, lambda: get_user(42))
    rows.append(_row("cachewise (cold key)", db.queries, lat))

    step(3, "cachewise, warm key: in-process hits")
    before = db.queries
    lat = await task_herd(callers, lambda: get_user(42))
    rows.append(_row("cachewise (warm key)", db.queries - before, lat))

    step(4, f"cachewise, at expiry (waiting {ttl:.1f} s for the key to expire)")
    await asyncio.sleep(ttl * 1.05)
    before = db.queries
    lat = await task_herd(callers, lambda: get_user(42))
    rows.append(_row("cachewise at expiry", db.queries - before, lat))

    swr_db = Database(load_s, pool)

    @cache.cached(ttl=ttl, stale_ttl=60)
    async def get_feed(user_id: int) -> dict[str, Any]:
        return await swr_db.query(f"feed:{user_id}")

    step(5, "cachewise with stale_ttl, at expiry: the stale value is served at once")
    await get_feed(42)
    await asyncio.sleep(ttl * 1.05)
    before = swr_db.queries
    lat = await task_herd(callers, lambda: get_feed(42))
    await asyncio.sleep(load_s * 2)  # let the one background refresh land
    rows.append(_row("cachewise + stale_ttl at expiry", swr_db.queries - before, lat))

    if url:
        fleet = 4
        step(6, f"cachewise across {fleet} processes x {callers // fleet} callers (shared Redis)")
        queries, lat = await asyncio.to_thread(_fleet, url, fleet, max(callers // fleet, 1), load_s)
        rows.append(_row(f"cachewise, {fleet} processes (cold key)", queries, lat))
    cache.close()

    print(f"\n  {'scenario':<44} {'loads':>6} {'p50 ms':>9} {'p99 ms':>9}")
    print("\n".join(rows))
    stats = cache.stats()
    print(f"\ncache stats: loads={stats['loads']} coalesced_waits={stats['coalesced_waits']} "
          f"l1_hits={stats['l1_hits']} stale_served={stats['stale_served']} "
          f"refreshes={stats['refreshes']}")  # fmt: skip
    print(f"\nWithout a cache, {callers} callers made {callers} queries and the last waited for "
          f"the pool to drain; with cachewise one query ran ({load_ms:.0f} ms) and everyone "
          "shared it" + (", in every process." if url else "."))  # fmt: skip


def add_demo(sub: Any) -> None:
    """The ``demo`` command of the console script (``cli``)."""
    run = sub.add_parser("demo", help="a thundering herd with and without cachewise")
    run.add_argument("--callers", type=int, default=1000)
    run.add_argument("--load-ms", type=float, default=50.0)
    run.add_argument("--pool", type=int, default=20, help="origin queries that run at once")
    run.add_argument("--ttl", type=float, default=1.0)


def run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.callers < 1 or args.load_ms <= 0 or args.pool < 1 or args.ttl <= 0:
        parser.error("--callers, --load-ms, --pool and --ttl must be positive")
    with _redis() as (url, backend):
        asyncio.run(demo(args.callers, args.load_ms, args.pool, args.ttl, url, backend))
    return 0
