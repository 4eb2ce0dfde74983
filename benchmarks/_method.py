"""How every scenario is measured: variants interleaved in a random order within each round,
ratios taken inside a round, summaries as median with min..max."""

from __future__ import annotations

import random
import statistics
from collections.abc import Awaitable, Callable
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
