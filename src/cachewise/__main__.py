"""``python -m cachewise demo``: a thundering herd with and without cachewise, measured."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import Cache


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


async def _herd(n: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    """Start ``n`` callers at once; return each one's latency in seconds."""

    async def one() -> float:
        started = time.perf_counter()
        await call()
        return time.perf_counter() - started

    return list(await asyncio.gather(*(one() for _ in range(n))))


def _row(label: str, loads: int, latencies: list[float]) -> str:
    p50, p99 = _pct(latencies, 0.50) * 1e3, _pct(latencies, 0.99) * 1e3
    return f"  {label:<44} {loads:>6} {p50:>9.1f} {p99:>9.1f}"


def _backend_note() -> str:
    if os.environ.get("REDIS_URL"):
        return "REDIS_URL is set, but the Redis tier is not in this version: running in-process"
    if shutil.which("redis-server"):
        return "redis-server is installed, but the Redis tier is not in this version: in-process"
    return "no Redis: running in-process"


async def demo(callers: int, load_ms: float, pool: int, ttl: float) -> None:
    load_s = load_ms / 1000
    print(f"cachewise demo: {callers} concurrent callers on one key; the origin takes "
          f"{load_ms:.0f} ms per query, {pool} at a time.")  # fmt: skip
    print(f"backend: {_backend_note()}\n")
    rows: list[str] = []

    def step(n: int, text: str) -> None:
        print(f"[{n}/5] {text} ...", flush=True)

    db = Database(load_s, pool)
    step(1, "no cache, cold key: every caller queries the origin")
    lat = await _herd(callers, lambda: db.query("user:42"))
    rows.append(_row("no cache (cold key)", db.queries, lat))

    cache = Cache(namespace="demo")
    db = Database(load_s, pool)

    @cache.cached(ttl=ttl)
    async def get_user(user_id: int) -> dict[str, Any]:
        return await db.query(f"user:{user_id}")

    step(2, "cachewise, cold key: one caller loads, the others wait for it")
    lat = await _herd(callers, lambda: get_user(42))
    rows.append(_row("cachewise (cold key)", db.queries, lat))

    step(3, "cachewise, warm key: in-process hits")
    before = db.queries
    lat = await _herd(callers, lambda: get_user(42))
    rows.append(_row("cachewise (warm key)", db.queries - before, lat))

    step(4, f"cachewise, at expiry (waiting {ttl:.1f} s for the key to expire)")
    await asyncio.sleep(ttl * 1.05)
    before = db.queries
    lat = await _herd(callers, lambda: get_user(42))
    rows.append(_row("cachewise at expiry", db.queries - before, lat))

    swr_db = Database(load_s, pool)

    @cache.cached(ttl=ttl, stale_ttl=60)
    async def get_feed(user_id: int) -> dict[str, Any]:
        return await swr_db.query(f"feed:{user_id}")

    step(5, "cachewise with stale_ttl, at expiry: the stale value is served at once")
    await get_feed(42)
    await asyncio.sleep(ttl * 1.05)
    before = swr_db.queries
    lat = await _herd(callers, lambda: get_feed(42))
    await asyncio.sleep(load_s * 2)  # let the one background refresh land
    rows.append(_row("cachewise + stale_ttl at expiry", swr_db.queries - before, lat))

    print(f"\n  {'scenario':<44} {'loads':>6} {'p50 ms':>9} {'p99 ms':>9}")
    print("\n".join(rows))
    stats = cache.stats()
    print(f"\ncache stats: loads={stats['loads']} coalesced_waits={stats['coalesced_waits']} "
          f"l1_hits={stats['l1_hits']} stale_served={stats['stale_served']} "
          f"refreshes={stats['refreshes']}")  # fmt: skip
    median_load = statistics.median([load_s])
    print(f"\nWithout a cache, {callers} callers made {callers} queries and the last waited for "
          f"the pool to drain; with cachewise one query ran ({median_load * 1e3:.0f} ms) and "
          "everyone shared it.")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cachewise")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("demo", help="a thundering herd with and without cachewise")
    run.add_argument("--callers", type=int, default=1000)
    run.add_argument("--load-ms", type=float, default=50.0)
    run.add_argument("--pool", type=int, default=20, help="origin queries that run at once")
    run.add_argument("--ttl", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.callers < 1 or args.load_ms <= 0 or args.pool < 1 or args.ttl <= 0:
        parser.error("--callers, --load-ms, --pool and --ttl must be positive")
    asyncio.run(demo(args.callers, args.load_ms, args.pool, args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
