"""Expiry under load: callers offered at a fixed rate by several processes while a hot key
expires (ttl 1 s), for ``run.py``, ``cluster.py`` and ``swr_matrix.py``. Worker functions live at
module level so spawned processes can import them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import redis.asyncio

from _method import percentile
from cold_keys import _make_async, _make_sync

ctx = multiprocessing.get_context("spawn")


def offer_sync(call: Callable[[], Any], rate: float, count: int) -> tuple[list[float], int]:
    """Offer ``count`` calls at ``rate`` calls/s from a pool of threads (open loop: calls start
    on schedule, whatever the earlier ones do). Returns the latencies and how many raised (a
    peer's bug must not end the whole run)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def one() -> None:
        t0 = time.perf_counter()
        try:
            call()
        except Exception:
            with lock:
                errors[0] += 1
        with lock:
            latencies.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(max_workers=64) as pool:
        began = time.perf_counter()
        for i in range(count):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one)
    return latencies, errors[0]


async def offer_async(
    call: Callable[[], Awaitable[Any]], rate: float, count: int
) -> tuple[list[float], int]:
    """``offer_sync`` with a task per call."""
    latencies: list[float] = []
    errors = [0]

    async def one() -> None:
        t0 = time.perf_counter()
        try:
            await call()
        except Exception:
            errors[0] += 1
        latencies.append(time.perf_counter() - t0)

    began = time.perf_counter()
    tasks = []
    for i in range(count):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    return latencies, errors[0]


def _expiry_worker(
    variant: str,
    url: str,
    ns: str,
    rate: float,
    seconds: float,
    counter_url: str | None,
    start: Any,
    out: Any,
) -> None:
    """Offer ``rate`` calls/s for ``seconds``; puts the latencies and how many calls raised."""
    count = int(rate * seconds)
    if variant.endswith("tasks"):

        async def main() -> tuple[list[float], int]:
            warm, call = _make_async(variant, url, ns, 1.0, 0.1, counter_url)
            await warm()
            await call()  # the key exists before the clock starts
            await asyncio.to_thread(start.wait)
            return await offer_async(call, rate, count)

        out.put(asyncio.run(main()))
        return
    call = _make_sync(variant, url, ns, 1.0, 0.1, counter_url)
    call()
    start.wait()
    out.put(offer_sync(call, rate, count))


def _max_cluster(starts: list[float], window: float) -> int:
    """The most loads that began within ``window`` seconds of each other: loads for one expiry
    start together (a herd), loads for different expiries are a TTL apart."""
    best = 0
    for i, first in enumerate(starts):
        best = max(best, sum(1 for t in starts[i:] if t - first <= window))
    return best


EXPIRY_VARIANTS = ["cachewise threads", "cachewise stale_ttl threads",
                   "cachewise stale_ttl tasks", "dogpile distributed_lock threads",
                   "cashews early tasks", "cashews lock=True tasks",
                   "aiocache cached_stampede tasks"]  # fmt: skip


def run_fleet(
    target: Callable[..., None], args: tuple[Any, ...], processes: int, client: redis.Redis, ns: str
) -> tuple[list[Any], list[float]]:
    """Run ``target(*args, start, out)`` in ``processes`` spawned processes released together by
    the barrier ``start``; returns what each put on ``out``, and when each load started (the
    loaders push the time to ``<ns>:starts``) from the release on."""
    start, out = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    start.wait()
    before = client.llen(f"{ns}:starts")
    replies = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return replies, sorted(float(t) for t in client.lrange(f"{ns}:starts", before, -1))


def expiry_under_load(
    url: str,
    processes: int = 4,
    total_rate: float = 500.0,
    seconds: float = 3.0,
    variants: list[str] = EXPIRY_VARIANTS,
    counter_url: str | None = None,
) -> dict[str, Any]:
    client = redis.Redis.from_url(counter_url or url)
    results: dict[str, Any] = {}
    order = list(variants)
    random.shuffle(order)
    for variant in order:
        ns = f"exp-{variant.split()[0]}-{random.randrange(10**9)}"
        args = (variant, url, ns, total_rate / processes, seconds, counter_url)
        replies, after = run_fleet(_expiry_worker, args, processes, client, ns)
        latencies = [lat for got, _ in replies for lat in got]
        loads = len(after)
        # The herd of the first fill, before the release, counts too (as it always did).
        starts = sorted(float(t) for t in client.lrange(f"{ns}:starts", 0, -1))
        results[variant] = {
            "calls": len(latencies),
            "errors": sum(n for _, n in replies),
            "loads": loads,
            "max_loads_per_expiry": _max_cluster(starts, 0.3),
            "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3,
        }
    return results
