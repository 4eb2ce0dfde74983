"""Redis-tier hit cost and bulk reads beside the peers, run from ``run.py`` against a
redis-server it starts on loopback (cold keys across processes are in ``cold_keys.py``, expiry
under load in ``expiry.py``).

Peers (dogpile.cache, cashews, aiocache) are used through their documented APIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
import redis
import redis.asyncio

from _method import ainterleaved, arate, interleaved, medians, rate, ratio
from cachewise import Cache, codec
from cachewise._clock import monotonic
from cachewise.redis.keyspace import KeySpace

# -- hit cost ---------------------------------------------------------------------------------

VALUE = {"id": 42, "name": "ada", "roles": ["admin", "dev"], "score": 3.5}


def ttl_floor_of(raw: Any, namespace: str, key: str) -> Callable[[], Any]:
    """The floor of a hit that honours a TTL shared by every host, reading ``key`` of
    ``namespace`` through the client ``raw``: the entry's own GET, its envelope unpacked, and
    its fresh-until compared with the server's clock (as estimated from this host's monotonic
    clock), with none of cachewise's Python."""
    entry_key = KeySpace(namespace).entry(key)
    seconds = raw.time()
    if isinstance(seconds, dict):  # a cluster client asked every node
        seconds = next(iter(seconds.values()))
    offset_ms = seconds[0] * 1000 - monotonic() * 1000  # whole seconds: enough to compare
    names, values = codec.UNPACKING["kwnames"], codec.UNPACKING["kwvalues"]
    unpack_options = dict(zip(names, values, strict=True))  # as cachewise decodes an entry

    def ttl_floor() -> Any:
        body = msgpack.unpackb(raw.get(entry_key), **unpack_options)
        assert body[0] == codec.FORMAT and monotonic() * 1000 + offset_ms < body[codec.FRESH]
        return body[codec.VALUE]

    return ttl_floor


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

    ttl_floor = ttl_floor_of(raw, "bench-l2", "k")
    assert ttl_floor() == VALUE
    l1_hit(1)
    variants = {
        "raw GET + unpackb": floor,
        "(floor) the entry's GET + envelope unpackb + freshness": ttl_floor,
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
            "TTL floor / raw GET+unpackb": ratio(
                per_round,
                "(floor) the entry's GET + envelope unpackb + freshness",
                "raw GET + unpackb",
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
