"""docs/benchmarks.md from one run of ``run.py``: the tables of each issue's targets with their
verdicts, the charts, the hand-written analysis (``analysis.md``), and the sections other scripts
keep on the page (between ``<!-- name -->`` markers), carried over as they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import peers
import targets

ROOT = Path(__file__).resolve().parent.parent


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
        *(
            [
                "| (floor) the call's enqueue script alone (its arguments taken from a call, "
                f"sent through redis-py) / `PING` | {_fmt(script)} | ≤ 2 | floor |"
            ]
            if (script := call["ratios"].get("enqueue script / PING"))
            else []
        ),
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
