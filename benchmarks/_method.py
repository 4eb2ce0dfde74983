"""How every scenario is measured: variants interleaved in a random order within each round,
ratios taken inside a round, summaries as median with min..max."""

from __future__ import annotations

import datetime
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Rounds = list[dict[str, float]]


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleaved(variants: dict[str, Any], rounds: int, timer: Callable[[Any], float]) -> Rounds:
    """``timer(variant)`` for every variant, in a new random order each round."""
    out: Rounds = []
    for _ in range(rounds):
        order = list(variants)
        random.shuffle(order)
        out.append({name: timer(variants[name]) for name in order})
    return out


async def ainterleaved(
    variants: dict[str, Any], rounds: int, timer: Callable[[Any], Awaitable[float]]
) -> Rounds:
    """``interleaved`` for timers that are coroutines."""
    out: Rounds = []
    for _ in range(rounds):
        order = list(variants)
        random.shuffle(order)
        out.append({name: await timer(variants[name]) for name in order})
    return out


def ratio(per_round: Rounds, top: str, bottom: str) -> dict[str, float]:
    """``top / bottom`` within each round, summarized."""
    return summarize([r[top] / r[bottom] for r in per_round])


def medians(runs: list[Rounds], scale: float) -> dict[str, float]:
    """Each variant's median time over the rounds of ``runs``, times ``scale`` (1e6 for µs)."""
    return {
        name: statistics.median(r[name] for r in rounds) * scale
        for rounds in runs
        for name in rounds[0]
    }


def rate(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn``, over ``number`` calls in a row."""
    started = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - started) / number


async def arate(fn: Callable[[], Any], number: int) -> float:
    """``rate`` for a function returning an awaitable."""
    started = time.perf_counter()
    for _ in range(number):
        await fn()
    return (time.perf_counter() - started) / number


def write_section(path: Path, marks: tuple[str, str], title: str, section: str) -> None:
    """Put ``section`` (which starts and ends with ``marks``) in place of the page's marked
    section, or at the end of the page under ``title``."""
    mark, end = marks
    text = path.read_text()
    if mark in text:
        head, rest = text.split(mark, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section.rstrip("\n") + ("\n\n" + tail if tail else "\n")
    else:
        text = text.rstrip("\n") + f"\n\n{title}\n\n" + section
    path.write_text(text)


def publish(
    kind: str, data: dict[str, Any], render: Callable[[dict[str, Any]], str],
    marks: tuple[str, str], title: str,
) -> None:  # fmt: skip
    """Stamp a run (``data["when"]``), save it under results/ as ``<kind>-<time>.json``, and
    put its rendered section on docs/benchmarks.md (see ``write_section``)."""
    root = Path(__file__).resolve().parent.parent
    now = datetime.datetime.now(datetime.timezone.utc)
    data["when"] = now.strftime("%Y-%m-%d %H:%M UTC")
    saved = root / "benchmarks" / "results" / f"{kind}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    saved.write_text(json.dumps(data, indent=1))
    section = render(data)
    write_section(root / "docs" / "benchmarks.md", marks, title, section)
    print(section)
