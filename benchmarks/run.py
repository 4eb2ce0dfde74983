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
import re
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cachewise
import peers
import targets
from _method import Rounds, ainterleaved, interleaved, medians, percentile, ratio, summarize
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

    return {"dict floor": dict_floor, "expiry floor": expiry_floor, **peers.sync_variants()}


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


# -- report ---------------------------------------------------------------------------------


def _fmt(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}..{s['max']:.{digits}f})"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def report(data: dict[str, Any]) -> str:
    hits, stampede = data["hits"], data["stampede"]
    r = hits["ratios"]
    targets = [
        ("sync `@cached` hit / dict lookup in a function", r["sync hit / dict floor"], 6.0),
        ("sync `@cached` hit / `cachetools.cached(TTLCache)` hit",
         r["sync hit / cachetools TTLCache hit"], 0.5),
        ("async `@cached` hit / `async def` dict lookup", r["async hit / async dict floor"], 3.0),
    ]  # fmt: skip
    lines = [
        "## In-process tier (issue: foundation)",
        "",
        f"Run {data['when']} on {data['machine']['cpu']} ({data['machine']['cores']} cores), "
        f"Python {data['machine']['python']}, commit {data['machine']['commit']}. "
        f"Command: `{data['command']}`.",
        "",
        f"### Hit cost ({hits['rounds']} interleaved rounds of {hits['calls_per_round']:,} calls; "
        "the timing loop's own cost subtracted)",
        "",
        "| ratio | median (min..max) | target | |",
        "| --- | --- | --- | --- |",
    ]
    for label, s, limit in targets:
        lines.append(f"| {label} | {_fmt(s)} | ≤ {limit} | "
                     f"{_verdict(s['median'] <= limit)} |")  # fmt: skip
    lines += [
        "",
        "### Hit cost beside the peers (same rounds; a peer's time / cachewise's, so > 1 is "
        "slower than cachewise)",
        "",
        "| library | TTL | median ns per call | peer / cachewise, median (min..max) |",
        "| --- | --- | --- | --- |",
    ]
    ns = hits["ns_per_call_median"]
    lowest = True
    for name, has_ttl in peers.HAS_TTL.items():
        is_async = name in peers.ASYNC
        own = "cachewise @cached (async)" if is_async else "cachewise @cached"
        if name == own:
            cell = "1 (itself)"
        else:
            s_ = r[f"{name} / cachewise" + (" (async)" if is_async else "")]
            cell = _fmt(s_)
            lowest = lowest and (not has_ttl or s_["median"] > 1)
        lines.append(f"| {name} | {'yes' if has_ttl else 'no'} | {ns[name]:.0f} | {cell} |")
    for name, reason in peers.NOT_APPLICABLE.items():
        lines.append(f"| {name} | | n/a | {reason} |")
    lines += [
        "",
        f"Lowest hit cost of every library with a TTL, sync and async: {_verdict(lowest)}. "
        "`functools.lru_cache` has no TTL and is shown for orientation.",
        "",
    ]
    memory = data.get("memory")
    if memory:
        lines += [
            "### Memory per cached entry in L1 (tracemalloc, 100,000 entries, value `None`)",
            "",
            "| library | bytes per entry |",
            "| --- | --- |",
            *(f"| {name} | {size:.0f} |" for name, size in memory.items()),
            "",
            "![Hit cost per library](img/hit_cost.png)",
            "",
        ]
    lines += [
        f"### Cold key, 50 ms loader ({next(iter(stampede.values()))['rounds']} rounds each)",
        "",
        "| scenario | loads (max over rounds) | caller p99 − load time, ms | caller p99, ms "
        "| target | |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in stampede.items():
        ours = "cachewise" in name
        ok = s["loads_max"] == 1 and s["p99_over_load_ms"]["median"] <= 10.0
        lines.append(
            f"| {name} | {s['loads_max']} | {_fmt(s['p99_over_load_ms'], 1)} | "
            f"{_fmt(s['p99_ms'], 1)} | {'1 load, ≤ +10 ms' if ours else '(peer)'} | "
            f"{_verdict(ok) if ours else ''} |"
        )
    ours_loads = max(s["loads_max"] for n, s in stampede.items() if "cachewise" in n)
    lines += [
        "",
        f"Fewest loader calls of every library (1 per cold key): {_verdict(ours_loads == 1)}.",
    ]
    return "\n".join(lines) + "\n"


def redis_report(data: dict[str, Any]) -> str:
    hits, bulk, cold, expiry = data["hits"], data["bulk"], data["cold"], data["expiry"]
    r, b = hits["ratios"], bulk["ratios"]
    lines = [
        "## Redis tier (issue: Redis tier)",
        "",
        "Redis 7 on loopback, started by the run. Loaders count their calls in Redis, so loads "
        "are counted across processes.",
        "",
        f"### Hit cost ({hits['rounds']} interleaved rounds of {hits['calls']:,} calls)",
        "",
        "| ratio | median (min..max) | target | |",
        "| --- | --- | --- | --- |",
    ]
    targets = [
        ("sync L2 hit (L1 off) / raw `GET` + `msgpack.unpackb`",
         "sync L2 hit / raw GET+unpackb", 1.15),
        ("async L2 hit (L1 off) / raw async `GET` + `unpackb`",
         "async L2 hit / raw async GET+unpackb", 1.15),
        ("repeated hit, L1 on / raw `GET` + `unpackb`", "L1 hit / raw GET+unpackb", 0.01),
        ("async repeated hit, L1 on / raw async `GET` + `unpackb`",
         "async L1 hit / raw async GET+unpackb", 0.01),
        ("`get_many` of 100 keys (L1 off) / raw `MGET` + unpack",
         "get_many / raw MGET+unpack", 1.2),
    ]  # fmt: skip
    for label, key, limit in targets:
        s = r.get(key) or b[key]
        lines.append(f"| {label} | {_fmt(s, 3)} | ≤ {limit} | {_verdict(s['median'] <= limit)} |")
    lines += [
        "",
        f"Speed-up of one `MGET` over 100 `GET`s: raw redis-py "
        f"{_fmt(b['raw speed-up, MGET over 100 GETs'], 1)}, cachewise `get_many` over 100 "
        f"`get`s {_fmt(b['cachewise speed-up, get_many over 100 gets'], 1)}.",
        "",
        "Median µs per call in this run (orientation only): "
        + ", ".join(f"{k} {v:.1f}" for k, v in hits["us_median"].items()) + ".",
        "",
        "Shared-tier hit beside the peers (a peer's time / cachewise's with L1 off, same rounds; "
        "> 1 is slower than cachewise). None of them has an in-process tier in front of Redis "
        "(two-tier rows: n/a; cachewise's repeated hit with L1 on is the row above):",
        "",
        "| peer (Redis backend, documented decorator) | peer / cachewise L2 hit |",
        "| --- | --- |",
        *(f"| {name} | {_fmt(s_)} |" for name, s_ in hits["peers"].items()),
        "| cashews, aiocache (sync) | n/a: async only |",
        "| dogpile.cache (async) | n/a: no asyncio API |",
        "",
        "Lowest shared-tier hit cost of the libraries with a TTL: "
        + _verdict(all(s_["median"] > 1 for s_ in hits["peers"].values())) + ".",
        "",
        "Bulk read of 100 keys beside the peers (peer / cachewise `get_many`, or `aget_many` for "
        "the async peers):",
        "",
        "| peer | peer / cachewise |",
        "| --- | --- |",
        *(f"| {name} | {_fmt(s_)} |" for name, s_ in bulk["peers"].items()),
        "| cashews, aiocache (sync) | n/a: async only |",
        "",
        f"### Cold key: 4 processes × 25 callers, 50 ms loader "
        f"({next(iter(cold.values()))['rounds']} rounds)",
        "",
        "| library, callers | loads (max) | caller p99 − 50 ms, ms (median, min..max) | target | |",
        "| --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for name, s in cold.items():
        ok = s["loads_max"] == 1 and s["p99_over_load_ms"]["median"] <= 10
        target = "1 load, ≤ +10 ms" if name.startswith("cachewise") else "(peer)"
        verdict = _verdict(ok) if name.startswith("cachewise") else ""
        lines.append(f"| {name} | {s['loads_max']} | {_fmt(s['p99_over_load_ms'], 1)} | "
                     f"{target} | {verdict} |")  # fmt: skip
    for name, s in data.get("wake", {}).items():  # runs saved before it was measured lack it
        lines.append(f"| {name} (4 × 25 at one instant) | n/a | {_fmt(s['p99_ms'], 1)} | "
                     "(floor: the machine's cost of waking them) | |")  # fmt: skip
    lines += [
        "| cashews, threads | n/a | cashews decorates async functions only | | |",
        "| dogpile.cache, tasks | n/a | dogpile.cache has no asyncio API | | |",
        "| aiocache, threads | n/a | aiocache decorates async functions only | | |",
    ]
    lines += [
        "",
        "### Expiry under load: ttl 1 s, 100 ms loader, 500 calls/s offered by 4 processes "
        "for 3 s",
        "",
        "| library | calls | calls that raised | loads | most loads for one expiry "
        "| caller p50, ms | caller p99, ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for name, s in sorted(expiry.items()):
        raised = s.get("errors", "n/r")  # runs saved before the count was kept
        lines.append(f"| {name} | {s['calls']} | {raised} | {s['loads']} | "
                     f"{s['max_loads_per_expiry']} | {s['p50_ms']:.2f} | "
                     f"{s['p99_ms']:.2f} |")  # fmt: skip
    lines.append(
        "| aiocache with stale serving | n/a | aiocache has no stale serving or early refresh "
        "| | | | |"
    )
    stale = {k: v for k, v in expiry.items() if "stale" in k}
    peers = {k: v for k, v in expiry.items() if not k.startswith("cachewise")}
    worst_stale = max(v["p99_ms"] for v in stale.values())
    best_peer = min(v["p99_ms"] for v in peers.values())
    one_load = all(v["max_loads_per_expiry"] == 1 for k, v in expiry.items()
                   if k.startswith("cachewise"))  # fmt: skip
    raised_here = [
        v["errors"] for k, v in expiry.items() if k.startswith("cachewise") and "errors" in v
    ]
    raised_line = (
        f"- no cachewise call raised: {_verdict(sum(raised_here) == 0)}."
        if raised_here
        else "- calls that raised: not counted in this run."
    )
    lines += [
        "",
        f"- 1 load per expiry across all processes (cachewise rows): {_verdict(one_load)}.",
        raised_line,
        f"- with `stale_ttl`, caller p99 ≤ 1 ms: {worst_stale:.2f} ms, "
        f"{_verdict(worst_stale <= 1.0)}; below every peer's ({best_peer:.2f} ms): "
        f"{_verdict(worst_stale < best_peer)}.",
        "",
    ]
    return "\n".join(lines) + "\n"


def writes_report(data: dict[str, Any]) -> str:
    call, flush = data["call"], data["flush"]
    behind = call["ratios"]["write_behind / PING"]
    lines = [
        "## Writes (issue: write-through and durable write-behind)",
        "",
        f"### Caller's cost ({call['rounds']} interleaved rounds of {call['calls']:,} calls, "
        "flusher stopped so only the caller's path is timed)",
        "",
        "| ratio | median (min..max) | target | |",
        "| --- | --- | --- | --- |",
        f"| write-behind call / one `PING` round trip | {_fmt(behind)} | ≤ 2 | "
        f"{_verdict(behind['median'] <= 2)} |",
        f"| Redis round trips per write-behind call (commands sent, counted) | "
        f"{call['round_trips_per_write_behind_call']:.2f} | ≤ 2 | "
        f"{_verdict(call['round_trips_per_write_behind_call'] <= 2)} |",
        f"| write-through call (store = one `HSET`) / `PING` | "
        f"{_fmt(call['ratios']['write_through / PING'])} | (orientation) | |",
        "",
        f"### Flushing {flush['writes']:,} writes to {flush['keys']:,} keys "
        f"({flush['rounds']} rounds, strategies alternated; a store write is one `HSET` plus "
        f"{flush['store_latency_s'] * 1000:g} ms of simulated database time)",
        "",
        "| strategy | store calls | callers' time, s | until all stored, s |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("write_through", "write_behind"):
        lines.append(
            f"| {name} | {_fmt(flush['store_calls'][name], 0)} | "
            f"{_fmt(flush['callers_s'][name])} | {_fmt(flush['until_stored_s'][name])} |"
        )
    lines += [
        "",
        "Peers: n/a. dogpile.cache, cashews and aiocache have no write-behind (a peer's "
        "write is the caller's own store call followed by a cache set or delete).",
        "",
        "Write-behind until stored / write-through, same round: "
        f"{_fmt(flush['behind_over_through_until_stored'])}. Every key's last value was checked "
        "in the store after each run.",
        "",
    ]
    return "\n".join(lines) + "\n"


def charts(data: dict[str, Any]) -> None:
    """PNG charts of the main figures, for docs/benchmarks.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = ROOT / "docs" / "img"
    out.mkdir(exist_ok=True)
    ns = data["hits"]["ns_per_call_median"]
    names = [n for n in peers.HAS_TTL if n in ns]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.barh(names, [ns[n] for n in names], color=["#2b7" if "cachewise" in n else "#889"
                                                      for n in names])  # fmt: skip
    left.set_xscale("log")
    left.set_xlabel("ns per hit, median (log scale; lower is better)")
    left.invert_yaxis()
    memory = data["memory"]
    right.barh(list(memory), list(memory.values()),
               color=["#2b7" if "cachewise" in n else "#889" for n in memory])  # fmt: skip
    right.set_xlabel("bytes per cached entry (100k entries)")
    right.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "hit_cost.png", dpi=90)
    plt.close(fig)


def render(data: dict[str, Any]) -> str:
    """The tables of one run, as docs/benchmarks.md shows them."""
    return (
        report(data)
        + "\n"
        + redis_report(data["redis"])
        + "\n"
        + writes_report(data["writes"])
        + "\n"
        + targets.report(data)
    )


def write_docs(section: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    header = (
        "# Benchmarks\n\n"
        "Every figure is a ratio measured side by side in one run on a shared 2-core machine; "
        "bare times are not comparable between runs. Reproduce with `bash scripts/bench.sh` "
        "(raw results in `benchmarks/results/`).\n\n"
    )
    analysis = ROOT / "benchmarks" / "analysis.md"
    notes = "\n" + analysis.read_text() if analysis.exists() else ""
    path.write_text(header + section + notes + _kept_sections(path))


def _kept_sections(path: Path) -> str:
    """The sections other scripts keep on the page (``cluster.py``, ``scaling.py``: between
    ``<!-- name -->`` markers, under their heading), carried over as they are."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = []
    for i, line in enumerate(lines):
        found = re.fullmatch(r"<!-- (\w+) -->", line)
        if not found:
            continue
        end = lines.index(f"<!-- /{found.group(1)} -->", i)
        start = max(j for j in range(i) if lines[j].startswith("## "))
        kept.append("\n" + "\n".join(lines[start : end + 1]) + "\n")
    return "".join(kept)


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
        charts(data)
        write_docs(render(data))
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
    charts(data)
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
        redis_data["cold"] = redis_tier.cold_key_fleet(server.url, 2 if args.quick else 5)
        redis_data["wake"] = redis_tier.wake_floor(5 if args.quick else 20)
        print("redis tier: expiry under load ...", flush=True)
        redis_data["expiry"] = redis_tier.expiry_under_load(server.url)
        print("writes: write-behind call cost, flush throughput ...", flush=True)
        write_data = {
            "call": writes.call_cost(server.url, rounds, 300 if args.quick else 2000),
            "flush": writes.flush_throughput(server.url, 1 if args.quick else 3),
        }
    data["redis"] = redis_data
    data["writes"] = write_data
    section = render(data)
    print(section)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (ROOT / "benchmarks" / "results" / f"{stamp}.json").write_text(json.dumps(data, indent=2))
    if not args.no_docs:
        write_docs(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
