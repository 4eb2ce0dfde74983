"""In-process peers, used through their documented APIs: hit cost beside cachewise, and memory
per cached entry (tracemalloc) at 100k entries.

Peers without a TTL (``functools.lru_cache``) are shown for orientation; the target compares
libraries that expire entries. A peer that has no API for a scenario is an n/a row with the
reason.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import cachetools

from _method import Rounds, interleaved
from cachewise import Cache

#: Which hit-cost rows expire entries (the target compares only these).
HAS_TTL = {
    "cachewise @cached": True,
    "cachetools TTLCache": True,
    "dogpile.cache memory region": True,
    "functools.lru_cache (no TTL)": False,
    "cachewise @cached (async)": True,
    "cashews mem:// @cache": True,
    "aiocache SimpleMemoryCache @cached": True,
}

ASYNC = {"cachewise @cached (async)", "cashews mem:// @cache", "aiocache SimpleMemoryCache @cached"}

NOT_APPLICABLE = {
    "dogpile.cache (async)": "dogpile.cache has no asyncio API",
    "cashews (sync)": "cashews decorates async functions only",
    "aiocache (sync)": "aiocache decorates async functions only",
    "functools.lru_cache (async)": "lru_cache would cache the coroutine object, not its result",
}


def sync_variants() -> dict[str, Callable[[int], Any]]:
    from dogpile.cache import make_region

    cache = Cache(namespace="bench-peers")

    @cache.cached(ttl=3600)
    def cw(x: int) -> int:
        return x

    @cachetools.cached(cachetools.TTLCache(maxsize=10_000, ttl=3600))
    def ct(x: int) -> int:
        return x

    region = make_region().configure("dogpile.cache.memory", expiration_time=3600)

    @region.cache_on_arguments()
    def dp(x: int) -> int:
        return x

    @functools.lru_cache(maxsize=10_000)
    def lru(x: int) -> int:
        return x

    variants = {
        "cachewise @cached": cw,
        "cachetools TTLCache": ct,
        "dogpile.cache memory region": dp,
        "functools.lru_cache (no TTL)": lru,
    }
    for fn in variants.values():
        fn(1)
    return variants


async def async_variants() -> dict[str, Callable[[int], Any]]:
    from aiocache import Cache as AioCache
    from aiocache import cached as aio_cached
    from cashews import Cache as Cashews

    cache = Cache(namespace="bench-peers-async")

    @cache.cached(ttl=3600)
    async def cw(x: int) -> int:
        return x

    cashews = Cashews()
    cashews.setup("mem://")

    @cashews(ttl=3600)
    async def cs(x: int) -> int:
        return x

    @aio_cached(ttl=3600, cache=AioCache.MEMORY)
    async def aio(x: int) -> int:
        return x

    variants = {
        "cachewise @cached (async)": cw,
        "cashews mem:// @cache": cs,
        "aiocache SimpleMemoryCache @cached": aio,
    }
    for fn in variants.values():
        await fn(1)
    return variants


# -- in-process miss -----------------------------------------------------------------------------


def miss_cost(rounds: int, keys: int = 200_000, maxsize: int = 1_000) -> Rounds:
    """Seconds per call of ``keys`` calls on unique keys through an L1 of ``maxsize``: every
    call loads, stores and evicts. cachetools with a lock, as a threaded service would use it."""
    import threading

    def identity(x: int) -> int:
        return x

    def timed(make: Callable[[], Callable[[int], int]]) -> float:
        fn = make()
        started = time.perf_counter()
        for i in range(keys):
            fn(i)
        return (time.perf_counter() - started) / keys

    variants = {
        "cachewise @cached": lambda: Cache(namespace="bench-miss", l1_maxsize=maxsize).cached(
            ttl=3600
        )(identity),
        "cachetools TTLCache with a lock": lambda: cachetools.cached(
            cachetools.TTLCache(maxsize=maxsize, ttl=3600), lock=threading.Lock()
        )(identity),
    }
    return interleaved(variants, rounds, timed)


# -- memory per entry ---------------------------------------------------------------------------


def _measure(fill: Callable[[int], None], entries: int) -> float:
    """Bytes traced per entry after ``fill(entries)``, against an empty baseline."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fill(entries)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / entries


def _none(x: int) -> None:
    return None


async def _anone(x: int) -> None:
    return None


def _sync_fill(decorator: Callable[[int], Callable[..., Any]]) -> Callable[[int], None]:
    """Fill a fresh decorated function with ``n`` keys (``decorator(n)`` makes the decorator)."""

    def fill(n: int) -> None:
        f = decorator(n)(_none)
        for i in range(n):
            f(i)
        _keep.append(f)

    return fill


def _async_fill(decorator: Callable[[int], Callable[..., Any]]) -> Callable[[int], None]:
    def fill(n: int) -> None:
        f = decorator(n)(_anone)

        async def run() -> None:
            for i in range(n):
                await f(i)

        asyncio.run(run())
        _keep.append(f)

    return fill


def memory_per_entry(entries: int = 100_000) -> dict[str, float]:
    """Bytes per cached entry, every entry holding the same value (``None``), so that what is
    measured is each library's own bookkeeping: the key, the entry and its expiry."""
    from aiocache import Cache as AioCache
    from aiocache import cached as aio_cached
    from cashews import Cache as Cashews
    from dogpile.cache import make_region

    def cashews_decorator(n: int) -> Callable[..., Any]:
        peer = Cashews()
        peer.setup(f"mem://?size={n * 2}")
        _keep.append(peer)
        return peer(ttl=3600)  # type: ignore[no-any-return]

    fills = {
        "cachewise @cached": _sync_fill(
            lambda n: Cache(namespace="mem", l1_maxsize=n * 2).cached(ttl=3600)
        ),
        "cachetools TTLCache": _sync_fill(
            lambda n: cachetools.cached(cachetools.TTLCache(maxsize=n * 2, ttl=3600))
        ),
        "functools.lru_cache (no TTL)": _sync_fill(lambda n: functools.lru_cache(maxsize=n * 2)),
        "dogpile.cache memory region": _sync_fill(
            lambda n: (
                make_region()
                .configure("dogpile.cache.memory", expiration_time=3600)
                .cache_on_arguments()
            )
        ),
        "cashews mem://": _async_fill(cashews_decorator),
        "aiocache SimpleMemoryCache": _async_fill(
            lambda n: aio_cached(ttl=3600, cache=AioCache.MEMORY)
        ),
    }
    out = {}
    for name, fill in fills.items():
        out[name] = _measure(fill, entries)
        _keep.clear()
    return out


_keep: list[Any] = []  # holds what a fill made until it is measured


# -- cold key in one process: each library with the option that gives it stampede protection -----


def thread_stampede_variants(load_s: float, loads: list[float]) -> dict[str, Callable[[int], Any]]:
    """Fresh decorated loaders (a cold key each time) for a herd of threads."""
    import threading

    from cachekit import cache as cachekit_cache
    from dogpile.cache import make_region
    from theine import Memoize

    def body(k: int) -> int:
        started = time.perf_counter()
        time.sleep(load_s)
        loads.append(time.perf_counter() - started)
        return k

    cache = Cache(namespace="bench-stampede")
    region = make_region().configure("dogpile.cache.memory", expiration_time=3600)
    lock = threading.Lock()
    return {
        "cachewise @cached": cache.cached(ttl=3600)(body),
        "dogpile.cache memory region (its dogpile lock)": region.cache_on_arguments()(body),
        "cachetools cached(TTLCache, lock, condition)": cachetools.cached(
            cachetools.TTLCache(maxsize=1000, ttl=3600),
            lock=lock,
            condition=threading.Condition(lock),
        )(body),
        "functools.lru_cache (no stampede protection)": functools.lru_cache(maxsize=1000)(body),
        "theine Memoize": Memoize(1000, datetime.timedelta(seconds=3600))(body),
        "cachekit @cache (L1 only)": cachekit_cache(ttl=3600, backend=None)(body),
    }


def task_stampede_variants(load_s: float, loads: list[float]) -> dict[str, Callable[[int], Any]]:
    """Fresh decorated async loaders for a herd of tasks (made inside the running loop)."""
    from aiocache import Cache as AioCache
    from aiocache import cached_stampede
    from cachekit import cache as cachekit_cache
    from cashews import Cache as Cashews
    from theine import Memoize

    async def body(k: int) -> int:
        started = time.perf_counter()
        await asyncio.sleep(load_s)
        loads.append(time.perf_counter() - started)
        return k

    cache = Cache(namespace="bench-stampede")
    cashews = Cashews()
    cashews.setup("mem://")
    return {
        "cachewise @cached": cache.cached(ttl=3600)(body),
        "cashews mem:// @cache(lock=True)": cashews(ttl=3600, lock=True)(body),
        "aiocache cached_stampede (memory)": cached_stampede(
            lease=2, ttl=3600, cache=AioCache.MEMORY
        )(body),
        "theine Memoize": Memoize(1000, datetime.timedelta(seconds=3600))(body),
        "cachekit @cache (L1 only)": cachekit_cache(ttl=3600, backend=None)(body),
    }
