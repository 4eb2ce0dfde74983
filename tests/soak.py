"""A bounded load test with faults: processes x threads of mixed cache calls for a fixed time,
while the cache's Redis is cut off, paused, slowed and restarted; invariants checked on every
call. Run by ``tests/test_soak.py``; ``python -m tests.soak --docs`` also writes
``docs/resilience.md``.

The store ("the database") is a second redis-server the faults never touch. A write bumps a
key's version in the store, then invalidates the key; a read's loader returns the store's
version. So a read that starts after an invalidation has settled must return at least that
version: anything lower is a stale value served after its invalidation.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import threading
import time
import traceback
from array import array
from pathlib import Path
from typing import Any

import redis

from cachewise import Cache
from cachewise.testing import RedisServer

from . import fault_scenarios

KEYS = 200
#: After an invalidation returned, by when every process must have dropped its copy.
SETTLE = 0.5
#: After a fault ends, by when the invalidations it delayed must have been applied.
RECOVERY = 3.0
OPTIONS: dict[str, Any] = {
    "socket_timeout": 0.25,
    "connect_timeout": 0.25,
    "breaker_reset": 0.5,
    "l1_maxsize": 1000,  # every key fits: a stale copy would stay until read, not be evicted
}


def worker(
    cache_url: str,
    store_url: str,
    ns: str,
    index: int,
    of: int,
    threads: int,
    until: float,
    out: str,
) -> None:
    """Process ``index`` of ``of``: ``threads`` threads of mixed calls until ``until``.

    It writes only keys ``k`` with ``k % of == index`` and reads only those of the next process:
    each key has one writer and one reader, so a copy the reader keeps after an invalidation
    shows up as a stale read instead of being replaced by a third process' next fill.
    """
    cache = Cache(cache_url, namespace=ns, **OPTIONS)
    store = redis.Redis.from_url(store_url)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reads: list[tuple[int, int, float]] = []  # key, version, start
    writes: list[tuple[int, int, float]] = []  # key, version, invalidation returned
    counts = {"read": 0, "write": 0, "set": 0, "get_many": 0, "errors": 0}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    max_l1 = [0]
    peak = [rss_start]  # the peak RSS while calls ran (not the gathering of records after)

    def load(key: int) -> int:
        return int(store.hget(f"{ns}-store", str(key)) or 0)

    def run(seed: int) -> None:
        rng = random.Random(seed)
        # Compact records (arrays, not tuples), so the process' memory is mostly the cache's.
        read_key, read_version, read_at = array("q"), array("q"), array("d")
        mine_w: list[tuple[int, int, float]] = []
        mine_lat = array("d")
        mine_counts = dict.fromkeys(counts, 0)
        while (now := time.monotonic()) < until:
            roll = rng.random()
            owner = index if roll >= 0.75 else (index + 1) % of  # reads: the next one's keys
            key = rng.randrange(KEYS // of) * of + owner
            try:
                if roll < 0.75:
                    value = cache.get_or_load(f"k{key}", lambda key=key: load(key), ttl=30)
                    read_key.append(key)
                    read_version.append(value)
                    read_at.append(now)
                    mine_counts["read"] += 1
                elif roll < 0.85:
                    version = int(store.hincrby(f"{ns}-store", str(key), 1))
                    cache.invalidate(f"k{key}")
                    mine_w.append((key, version, time.monotonic()))
                    mine_counts["write"] += 1
                elif roll < 0.95:
                    cache.set(f"s{key}", {"n": key, "at": now}, ttl=30)
                    mine_counts["set"] += 1
                else:
                    cache.get_many([f"s{k}" for k in range(key, key + 10)])
                    mine_counts["get_many"] += 1
            except Exception:  # an invariant: callers never see an exception
                mine_counts["errors"] += 1
                with lock:
                    errors.append(traceback.format_exc(limit=3))
            mine_lat.append(time.monotonic() - now)
            if len(mine_lat) % 200 == 0:
                max_l1[0] = max(max_l1[0], cache.stats()["l1_size"])
                peak[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with lock:
            reads.extend(zip(read_key, read_version, read_at, strict=True))
            writes.extend(mine_w)
            latencies.extend(mine_lat)
            for name, n in mine_counts.items():
                counts[name] += n

    pool = [threading.Thread(target=run, args=(os.getpid() * 100 + i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    stats = cache.stats()
    cache.close(timeout=2)
    Path(out).write_text(
        json.dumps(
            {
                "reads": reads,
                "writes": writes,
                "counts": counts,
                "errors": errors[:5],
                "latencies": sorted(latencies),
                "max_l1": max_l1[0],
                "rss_growth_kb": peak[0] - rss_start,
                "stats": {k: v for k, v in stats.items() if isinstance(v, (int, str))},
            }
        )
    )


def _faults(server: RedisServer, until: float, log: list[dict[str, Any]]) -> None:
    """Inject one fault every few seconds, in turn, until ``until``; record each window."""
    admin = server.client()
    kinds = [
        "pubsub killed", "paused 1 s", "slowed (DEBUG SLEEP 0.5 s)", "killed, restarted 1 s later",
    ]  # fmt: skip
    turn = 0
    time.sleep(3.0)
    while time.monotonic() < until - 4.0:
        kind = kinds[turn % len(kinds)]
        began = time.monotonic()
        try:
            if kind == "pubsub killed":
                admin.client_kill_filter(_type="pubsub")
            elif kind == "paused 1 s":
                server.pause()
                time.sleep(1.0)
                server.resume()
            elif kind.startswith("slowed"):
                admin.execute_command("DEBUG", "SLEEP", "0.5")
            else:
                server.kill()
                time.sleep(1.0)
                server.restart()
                admin = server.client()
        except redis.exceptions.RedisError:
            admin = server.client()
        log.append({"fault": kind, "start": began, "end": time.monotonic()})
        turn += 1
        time.sleep(3.0)


def run(seconds: float = 60.0, processes: int = 3, threads: int = 4) -> dict[str, Any]:
    """Run the load with faults; return the figures and every invariant violation found."""
    ctx = multiprocessing.get_context("spawn")
    ns = f"soak-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="cachewise-soak-"))
    with RedisServer("--enable-debug-command", "yes") as cache_server, RedisServer() as store:
        until = time.monotonic() + seconds
        outs = [str(tmp / f"{i}.json") for i in range(processes)]
        procs = [
            ctx.Process(
                target=worker,
                args=(cache_server.url, store.url, ns, i, processes, threads, until, out),
            )
            for i, out in enumerate(outs)
        ]
        for proc in procs:
            proc.start()
        faults: list[dict[str, Any]] = []
        _faults(cache_server, until, faults)
        for proc in procs:
            proc.join(seconds + 60)
        exitcodes = [proc.exitcode for proc in procs]
        results = [json.loads(Path(out).read_text()) for out in outs if Path(out).exists()]
    return _check(results, faults, exitcodes, seconds, processes, threads)


def _check(
    results: list[dict[str, Any]],
    faults: list[dict[str, Any]],
    exitcodes: list[int | None],
    seconds: float,
    processes: int,
    threads: int,
) -> dict[str, Any]:
    settled: dict[int, list[tuple[float, int]]] = {}
    for result in results:
        for key, version, done in result["writes"]:
            at = done + SETTLE
            for fault in faults:  # an invalidation a fault delayed settles after recovery
                if fault["start"] - 1.0 <= done <= fault["end"] + RECOVERY:
                    at = max(at, fault["end"] + RECOVERY)
            settled.setdefault(key, []).append((at, version))
    floors: dict[int, tuple[list[float], list[int]]] = {}
    for key, items in settled.items():
        items.sort()
        times, best, highest = [], [], 0
        for at, version in items:
            highest = max(highest, version)
            times.append(at)
            best.append(highest)
        floors[key] = (times, best)
    stale = []
    for result in results:
        for key, version, started in result["reads"]:
            times, best = floors.get(key, ([], []))
            i = bisect.bisect_right(times, started)
            if i and version < best[i - 1]:
                stale.append((key, version, best[i - 1], started))
    counts = {name: sum(r["counts"][name] for r in results) for name in results[0]["counts"]}
    latencies = sorted(x for r in results for x in r["latencies"])
    return {
        "seconds": seconds,
        "processes": processes,
        "threads_per_process": threads,
        "exitcodes": exitcodes,
        "operations": sum(v for k, v in counts.items() if k != "errors"),
        "by_kind": counts,
        "errors": counts["errors"],
        "error_samples": [e for r in results for e in r["errors"]][:3],
        "faults": [f["fault"] for f in faults],
        "stale_reads": len(stale),
        "stale_samples": stale[:5],
        "latency_p50_ms": latencies[len(latencies) // 2] * 1000,
        "latency_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "latency_max_ms": latencies[-1] * 1000,
        "max_l1_size": max(r["max_l1"] for r in results),
        "l1_maxsize": OPTIONS["l1_maxsize"],
        "max_rss_growth_mb": max(r["rss_growth_kb"] for r in results) / 1024,
        "breaker_opens": sum(r["stats"].get("breaker_opens", 0) for r in results),
        "l1_flushes": sum(r["stats"].get("l1_flushes", 0) for r in results),
        "outage_invalidations_sent": sum(
            r["stats"].get("outage_invalidations_sent", 0) for r in results
        ),
        "loads_without_redis": sum(r["stats"].get("loads_without_redis", 0) for r in results),
    }


def write_docs(figures: dict[str, Any]) -> None:
    lines = [
        "# Resilience under faults",
        "",
        "Generated by `python -m tests.soak --docs` (the test suite runs the same load in "
        "`tests/test_soak.py` and fails on any violation). "
        f"{figures['processes']} processes × {figures['threads_per_process']} threads for "
        f"{figures['seconds']:.0f} s of mixed calls (75% `get_or_load`, 10% store writes "
        "followed by `invalidate`, 10% `set`, 5% `get_many`) on 200 keys with "
        f"`l1_maxsize={figures['l1_maxsize']}`; each process reads only keys other processes "
        "write (one reader per key), so a copy kept after its invalidation would be read, not "
        "replaced by another process' reload, "
        "while the cache's Redis is, in turn: "
        + ", ".join(dict.fromkeys(figures["faults"]))
        + ". The store is another Redis the faults never touch.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| operations | {figures['operations']:,} |",
        f"| faults injected | {len(figures['faults'])} |",
        f"| errors raised to callers | {figures['errors']} |",
        f"| reads that returned a value older than a settled invalidation | "
        f"{figures['stale_reads']} |",
        f"| call latency p50 / p99 / max, ms | {figures['latency_p50_ms']:.2f} / "
        f"{figures['latency_p99_ms']:.1f} / {figures['latency_max_ms']:.0f} |",
        f"| largest L1 seen / `l1_maxsize` | {figures['max_l1_size']} / {figures['l1_maxsize']} |",
        f"| largest growth of a process' peak RSS, MB | {figures['max_rss_growth_mb']:.1f} |",
        f"| circuit breaker openings (all processes) | {figures['breaker_opens']} |",
        f"| L1 flushes (channel drops, recoveries) | {figures['l1_flushes']} |",
        f"| invalidations sent after an outage | {figures['outage_invalidations_sent']} |",
        f"| loads made without Redis (fail-open) | {figures['loads_without_redis']} |",
        "",
        f"An invalidation counts as settled {SETTLE} s after `invalidate()` returned, or "
        f"{RECOVERY} s after the end of a fault that overlapped it (during an outage it is "
        "kept and sent when Redis answers again).",
        "",
    ]
    scenarios = figures.get("scenarios")
    if scenarios:
        lines += [*fault_scenarios.table(scenarios, figures["scenario_seconds"]), ""]
    path = Path(__file__).resolve().parent.parent / "docs" / "resilience.md"
    # Sections other tools write (the stale-while-revalidate matrix) are kept as they are.
    text = path.read_text() if path.exists() else ""
    mark = "## Stale-while-revalidate"
    kept = "\n" + text[text.index(mark) :] if mark in text else ""
    path.write_text("\n".join(lines) + kept)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--docs", action="store_true", help="write docs/resilience.md")
    parser.add_argument("--scenario-seconds", type=float, default=10.0)
    args = parser.parse_args()
    figures = run(args.seconds)
    figures["scenario_seconds"] = args.scenario_seconds
    figures["scenarios"] = fault_scenarios.run_all(args.scenario_seconds)
    print(json.dumps(figures, indent=2))
    if args.docs:
        write_docs(figures)
    missed = [
        row["scenario"]
        for row in figures["scenarios"]
        if row["errors"] or row["stale"] or row["lost_silently"]
    ]
    return 0 if figures["errors"] == 0 and figures["stale_reads"] == 0 and not missed else 1


if __name__ == "__main__":
    sys.exit(main())
