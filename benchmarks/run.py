"""cachewise benchmarks: ratios measured side by side in one run, never a bare time.

    bash scripts/bench.sh            # or: .venv/bin/python benchmarks/run.py [--quick]

Method: every scenario runs its variants in rounds; within a round the variants run back to back
in a random order, and each ratio is computed inside its round, so a noisy neighbour slows the
cachewise run and its floor alike. Reported: the median ratio over rounds with min..max. Every
loop is bounded in count. Results go to ``benchmarks/results/<timestamp>.json`` and to
``docs/benchmarks.md`` (the targets of the issues are checked there; a miss is shown as a miss).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cachewise
import page
import peers
from _method import Rounds, ainterleaved, interleaved, medians, percentile, ratio, summarize
from cachewise import _codegen
from cachewise.testing import task_herd, thread_herd

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cachewise": cachewise.__version__,
        "compiled hit": _codegen._speedups is not None,
        **{
            name: _version(name)
            for name in (
                "cachetools",
                "redis",
                "msgpack",
                "dogpile.cache",
                "cashews",
                "aiocache",
            )
        },
        "commit": _git("rev-parse", "--short", "HEAD"),
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


# -- hit cost -------------------------------------------------------------------------------


def _sync_hit_variants() -> dict[str, Callable[[int], int]]:
    table = {1: 1}
    entries = {1: (1, float("inf"))}
    monotonic = time.monotonic

    def dict_floor(x: int) -> int:
        return table[x]

    def expiry_floor(x: int) -> Any:
        # The least a hit that honours a TTL does in Python: a lookup, a clock read, a compare.
        entry = entries.get(x)
        if entry is not None and monotonic() < entry[1]:
            return entry[0]
        return None

    return {
        "dict floor": dict_floor,
        "expiry floor": expiry_floor,
        **peers.sync_variants(),
    }


def _pure_python_hits(rounds: int, number: int) -> Rounds:
    """cachewise's sync hit as a package built without its C extension serves it, beside
    ``lru_cache`` in the same rounds: in a child process with ``CACHEWISE_PURE_PYTHON=1``,
    since the extension also holds the entries' storage, which a process chooses once."""
    code = f"import json, run; print(json.dumps(run.pure_python_rounds({rounds}, {number})))"
    env = {**os.environ, "CACHEWISE_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def pure_python_rounds(rounds: int, number: int) -> Rounds:
    """The child's half of ``_pure_python_hits``."""
    assert _codegen._speedups is None, "CACHEWISE_PURE_PYTHON=1 is not set"
    cache = cachewise.Cache(namespace="bench-pure")

    @cache.cached(ttl=3600)
    def cw(x: int) -> int:
        return x

    cw(1)
    variants = {
        "cachewise @cached (pure Python)": cw,
        "functools.lru_cache (no TTL)": peers.sync_variants()["functools.lru_cache (no TTL)"],
    }
    return interleaved(variants, rounds, lambda fn: _time_sync(fn, number))


def _time_sync(fn: Callable[[int], int], number: int) -> float:
    """Seconds per call, the timing loop's own cost subtracted. Slow peers get fewer calls
    (about 0.2 s of them), so every variant is timed for a similar while."""
    probe = timeit.Timer("fn(1)", globals={"fn": fn}).timeit(100) / 100
    number = max(200, min(number, int(0.2 / max(probe, 1e-9))))
    call = timeit.Timer("fn(1)", globals={"fn": fn}).timeit(number)
    empty = timeit.Timer("pass").timeit(number)
    return max(call - empty, 1e-12) / number


async def _async_hit_variants() -> dict[str, Callable[[int], Any]]:
    table = {1: 1}
    entries = {1: (1, float("inf"))}
    monotonic = time.monotonic

    async def async_dict_floor(x: int) -> int:
        return table[x]

    async def async_expiry_floor(x: int) -> Any:
        entry = entries.get(x)
        if entry is not None and monotonic() < entry[1]:
            return entry[0]
        return None

    return {
        "async dict floor": async_dict_floor,
        "async expiry floor": async_expiry_floor,
        **(await peers.async_variants()),
    }


async def _time_async(fn: Callable[[int], Any], number: int) -> float:
    started = time.perf_counter()
    for _ in range(100):
        await fn(1)
    probe = (time.perf_counter() - started) / 100
    number = max(200, min(number, int(0.2 / max(probe, 1e-9))))
    started = time.perf_counter()
    for _ in range(number):
        await fn(1)
    call = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(number):
        pass
    empty = time.perf_counter() - started
    return max(call - empty, 1e-12) / number


def bench_hits(rounds: int, number: int) -> dict[str, Any]:
    per_round = interleaved(_sync_hit_variants(), rounds, lambda fn: _time_sync(fn, number))
    pure_per_round = _pure_python_hits(rounds, number)

    async def async_rounds() -> Rounds:
        return await ainterleaved(
            await _async_hit_variants(), rounds, lambda fn: _time_async(fn, number)
        )

    async_per_round = asyncio.run(async_rounds())
    ratios = {
        "sync hit / dict floor": ratio(per_round, "cachewise @cached", "dict floor"),
        "sync hit / cachetools TTLCache hit": ratio(
            per_round, "cachewise @cached", "cachetools TTLCache"
        ),
        **{
            f"{name} / cachewise": ratio(per_round, name, "cachewise @cached")
            for name in per_round[0]
            if name not in ("dict floor", "expiry floor", "cachewise @cached")
        },
        **{
            f"{name} / cachewise (async)": ratio(async_per_round, name, "cachewise @cached (async)")
            for name in async_per_round[0]
            if name not in ("async dict floor", "async expiry floor", "cachewise @cached (async)")
        },
        "sync hit / lru_cache hit": ratio(
            per_round, "cachewise @cached", "functools.lru_cache (no TTL)"
        ),
        "pure-Python sync hit / lru_cache hit": ratio(
            pure_per_round, "cachewise @cached (pure Python)", "functools.lru_cache (no TTL)"
        ),
        "expiry floor / lru_cache hit": ratio(
            per_round, "expiry floor", "functools.lru_cache (no TTL)"
        ),
        "async expiry floor / async dict floor": ratio(
            async_per_round, "async expiry floor", "async dict floor"
        ),
        "async hit / async dict floor": ratio(
            async_per_round, "cachewise @cached (async)", "async dict floor"
        ),
    }
    return {
        "rounds": rounds,
        "calls_per_round": number,
        "ratios": ratios,
        "ns_per_call_median": medians([per_round, async_per_round], 1e9),
        "ns_per_call_median_pure_python": medians([pure_per_round], 1e9),
    }


# -- cold-key stampede ----------------------------------------------------------------------


def _threads_cold_key(name: str, callers: int, load_s: float, key: int) -> dict[str, float]:
    loads: list[float] = []
    fn = peers.thread_stampede_variants(load_s, loads)[name]
    latencies = thread_herd(callers, lambda: fn(key))
    return _stampede_result(latencies, loads)


def _tasks_cold_key(name: str, callers: int, load_s: float, key: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        loads: list[float] = []
        fn = peers.task_stampede_variants(load_s, loads)[name]
        latencies = await task_herd(callers, lambda: fn(key))
        return _stampede_result(list(latencies), loads)

    return asyncio.run(run())


def _stampede_result(latencies: list[float], loads: list[float]) -> dict[str, float]:
    p99 = percentile(latencies, 0.99)
    load_time = statistics.median(loads)
    return {
        "loads": len(loads),
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": p99 * 1e3,
        "load_ms": load_time * 1e3,
        "p99_over_load_ms": (p99 - load_time) * 1e3,
    }


def bench_stampede(rounds: int, load_s: float) -> dict[str, Any]:
    scenarios: dict[str, Callable[[int], dict[str, float]]] = {}
    for name in peers.thread_stampede_variants(load_s, []):
        scenarios[f"100 threads: {name}"] = functools.partial(_threads_cold_key, name, 100, load_s)
    for name in ("cachewise @cached", "cashews mem:// @cache(lock=True)",
                 "aiocache cached_stampede (memory)", "theine Memoize",
                 "cachekit @cache (L1 only)"):  # fmt: skip
        scenarios[f"500 tasks: {name}"] = functools.partial(_tasks_cold_key, name, 500, load_s)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
    for i in range(rounds):
        order = list(scenarios)
        random.shuffle(order)
        for name in order:
            results[name].append(scenarios[name](i))
    return {
        name: {
            "rounds": len(runs),
            "loads_max": max(r["loads"] for r in runs),
            "p99_ms": summarize([r["p99_ms"] for r in runs]),
            "p50_ms": summarize([r["p50_ms"] for r in runs]),
            "load_ms": summarize([r["load_ms"] for r in runs]),
            "p99_over_load_ms": summarize([r["p99_over_load_ms"] for r in runs]),
        }
        for name, runs in results.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument(
        "--render", metavar="JSON", help="only rewrite docs/benchmarks.md from a saved run"
    )
    args = parser.parse_args()
    if args.render:
        data = json.loads(Path(args.render).read_text())
        page.charts(data)
        page.write_docs(page.render(data))
        return 0
    rounds, number, stampede_rounds = (3, 20_000, 2) if args.quick else (15, 200_000, 7)
    print(f"hit cost: {rounds} rounds x {number} calls ...", flush=True)
    hits = bench_hits(rounds, number)
    print(f"cold-key stampede: {stampede_rounds} rounds ...", flush=True)
    stampede = bench_stampede(stampede_rounds, 0.05)
    print("memory per entry ...", flush=True)
    memory = peers.memory_per_entry(20_000 if args.quick else 100_000)
    print("in-process miss ...", flush=True)
    misses = peers.miss_cost(2 if args.quick else 5, 50_000 if args.quick else 200_000)
    data = {
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bash scripts/bench.sh" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "hits": hits,
        "stampede": stampede,
        "memory": memory,
        "miss": {
            "rounds": len(misses),
            "ratio": ratio(misses, "cachewise @cached", "cachetools TTLCache with a lock"),
            "us_per_call_median": medians([misses], 1e6),
        },
    }
    page.charts(data)

    import cold_keys
    import expiry
    import redis_tier
    import writes
    from cachewise.testing import RedisServer

    with RedisServer() as server:
        print("redis tier: hit cost, bulk ...", flush=True)
        redis_data = {
            "hits": redis_tier.hit_cost(server.url, rounds, max(number // 100, 500)),
            "bulk": redis_tier.bulk(server.url, rounds, 50 if args.quick else 200),
        }
        print("redis tier: cold key across processes ...", flush=True)
        redis_data["cold"] = cold_keys.cold_key_fleet(server.url, 2 if args.quick else 5)
        redis_data["wake"] = cold_keys.wake_floor(5 if args.quick else 20)
        print("redis tier: expiry under load ...", flush=True)
        redis_data["expiry"] = expiry.expiry_under_load(server.url)
        print("writes: write-behind call cost, flush throughput ...", flush=True)
        write_data = {
            "call": writes.call_cost(server.url, rounds, 300 if args.quick else 2000),
            "flush": writes.flush_throughput(server.url, 1 if args.quick else 3),
        }
    data["redis"] = redis_data
    data["writes"] = write_data
    section = page.render(data)
    print(section)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (ROOT / "benchmarks" / "results" / f"{stamp}.json").write_text(json.dumps(data, indent=2))
    if not args.no_docs:
        page.write_docs(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
