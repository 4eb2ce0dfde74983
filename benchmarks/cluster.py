"""cachewise on a Redis Cluster against raw redis-py cluster calls, in the same run.

    python benchmarks/cluster.py            # starts a local six-node cluster, writes the docs

Rows, each timed in interleaved rounds (``_method``) and reported as the median of the per-round
ratios: an L2 hit with L1 off against a raw ``GET`` and unpack, beside the floor of any hit
honouring a shared TTL (``redis_tier.ttl_floor_of``); ``get_many`` of 100 keys (spread
over every master) against redis-py's ``mget_nonatomic`` of the same keys, which groups them by
slot and sends one pipeline per node; the same two for asyncio. Then the herds, on the cluster
and on a single ``redis-server`` in the same run: a cold key called by 4 processes x 25 callers
(50 ms loader; loads and caller p99), and a hot key's expiries under load (ttl 1 s, stale_ttl,
100 ms loader, 500 calls/s from 4 processes; loads per expiry and caller p99). The tables go
into docs/benchmarks.md between the ``cluster`` markers; the run is saved under results/.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import redis.asyncio.cluster  # noqa: E402
import redis.cluster  # noqa: E402

import cold_keys  # noqa: E402
import expiry  # noqa: E402
import redis_tier  # noqa: E402
from _method import ainterleaved, arate, interleaved, rate, ratio, write_section  # noqa: E402
from cachewise import Cache  # noqa: E402
from cachewise.testing import LocalCluster, RedisServer  # noqa: E402

MARK, END = "<!-- cluster -->", "<!-- /cluster -->"
VALUE = {"id": 1, "name": "x" * 40, "tags": [1, 2, 3]}
KEYS = [f"u{i}" for i in range(100)]
RAW = "bench-raw:{k}"  # in the slot of the entry of "k"


def _never() -> Any:
    raise RuntimeError("the benchmark reads cached entries only")


def _sized(variants: dict[str, Any]) -> dict[str, tuple[Any, int]]:
    """Each variant with the calls timed in a row: a one-key read is 0.1 ms, a bulk one 1-2 ms,
    and a spike of the machine's (six servers on two cores) should weigh alike on both."""
    bulk = ("raw mget_nonatomic + unpack", "get_many")
    return {name: (fn, 300 if name in bulk else 2000) for name, fn in variants.items()}


def run(url: str, rounds: int = 15) -> dict[str, Any]:
    raw = redis.cluster.RedisCluster.from_url(url)
    cache = Cache(url, namespace="bench-cluster", l1_maxsize=0)
    # The raw keys share the hash tags of cachewise's (``<namespace>:{key}``), so that both
    # read the same masters: a ratio compares the clients, not two masters.
    raw.set(RAW, msgpack.packb(VALUE))
    raw_keys = [f"bench-raw:{{{k}}}" for k in KEYS]
    for key, raw_key in zip(KEYS, raw_keys, strict=True):
        raw.set(raw_key, msgpack.packb(VALUE))
        cache.set(key, VALUE, ttl=3600)
    cache.set("k", VALUE, ttl=3600)
    ttl_floor = redis_tier.ttl_floor_of(raw, "bench-cluster", "k")
    assert ttl_floor() == VALUE
    sync = interleaved(
        _sized(
            {
                "raw GET + unpack": lambda: msgpack.unpackb(raw.get(RAW)),
                "TTL floor": ttl_floor,
                "L2 hit": lambda: cache.get_or_load("k", _never, ttl=3600),
                "raw mget_nonatomic + unpack": lambda: [
                    msgpack.unpackb(v) for v in raw.mget_nonatomic(raw_keys)
                ],
                "get_many": lambda: cache.get_many(KEYS),
            }
        ),
        rounds,
        lambda sized: rate(*sized),
    )

    async def async_rounds() -> list[dict[str, float]]:
        araw = redis.asyncio.cluster.RedisCluster.from_url(url)
        acache = Cache(url, namespace="bench-cluster", l1_maxsize=0)

        async def afloor() -> Any:
            return msgpack.unpackb(await araw.get(RAW))

        async def abulk_floor() -> Any:
            return [msgpack.unpackb(v) for v in await araw.mget_nonatomic(raw_keys)]

        out = await ainterleaved(
            _sized(
                {
                    "raw GET + unpack": afloor,
                    "L2 hit": lambda: acache.aget_or_load("k", _never, ttl=3600),
                    "raw mget_nonatomic + unpack": abulk_floor,
                    "get_many": lambda: acache.aget_many(KEYS),
                }
            ),
            rounds,
            lambda sized: arate(*sized),
        )
        await araw.aclose()
        acache.close()
        return out

    asynchronous = asyncio.run(async_rounds())
    cache.close()
    raw.close()
    rows = []
    for flavour, per_round in (("sync", sync), ("async", asynchronous)):
        for row, top, bottom, target in (
            ("L2 hit, L1 off / raw GET + unpack", "L2 hit", "raw GET + unpack", 1.1),
            ("(floor) the entry's GET + envelope unpack + freshness / raw GET + unpack",
             "TTL floor", "raw GET + unpack", None),
            ("get_many of 100 / raw mget_nonatomic + unpack", "get_many",
             "raw mget_nonatomic + unpack", 1.2),
        ):  # fmt: skip
            if top not in per_round[0]:
                continue  # the floor is measured sync only
            got = ratio(per_round, top, bottom)
            us = sorted(r[top] for r in per_round)[len(per_round) // 2] * 1e6
            rows.append({"flavour": flavour, "row": row, "ratio": got, "us": us, "target": target})
    return {"rounds": rounds, "rows": rows}


HERD_VARIANTS = ["cachewise threads", "cachewise tasks"]
EXPIRY_VARIANTS = ["cachewise stale_ttl threads", "cachewise stale_ttl tasks"]


def herds(cluster_url: str, single_url: str, counter_url: str, rounds: int = 3) -> dict[str, Any]:
    """The cold-key herd and the expiry under load, on the cluster and on one Redis, counted
    on a third (a plain Redis the loaders push to)."""
    out: dict[str, Any] = {}
    for where, url in (("single", single_url), ("cluster", cluster_url)):
        out[where] = {
            "cold": cold_keys.cold_key_fleet(
                url, rounds, variants=HERD_VARIANTS, counter_url=counter_url
            ),
            "expiry": expiry.expiry_under_load(
                url, variants=EXPIRY_VARIANTS, counter_url=counter_url
            ),
        }
    return out


def _table(title: str, columns: list[str]) -> list[str]:
    """A titled Markdown table's first lines."""
    return ["", title, "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def render_herds(data: dict[str, Any]) -> list[str]:
    single, cluster = data["single"], data["cluster"]
    lines = _table(
        f"Cold key, 4 processes × 25 callers, 50 ms loader ({data['rounds']} rounds; p99 median "
        "over rounds):",
        ["variant", "loads (most in a round), single / cluster", "p99 ms, single",
         "p99 ms, cluster", "cluster / single", "target"],
    )  # fmt: skip
    for variant in HERD_VARIANTS:
        a, b = single["cold"][variant], cluster["cold"][variant]
        pa, pb = a["p99_ms"]["median"], b["p99_ms"]["median"]
        lines.append(
            f"| {variant} | {a['loads_max']} / {b['loads_max']} | {pa:.1f} | {pb:.1f} | "
            f"{pb / pa:.2f} | 1 load, ≤ 1.1 |"
        )
    lines += _table(
        "Expiry under load: ttl 1 s, stale_ttl 30 s, 100 ms loader, 500 calls/s from 4 processes "
        "for 3 s:",
        ["variant", "calls", "raised", "most loads for one expiry, single / cluster",
         "p99 ms, single", "p99 ms, cluster", "target"],
    )  # fmt: skip
    for variant in EXPIRY_VARIANTS:
        a, b = single["expiry"][variant], cluster["expiry"][variant]
        lines.append(
            f"| {variant} | {b['calls']} | {b['errors']} | {a['max_loads_per_expiry']} / "
            f"{b['max_loads_per_expiry']} | {a['p99_ms']:.2f} | {b['p99_ms']:.2f} "
            "| 1 load, p99 ≤ 1 ms |"
        )
    return lines


def render(data: dict[str, Any]) -> str:
    lines = [
        MARK,
        f"Run {data['when']}, a local cluster of 3 masters and 3 replicas on one machine, "
        f"{data['rounds']} interleaved rounds; ratio = median of the per-round ratios (min..max).",
        "",
        "| flavour | row | µs | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in data["rows"]:
        got = r["ratio"]
        lines.append(
            f"| {r['flavour']} | {r['row']} | {r['us']:.1f} | {got['median']:.2f} "
            f"({got['min']:.2f}..{got['max']:.2f}) | "
            + (f"≤ {r['target']} |" if r["target"] else "the least a hit honouring a TTL does |")
        )
    if "herds" in data:
        lines += render_herds(data["herds"])
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_docs(section: str) -> None:
    write_section(ROOT / "docs" / "benchmarks.md", (MARK, END), "## Redis Cluster", section)


def main() -> int:
    with LocalCluster() as cluster, RedisServer() as single, RedisServer() as counter:
        data = run(cluster.url)
        data["herds"] = herds(cluster.url, single.url, counter.url)
        data["herds"]["rounds"] = 3
    now = datetime.datetime.now(datetime.timezone.utc)
    data["when"] = now.strftime("%Y-%m-%d %H:%M UTC")
    saved = ROOT / "benchmarks" / "results" / f"cluster-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    saved.write_text(json.dumps(data, indent=1))
    section = render(data)
    write_docs(section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
