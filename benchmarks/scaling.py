"""How cost grows: an L1 hit and ``stats()`` at 1k, 100k and 1M entries (flat is the target),
and ``get_many`` of 10, 100 and 1,000 keys against a raw ``MGET`` (linear, one round trip).

    .venv/bin/python benchmarks/scaling.py

Each size's figures come from interleaved rounds in one run (``_method``): the hit against a
dict lookup of the same key (the floor), ``stats()`` of a plain cache and of one exported to
Prometheus (which counts hits as they happen), ``get_many`` against redis-py's ``MGET`` and
msgpack unpacking of the same keys on the same ``redis-server``. Written into
docs/benchmarks.md between the ``scaling`` markers; the run is saved under results/.
"""

from __future__ import annotations

import functools
import sys
import timeit
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _method import interleaved, publish, ratio, summarize  # noqa: E402
from cachewise import Cache  # noqa: E402
from cachewise._hits import start as count_hits  # noqa: E402
from cachewise.testing import RedisServer  # noqa: E402

MARK, END = "<!-- scaling -->", "<!-- /scaling -->"
SIZES = (1_000, 100_000, 1_000_000)
BULK = (10, 100, 1_000)
ROUNDS = 9


def _filled(size: int) -> tuple[Cache, Any]:
    cache = Cache(l1_maxsize=size)

    @cache.cached(ttl=3600)
    def f(x: int) -> int:
        return x

    for i in range(size):
        f(i)
    return cache, f


def _hit_rounds(f: Any, key: int) -> Any:
    """An L1 hit of ``f(key)`` and a dict lookup of ``key`` (the floor), interleaved."""
    table = {key: key}
    number = 100_000
    variants = {"hit": lambda: f(key), "floor": lambda: table.get(key)}
    return interleaved(variants, ROUNDS, lambda fn: timeit.timeit(fn, number=number) / number)


def _per_call(fn: Any, number: int) -> float:
    return timeit.timeit(fn, number=number) / number


def in_process() -> list[dict[str, Any]]:
    rows = []
    for size in SIZES:
        cache, f = _filled(size)
        exported, g = _filled(size)
        count_hits(exported._engine)
        hits = _hit_rounds(f, size // 2)
        stats = interleaved(
            {"stats": cache.stats, "exported": exported.stats},
            ROUNDS,
            lambda fn: timeit.timeit(fn, number=5) / 5,
        )
        rows.append({
            "entries": size,
            "hit_ns": summarize([r["hit"] * 1e9 for r in hits]),
            "hit_vs_floor": ratio(hits, "hit", "floor"),
            "stats_ms": summarize([r["stats"] * 1e3 for r in stats]),
            "exported_stats_ms": summarize([r["exported"] * 1e3 for r in stats]),
        })  # fmt: skip
        cache.close()
        exported.close()
        del f, g
    return rows


def bulk(url: str) -> list[dict[str, Any]]:
    cache = Cache(url, namespace="scaling", l1_maxsize=0)
    raw = cache._engine.backend.sync_client()  # type: ignore[union-attr]
    rows = []
    for n in BULK:
        keys = [f"k{n}:{i}" for i in range(n)]
        for key in keys:
            cache.set(key, {"v": key}, ttl=3600)
        full = [cache._target(key).full_key for key in keys]

        def raw_mget(full: list[str] = full) -> Any:
            return [msgpack.unpackb(v, strict_map_key=False) for v in raw.mget(full)]

        number = max(20, 4_000 // n)
        variants = {"get_many": functools.partial(cache.get_many, keys), "mget": raw_mget}
        runs = interleaved(variants, ROUNDS, functools.partial(_per_call, number=number))
        assert len(cache.get_many(keys)) == n
        rows.append({
            "keys": n,
            "us": summarize([r["get_many"] * 1e6 for r in runs]),
            "us_per_key": summarize([r["get_many"] * 1e6 / n for r in runs]),
            "vs_mget": ratio(runs, "get_many", "mget"),
        })  # fmt: skip
    cache.close()
    return rows


def _m(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}..{s['max']:.{digits}f})"


def render(data: dict[str, Any]) -> str:
    lines = [
        MARK,
        f"Run {data['when']}, {ROUNDS} interleaved rounds per size; median (min..max).",
        "",
        "| L1 entries | hit, ns | hit / dict lookup | `stats()`, ms | `stats()` of an exported "
        "cache, ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in data["in_process"]:
        lines.append(
            f"| {r['entries']:,} | {_m(r['hit_ns'], 0)} | {_m(r['hit_vs_floor'])} | "
            f"{_m(r['stats_ms'], 3)} | {_m(r['exported_stats_ms'], 3)} |"
        )
    lines += [
        "",
        "| `get_many` keys (L1 off) | µs | µs per key | / raw `MGET` + unpack |",
        "| --- | --- | --- | --- |",
    ]
    for r in data["bulk"]:
        lines.append(
            f"| {r['keys']:,} | {_m(r['us'], 1)} | {_m(r['us_per_key'], 2)} | {_m(r['vs_mget'])} |"
        )
    lines.append(END)
    return "\n".join(lines) + "\n"


def main() -> int:
    data: dict[str, Any] = {"in_process": in_process()}
    with RedisServer() as server:
        data["bulk"] = bulk(server.url)
    publish("scaling", data, render, (MARK, END), "## How cost grows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
