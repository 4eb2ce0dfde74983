"""Issue 20's table ("ahead of every peer on every row"): each of its rows as a ratio taken from
one run of ``run.py`` (and the newest ``fleet.py`` run for the fleet row), with its target.

A row whose figures the run lacks (a run saved before it was measured) is shown as not measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: Cold-key peers that do not protect against a stampede: not "the best peer" of a herd row.
_UNPROTECTED = ("lru_cache",)


def _best_peer(rows: dict[str, Any]) -> tuple[str, float] | None:
    """Of one herd's rows (by library), the peer with the lowest median p99 among those that
    loaded once."""
    peers = [
        (name, row["p99_ms"]["median"])
        for name, row in rows.items()
        if "cachewise" not in name
        and row["loads_max"] == 1
        and not any(u in name for u in _UNPROTECTED)
    ]
    return min(peers, key=lambda p: p[1]) if peers else None


def _herd(rows: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The rows of one in-process herd (named ``prefix: library``), by library."""
    return {n.split(": ", 1)[1]: r for n, r in rows.items() if n.startswith(prefix + ": ")}


def _herd_row(mine: Any, rows: dict[str, Any], label: str, limit: float) -> list[str]:
    """cachewise's row ``mine`` of a herd against the best peer among ``rows``."""
    best = _best_peer(rows)
    if best is None or mine is None:
        return [label, "not measured", f"≤ {limit}× the best peer", ""]
    value = mine["p99_ms"]["median"] / best[1]
    ok = mine["loads_max"] == 1 and value <= limit
    return [
        label,
        f"{value:.2f} ({mine['p99_ms']['median']:.1f} ms; best peer {best[0]} "
        f"{best[1]:.1f} ms; {mine['loads_max']} load)",
        f"≤ {limit}× the best peer, 1 load",
        _verdict(ok),
    ]


def _fleet_row() -> list[str]:
    runs = sorted(RESULTS.glob("fleet-*.json"))
    label = "Redis commands per expiry of one hot key, P processes (`fleet.py`)"
    if not runs:
        return [label, "not measured", "≤ 10 at every P, flat", ""]
    rows = json.loads(runs[-1].read_text())["rows"]
    worst = max(r["commands_per_expiry"] for r in rows)
    cells = " / ".join(f"{r['commands_per_expiry']:.1f}" for r in rows)
    at = " / ".join(str(r["processes"]) for r in rows)
    loads = max(r["loads_per_expiry"] for r in rows)
    return [
        label,
        f"{cells} at P = {at} (run {runs[-1].stem[6:]}); {loads:.2f} loads per expiry",
        "≤ 10 at every P, flat",
        _verdict(worst <= 10 and loads == 1.0),
    ]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def _ratio_row(
    label: str, get: Callable[[], dict[str, float] | None], limit: float, unit: str = "×"
) -> list[str]:
    try:
        s = get()
    except KeyError:
        s = None
    if s is None:
        return [label, "not measured", f"≤ {limit}{unit}", ""]
    return [
        label,
        f"{s['median']:.2f} ({s['min']:.2f}..{s['max']:.2f})",
        f"≤ {limit}{unit}",
        # A floor row shows what the machine and the language allow against the same target,
        # and a fallback row what a package built without its C extension serves.
        label.split(")")[0][1:]
        if label.startswith(("(floor)", "(fallback)"))
        else _verdict(s["median"] <= limit),
    ]


def report(data: dict[str, Any]) -> str:
    """The section of docs/benchmarks.md for issue 20, from one run's ``data``."""
    hits, redis, writes = data["hits"]["ratios"], data["redis"], data["writes"]
    memory = data.get("memory", {}).get("cachewise @cached")
    miss = data.get("miss")
    threads, tasks = _herd(data["stampede"], "100 threads"), _herd(data["stampede"], "500 tasks")
    rows = [
        _herd_row(threads.get("cachewise @cached"), threads,
                  "cold key, 100 threads in one process, 50 ms loader: p99 / best peer's", 1.05),
        _herd_row(tasks.get("cachewise @cached"), tasks,
                  "cold key, 500 asyncio tasks, 50 ms loader: p99 / best peer's", 1.05),
    ]  # fmt: skip
    cold = redis["cold"]
    rows += [
        _herd_row(row, cold,
                  f"cold key, 4 processes × 25, shared Redis: p99 / best peer's ({name})", 1.0)
        for name, row in cold.items()
        if "cachewise" in name
    ]  # fmt: skip
    rows += [
        _ratio_row("L1 hit, sync `@cached` / `functools.lru_cache` hit",
                   lambda: hits["sync hit / lru_cache hit"], 2.0),
        _ratio_row("(fallback) the same hit, pure Python (a package built without a C "
                   "compiler) / `functools.lru_cache` hit",
                   lambda: hits["pure-Python sync hit / lru_cache hit"], 2.0),
        _ratio_row("(floor) the least a Python hit honouring a TTL does (a dict lookup, a "
                   "clock read, a compare) / `functools.lru_cache` hit",
                   lambda: hits["expiry floor / lru_cache hit"], 2.0),
        _ratio_row("L1 hit, async `@cached` / async dict floor",
                   lambda: hits["async hit / async dict floor"], 2.0),
        _ratio_row("(floor) the same least hit, `async def` / async dict floor",
                   lambda: hits["async expiry floor / async dict floor"], 2.0),
        [
            "L1 memory per entry (`@cached`, int argument, 100k entries, tracemalloc), bytes",
            "not measured" if memory is None else f"{memory:.0f}",
            "≤ 300",
            "" if memory is None else _verdict(memory <= 300),
        ],
        _ratio_row("in-process miss (load, store, evict; 200k unique keys, maxsize 1,000) / "
                   "cachetools `TTLCache` with a lock",
                   lambda: miss["ratio"] if miss else None, 1.5),
        _ratio_row("L2 hit with L1 off, sync / raw `GET` + `unpackb`",
                   lambda: redis["hits"]["ratios"]["sync L2 hit / raw GET+unpackb"], 1.05),
        _ratio_row("(floor) the least a shared-tier hit honouring a TTL does (the entry's "
                   "`GET`, its envelope unpacked, its fresh-until compared with the server's "
                   "clock) / raw `GET` + `unpackb`",
                   lambda: redis["hits"]["ratios"]["TTL floor / raw GET+unpackb"], 1.05),
        _ratio_row("`get_many` of 100 keys, sync / raw `MGET` + unpack",
                   lambda: redis["bulk"]["ratios"]["get_many / raw MGET+unpack"], 1.15),
        _ratio_row("`write_behind` call / raw `XADD` of the same entry",
                   lambda: writes["call"]["ratios"]["write_behind / XADD"], 1.3),
        _ratio_row("(floor) a script that only runs that `XADD` / raw `XADD`",
                   lambda: writes["call"]["ratios"]["script XADD / XADD"], 1.3),
        _ratio_row("(floor) the call's own enqueue script (queue, pending record and cache "
                   "write, one atomic `EVALSHA`), its arguments taken from a call and sent "
                   "alone through redis-py / raw `XADD`",
                   lambda: writes["call"]["ratios"]["enqueue script / XADD"], 1.3),
        _fleet_row(),
    ]  # fmt: skip
    lines = [
        "## Ahead of every peer (issue 20)",
        "",
        "Each row of the issue, from the run above (the fleet row from the newest "
        "`benchmarks/fleet.py` run); ratios are medians over the rounds (min..max).",
        "",
        "| row | now | target | |",
        "| --- | --- | --- | --- |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"
