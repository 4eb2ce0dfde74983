"""The fleet row: P processes (2, 4, 8, 16) x 2 threads call one cached function on one hot key
(ttl 1 s, stale_ttl 5 s, a 50 ms loader, about 100 calls/s per process) for 10 s against one
``redis-server``.

    .venv/bin/python benchmarks/fleet.py [--seconds 10] [--processes 2,4,8,16]

Reported per P: loads per expiry (loads that began within half a ttl of each other are one
expiry's; must stay 1.0), Redis commands per expiry (``INFO commandstats`` deltas of the
cache's server over the run, the harness's own ``INFO`` calls taken out; load times are kept
on a second server), and the callers' p99 after the first fill (must stay <= 1 ms). Written into
docs/benchmarks.md between the ``fleet`` markers; the run is saved under results/.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import redis  # noqa: E402

from _method import percentile, publish  # noqa: E402
from cachewise import Cache  # noqa: E402
from cachewise.testing import RedisServer  # noqa: E402

MARK, END = "<!-- fleet -->", "<!-- /fleet -->"
TTL, STALE, LOAD_S, RATE_PER_THREAD = 1.0, 5.0, 0.05, 50.0
WARMUP = 2.0  # seconds of the run before commands and expiries are counted


def _worker(url: str, counter_url: str, seconds: float, start: float, out: Any, done: Any) -> None:
    """One process: two threads calling the hot key until ``start + seconds``; closes its cache
    once ``done`` is set (after the commands are counted: closing is not an expiry's cost)."""
    counter = redis.Redis.from_url(counter_url)
    cache = Cache(url, namespace="fleet")

    @cache.cached(ttl=TTL, stale_ttl=STALE)
    def hot(key: int) -> int:
        counter.rpush("loads", time.time())
        time.sleep(LOAD_S)
        return key

    latencies: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        mine: list[float] = []
        filled = False
        next_at = start
        while True:
            now = time.monotonic()
            if now >= start + seconds:
                break
            if now < next_at:
                time.sleep(next_at - now)
            next_at += 1 / RATE_PER_THREAD
            began = time.perf_counter()
            hot(1)
            took = time.perf_counter() - began
            if filled:
                mine.append(took)
            filled = True
        with lock:
            latencies.extend(mine)

    time.sleep(max(0.0, start - time.monotonic()))
    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(latencies)
    done.wait(60)
    cache.close(timeout=5)


def _commands(client: Any) -> dict[str, int]:
    """Calls of each command so far, without ``INFO``'s own."""
    stats = client.info("commandstats")
    return {k[len("cmdstat_") :]: v["calls"] for k, v in stats.items() if k != "cmdstat_info"}


def run(processes: int, seconds: float) -> dict[str, Any]:
    with RedisServer() as server, RedisServer() as counter_server:
        admin, counter = server.client(), counter_server.client()
        ctx = multiprocessing.get_context("spawn")
        out, done = ctx.Queue(), ctx.Event()
        start = time.monotonic() + 3.0 + processes * 0.3  # after every process imported
        workers = [
            ctx.Process(
                target=_worker, args=(server.url, counter_server.url, seconds, start, out, done)
            )
            for _ in range(processes)
        ]
        for w in workers:
            w.start()
        # Counted from the steady state: every process has started (connections, scripts
        # loaded, listeners registered) and the first fill is done.
        time.sleep(max(0.0, start + WARMUP - time.monotonic()))
        before, since = _commands(admin), time.time()
        latencies: list[float] = []
        for _ in workers:
            latencies.extend(out.get(timeout=seconds + 60))
        after = _commands(admin)
        done.set()
        for w in workers:
            w.join(30)
        starts = sorted(t for t in map(float, counter.lrange("loads", 0, -1)) if t > since)
    loads = len(starts)
    # One expiry: the loads that began within half a ttl of the first of them (the first
    # fill counts as one); a second load for one expiry is a herd, which must not happen.
    expiries = 0
    last = -1e9
    for at in starts:
        if at - last > TTL / 2:
            expiries += 1
            last = at
    expiries = max(expiries, 1)
    return {
        "processes": processes,
        "calls": len(latencies) + 2 * processes,
        "loads": loads,
        "expiries": expiries,
        "loads_per_expiry": loads / expiries,
        "commands": sum(after.values()) - sum(before.values()),
        "commands_per_expiry": (sum(after.values()) - sum(before.values())) / expiries,
        "per_expiry_by_command": {
            name: round((calls - before.get(name, 0)) / expiries, 1)
            for name, calls in sorted(after.items(), key=lambda kv: -kv[1])
            if calls > before.get(name, 0)
        },
        "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else 0.0,
    }


def _met(row: dict[str, Any]) -> bool:
    return bool(
        row["loads_per_expiry"] == 1.0 and row["commands_per_expiry"] <= 10 and row["p99_ms"] <= 1
    )


def render(data: dict[str, Any]) -> str:
    lines = [
        MARK,
        f"Run {data['when']}: P processes x 2 threads, one hot key, ttl {TTL:g} s, stale_ttl "
        f"{STALE:g} s, {LOAD_S * 1000:.0f} ms loader, about 100 calls/s per process, "
        f"{data['seconds']:g} s. Counted after the first {WARMUP:g} s (start-up: connections, "
        "script loads, the first fill): an expiry is a group of loads that began within half a "
        "ttl of each other; commands are the cache server's over the same time.",
        "",
        "| P | calls | loads per expiry | Redis commands per expiry | the most frequent | p50 ms "
        "| p99 ms | target | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['processes']} | {r['calls']} | {r['loads_per_expiry']:.2f} | "
            f"{r['commands_per_expiry']:.1f} | "
            + ", ".join(f"{k} {v:g}" for k, v in list(r["per_expiry_by_command"].items())[:4])
            + f" | {r['p50_ms']:.3f} | {r['p99_ms']:.2f} | "
            "1.0 load, ≤ 10 commands, p99 ≤ 1 ms | " + ("met" if _met(r) else "**MISSED**") + " |"
        )
    lines.append(END)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", default="2,4,8,16")
    args = parser.parse_args()
    rows = [run(int(p), args.seconds) for p in args.processes.split(",")]
    publish("fleet", {"seconds": args.seconds, "rows": rows}, render, (MARK, END),
            "## The fleet row")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
