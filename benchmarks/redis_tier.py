"""Redis-tier scenarios, run from ``run.py`` against a redis-server it starts on loopback.

Peers (dogpile.cache, cashews) are used through their documented APIs with the option that gives
them stampede protection. Loaders count their calls in Redis, so loads are counted across
processes. Worker functions live at module level so spawned processes can import them.
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

import msgpack
import redis
import redis.asyncio

from _method import ainterleaved, arate, interleaved, medians, percentile, rate, ratio, summarize
from cachewise import Cache
from cachewise.testing import task_herd, thread_herd

ctx = multiprocessing.get_context("spawn")


# -- hit cost ---------------------------------------------------------------------------------

VALUE = {"id": 42, "name": "ada", "roles": ["admin", "dev"], "score": 3.5}


def hit_cost(url: str, rounds: int, number: int) -> dict[str, Any]:
    raw = redis.Redis.from_url(url)
    raw.set("bench-raw", msgpack.packb(VALUE))
    l2 = Cache(url, namespace="bench-l2", l1_maxsize=0)
    l1 = Cache(url, namespace="bench-l1")
    l2.set("k", VALUE, ttl=3600)
    l1.set("k", VALUE, ttl=3600)

    def floor() -> Any:
        return msgpack.unpackb(raw.get("bench-raw"))

    @l1.cached(ttl=3600)
    def l1_hit(x: int) -> Any:
        return VALUE

    l1_hit(1)
    variants = {
        "raw GET + unpackb": floor,
        "cachewise L2 hit (L1 off)": lambda: l2.get_or_load("k", _never, ttl=3600),
        "cachewise L1 hit (@cached)": lambda: l1_hit(1),
        "dogpile.cache redis region hit": _dogpile_hit(url),
    }
    per_round = interleaved(variants, rounds, lambda fn: rate(fn, number))

    async def async_rounds() -> list[dict[str, float]]:
        araw = redis.asyncio.Redis.from_url(url)
        al2 = Cache(url, namespace="bench-l2", l1_maxsize=0)
        al1 = Cache(url, namespace="bench-l1a")

        @al1.cached(ttl=3600)
        async def al1_hit(x: int) -> Any:
            return VALUE

        await al1_hit(1)

        async def afloor() -> Any:
            return msgpack.unpackb(await araw.get("bench-raw"))

        avariants = {
            "raw async GET + unpackb": afloor,
            "cachewise async L2 hit (L1 off)": lambda: al2.aget_or_load("k", _never, ttl=3600),
            "cachewise async L1 hit (@cached, two-tier)": lambda: al1_hit(1),
            **(await _async_peer_hits(url)),
        }
        out = await ainterleaved(avariants, rounds, lambda fn: arate(fn, number))
        await araw.aclose()
        al2.close()
        al1.close()
        return out

    async_per_round = asyncio.run(async_rounds())
    l1.close()
    l2.close()
    return {
        "rounds": rounds,
        "calls": number,
        "us_median": medians([per_round, async_per_round], 1e6),
        "ratios": {
            "sync L2 hit / raw GET+unpackb": ratio(
                per_round, "cachewise L2 hit (L1 off)", "raw GET + unpackb"
            ),
            "async L2 hit / raw async GET+unpackb": ratio(
                async_per_round, "cachewise async L2 hit (L1 off)", "raw async GET + unpackb"
            ),
            "L1 hit / raw GET+unpackb": ratio(
                per_round, "cachewise L1 hit (@cached)", "raw GET + unpackb"
            ),
            "async L1 hit / raw async GET+unpackb": ratio(
                async_per_round,
                "cachewise async L1 hit (@cached, two-tier)",
                "raw async GET + unpackb",
            ),
        },
        "peers": {
            "dogpile.cache redis region hit": ratio(
                per_round, "dogpile.cache redis region hit", "cachewise L2 hit (L1 off)"
            ),
            "cashews redis hit": ratio(
                async_per_round, "cashews redis hit", "cachewise async L2 hit (L1 off)"
            ),
            "aiocache redis hit": ratio(
                async_per_round, "aiocache redis hit", "cachewise async L2 hit (L1 off)"
            ),
        },
    }


def _dogpile_hit(url: str) -> Callable[[], Any]:
    from dogpile.cache import make_region

    host, port = url.split("//")[1].split("/")[0].split(":")
    region = make_region(key_mangler=lambda k: f"bench-dp:{k}").configure(
        "dogpile.cache.redis", expiration_time=3600, arguments={"host": host, "port": int(port)}
    )

    @region.cache_on_arguments()
    def dfn(x: int) -> Any:
        return VALUE

    dfn(1)
    return lambda: dfn(1)


async def _async_peer_hits(url: str) -> dict[str, Callable[[], Any]]:
    from aiocache import Cache as AioCache
    from aiocache import cached as aio_cached
    from cashews import Cache as Cashews

    host, port = url.split("//")[1].split("/")[0].split(":")
    peer = Cashews()
    peer.setup(url)

    @peer(ttl=3600, key="bench-cs:{x}")
    async def cfn(x: int) -> Any:
        return VALUE

    @aio_cached(
        ttl=3600, cache=AioCache.REDIS, endpoint=host, port=int(port), namespace="bench-aio"
    )
    async def afn(x: int) -> Any:
        return VALUE

    await cfn(1)
    await afn(1)
    return {"cashews redis hit": lambda: cfn(1), "aiocache redis hit": lambda: afn(1)}


def _never() -> Any:
    raise AssertionError("a hit benchmark must not load")


# -- bulk -------------------------------------------------------------------------------------


def bulk(url: str, rounds: int, number: int) -> dict[str, Any]:
    raw = redis.Redis.from_url(url)
    cache = Cache(url, namespace="bench-bulk", l1_maxsize=0)
    keys = [f"u{i}" for i in range(100)]
    for key in keys:
        raw.set(f"bench-raw-{key}", msgpack.packb(VALUE))
        cache.set(key, VALUE, ttl=3600)
    raw_keys = [f"bench-raw-{k}" for k in keys]

    def raw_mget() -> Any:
        return [msgpack.unpackb(v) for v in raw.mget(raw_keys)]

    def raw_singles() -> Any:
        return [msgpack.unpackb(raw.get(k)) for k in raw_keys]

    from dogpile.cache import make_region

    host, port = url.split("//")[1].split("/")[0].split(":")
    region = make_region(key_mangler=lambda k: f"bench-dpb:{k}").configure(
        "dogpile.cache.redis", expiration_time=3600, arguments={"host": host, "port": int(port)}
    )
    region.set_multi(dict.fromkeys(keys, VALUE))
    variants = {
        "raw MGET + unpack": raw_mget,
        "raw 100 x GET": raw_singles,
        "cachewise get_many": lambda: cache.get_many(keys),
        "cachewise 100 x get": lambda: [cache.get(k) for k in keys],
        "dogpile.cache get_multi": lambda: region.get_multi(keys),
    }
    per_round = interleaved(variants, rounds, lambda fn: rate(fn, number))
    cache.close()

    async def async_rounds() -> list[dict[str, float]]:
        from aiocache import Cache as AioCache
        from cashews import Cache as Cashews

        acache = Cache(url, namespace="bench-bulk", l1_maxsize=0)
        peer = Cashews()
        peer.setup(url)
        aio = AioCache(AioCache.REDIS, endpoint=host, port=int(port), namespace="bench-aiob")
        for key in keys:
            await peer.set(f"bench-csb:{key}", VALUE, expire=3600)
        await aio.multi_set([(k, VALUE) for k in keys], ttl=3600)
        cs_keys = [f"bench-csb:{k}" for k in keys]
        avariants = {
            "cachewise aget_many": lambda: acache.aget_many(keys),
            "cashews get_many": lambda: peer.get_many(*cs_keys),
            "aiocache multi_get": lambda: aio.multi_get(keys),
        }
        out = await ainterleaved(avariants, rounds, lambda fn: arate(fn, number))
        acache.close()
        return out

    async_per_round = asyncio.run(async_rounds())
    return {
        "rounds": rounds,
        "peers": {
            "dogpile.cache get_multi": ratio(
                per_round, "dogpile.cache get_multi", "cachewise get_many"
            ),
            "cashews get_many": ratio(async_per_round, "cashews get_many", "cachewise aget_many"),
            "aiocache multi_get": ratio(
                async_per_round, "aiocache multi_get", "cachewise aget_many"
            ),
        },
        "ratios": {
            "get_many / raw MGET+unpack": ratio(
                per_round, "cachewise get_many", "raw MGET + unpack"
            ),
            "raw speed-up, MGET over 100 GETs": ratio(
                per_round, "raw 100 x GET", "raw MGET + unpack"
            ),
            "cachewise speed-up, get_many over 100 gets": ratio(
                per_round, "cachewise 100 x get", "cachewise get_many"
            ),
        },
    }


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
