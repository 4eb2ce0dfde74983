"""Cold keys across processes and what waking a herd costs the machine, run from ``run.py`` (and
``cluster.py``) against a redis-server on loopback. Worker functions live at module level so
spawned processes can import them; loaders count their calls in Redis, so loads are counted
across processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from _method import percentile, summarize
from cachewise import Cache
from cachewise.testing import task_herd, thread_herd

ctx = multiprocessing.get_context("spawn")


# -- many processes ---------------------------------------------------------------------------


def _make_sync(
    variant: str, url: str, ns: str, ttl: float, load_s: float, counter_url: str | None = None
) -> Callable[[], Any]:
    """The call under test; its loads are counted on ``counter_url`` (a plain Redis; the cache's
    own when not given)."""
    counter = redis.Redis.from_url(counter_url or url)
    counter.ping()  # connected before the clock starts, as the cache under test is

    def load_body() -> str:
        # The loader's bookkeeping is one round trip: the list's length is the count of loads.
        counter.rpush(f"{ns}:starts", time.time())
        time.sleep(load_s)
        return "row"

    if variant.startswith("cachewise"):
        stale = 30 if "stale" in variant else None
        cache = Cache(url, namespace=ns)

        @cache.cached(ttl=ttl, stale_ttl=stale)
        def fn(x: int) -> str:
            return load_body()

        cache.get("~connect")
        assert cache._engine.backend.listener.ready.wait(10)  # type: ignore[union-attr]
        return lambda: fn(1)
    if variant.startswith("dogpile"):
        from dogpile.cache import make_region

        host, port = url.split("//")[1].split("/")[0].split(":")
        region = make_region(key_mangler=lambda k: f"{ns}:{k}").configure(
            "dogpile.cache.redis",
            expiration_time=ttl,
            arguments={"host": host, "port": int(port), "distributed_lock": True,
                       "thread_local_lock": False, "redis_expiration_time": 60,
                       "lock_timeout": 5},
        )  # fmt: skip

        @region.cache_on_arguments()
        def dfn(x: int) -> str:
            return load_body()

        return lambda: dfn(1)
    raise ValueError(variant)


def _make_async(
    variant: str, url: str, ns: str, ttl: float, load_s: float, counter_url: str | None = None
) -> Any:
    counter = redis.asyncio.Redis.from_url(counter_url or url)

    async def load_body() -> str:
        await counter.rpush(f"{ns}:starts", time.time())  # as in ``_make_sync``
        await asyncio.sleep(load_s)
        return "row"

    warm, call = _async_variant(variant, url, ns, ttl, load_body)

    async def warmed() -> None:
        await counter.ping()  # connected before the clock starts, as the cache under test is
        await warm()

    return warmed, call


def _async_variant(
    variant: str, url: str, ns: str, ttl: float, load_body: Callable[[], Awaitable[str]]
) -> Any:
    if variant.startswith("cachewise"):
        stale = 30 if "stale" in variant else None
        cache = Cache(url, namespace=ns)

        @cache.cached(ttl=ttl, stale_ttl=stale)
        async def fn(x: int) -> str:
            return await load_body()

        async def warm() -> None:  # connected and subscribed before the clock starts
            await cache.aget("~connect")
            listener = cache._engine.backend.listener  # type: ignore[union-attr]
            await asyncio.to_thread(listener.ready.wait, 10)

        return warm, lambda: fn(1)
    if variant.startswith("cashews"):
        from cashews import Cache as Cashews

        peer = Cashews()
        peer.setup(url)
        if "early" in variant:
            decorate = peer.early(ttl=30, early_ttl=ttl, key=f"{ns}:early")
        else:
            decorate = peer(ttl=ttl, lock=True, key=f"{ns}:locked")

        @decorate
        async def cfn(x: int) -> str:
            return await load_body()

        async def cwarm() -> None:
            await peer.get(f"{ns}:~connect")

        return cwarm, lambda: cfn(1)
    if variant.startswith("aiocache"):
        from aiocache import Cache as AioCache
        from aiocache import cached_stampede

        host, port = url.split("//")[1].split("/")[0].split(":")

        @cached_stampede(
            lease=2, ttl=ttl, cache=AioCache.REDIS, endpoint=host, port=int(port), namespace=ns
        )
        async def afn(x: int) -> str:
            return await load_body()

        async def awarm() -> None:
            await afn.cache.get(f"{ns}:~connect")  # type: ignore[attr-defined]

        return awarm, lambda: afn(1)
    raise ValueError(variant)


def _cold_worker(
    variant: str, url: str, ns: str, callers: int, counter_url: str | None, start: Any, out: Any
) -> None:
    latencies: list[float] = []
    if variant.endswith("tasks"):

        async def main() -> list[float]:
            warm, call = _make_async(variant, url, ns, 60, 0.05, counter_url)
            await warm()
            await asyncio.to_thread(start.wait)
            return await task_herd(callers, call)

        latencies = asyncio.run(main())
    else:
        call = _make_sync(variant, url, ns, 60, 0.05, counter_url)
        start.wait()
        latencies = thread_herd(callers, call)
    out.put(latencies)


COLD_VARIANTS = ["cachewise threads", "cachewise tasks", "cashews lock=True tasks",
                 "dogpile distributed_lock threads", "aiocache cached_stampede tasks"]  # fmt: skip


def cold_key_fleet(
    url: str,
    rounds: int,
    processes: int = 4,
    callers: int = 25,
    variants: list[str] = COLD_VARIANTS,
    counter_url: str | None = None,
) -> dict[str, Any]:
    client = redis.Redis.from_url(counter_url or url)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(rounds):
        order = list(variants)
        random.shuffle(order)
        for variant in order:
            ns = f"cold{r}-{variant.split()[0]}-{random.randrange(10**9)}"
            start, out = ctx.Barrier(processes), ctx.Queue()
            args = (variant, url, ns, callers, counter_url, start, out)
            procs = [ctx.Process(target=_cold_worker, args=args) for _ in range(processes)]
            for p in procs:
                p.start()
            latencies = [lat for _ in procs for lat in out.get(timeout=120)]
            for p in procs:
                p.join(30)
            loads = client.llen(f"{ns}:starts")
            results[variant].append(
                {"loads": loads, "p99_ms": percentile(latencies, 0.99) * 1e3,
                 "p99_over_load_ms": percentile(latencies, 0.99) * 1e3 - 50.0}
            )  # fmt: skip
    return {
        variant: {
            "rounds": len(runs),
            "loads_max": max(run["loads"] for run in runs),
            "p99_ms": summarize([run["p99_ms"] for run in runs]),
            "p99_over_load_ms": summarize([run["p99_over_load_ms"] for run in runs]),
        }
        for variant, runs in results.items()
    }


# -- what waking a herd costs the machine, with no cache ----------------------------------------


def _wake_threads(callers: int, instant: float) -> list[float]:
    """One round of ``_wake_worker`` with threads: each one's delay from the set to waking."""
    event, woke, ready = threading.Event(), [], threading.Barrier(callers + 1)

    def one() -> None:
        ready.wait()
        event.wait()
        woke.append(time.time())

    threads = [threading.Thread(target=one) for _ in range(callers)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(max(0.0, instant - time.time()))
    set_at = time.time()
    event.set()
    for thread in threads:
        thread.join()
    return [w - set_at for w in woke]


async def _wake_tasks(callers: int, instant: float) -> list[float]:
    """``_wake_threads`` with tasks of one loop."""
    event, woke = asyncio.Event(), []

    async def one() -> None:
        await event.wait()
        woke.append(time.time())

    tasks = [asyncio.ensure_future(one()) for _ in range(callers)]
    await asyncio.sleep(max(0.0, instant - time.time()))
    set_at = time.time()
    event.set()
    await asyncio.gather(*tasks)
    return [w - set_at for w in woke]


def _wake_worker(kind: str, callers: int, rounds: int, sync: Any, base: Any, out: Any) -> None:
    """Each round: ``callers`` threads (or tasks) of this process wait on one event, set at an
    instant shared by every process. Puts each caller's delay from the set to its waking."""
    sync.wait()  # the parent sets ``base`` once everyone is ready
    sync.wait()
    delays: list[float] = []
    for i in range(rounds):
        instant = base.value + 0.2 * i
        if kind == "threads":
            delays += _wake_threads(callers, instant)
        else:
            delays += asyncio.run(_wake_tasks(callers, instant))
    out.put(delays)


def wake_floor(rounds: int, processes: int = 4, callers: int = 25) -> dict[str, Any]:
    """The cold-key scenario's share that no cache can avoid: ``processes`` × ``callers``
    threads (or tasks) blocked on one event per process, all set at one instant. Its p99 over
    the callers is the least any cache adds to the loader when its callers are woken
    together on this machine."""
    results: dict[str, Any] = {}
    for kind in ("threads", "tasks"):
        sync, base, out = ctx.Barrier(processes + 1), ctx.Value("d", 0.0), ctx.Queue()
        procs = [ctx.Process(target=_wake_worker, args=(kind, callers, rounds, sync, base, out))
                 for _ in range(processes)]  # fmt: skip
        for p in procs:
            p.start()
        sync.wait()
        base.value = time.time() + 0.3
        sync.wait()
        per_process = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        p99s = [
            percentile([d[r * callers + c] for d in per_process for c in range(callers)], 0.99)
            * 1e3
            for r in range(rounds)
        ]
        results[f"no cache: waking the {kind}"] = {"rounds": rounds, "p99_ms": summarize(p99s)}
    return results
