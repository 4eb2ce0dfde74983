"""Several spawned processes against one real redis-server."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

import pytest

from cachewise import Cache

from . import _workers

ctx = multiprocessing.get_context("spawn")


@pytest.mark.parametrize("use_tasks", [False, True], ids=["4x25 threads", "4x25 tasks"])
def test_cold_key_across_processes_loads_once(
    redis_server: Any, namespace: str, use_tasks: bool
) -> None:
    assert herd_loads([redis_server.url] * 4, namespace, use_tasks, redis_server) == 1


def herd_loads(urls: list[str], namespace: str, use_tasks: bool, counter: Any) -> int:
    """One process per URL, 25 callers each, on one cold key at once: how many loads ran
    (counted on ``counter``, a plain Redis)."""
    start = ctx.Barrier(len(urls))  # every worker connected and subscribed, then all call
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_workers.herd, args=(url, namespace, 25, use_tasks, start, out, counter.url)
        )
        for url in urls
    ]
    for p in procs:
        p.start()
    latencies = [lat for _ in procs for lat in out.get(timeout=60)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(latencies) == 25 * len(urls)
    return int(counter.client().get(f"{namespace}-test:loads"))


def test_lease_holder_killed_mid_load_is_taken_over(redis_server: Any, namespace: str) -> None:
    started = ctx.Event()
    holder = ctx.Process(target=_workers.slow_holder, args=(redis_server.url, namespace, started))
    holder.start()
    assert started.wait(30)
    out = ctx.Queue()
    other = ctx.Process(target=_workers.waiter, args=(redis_server.url, namespace, out))
    other.start()
    time.sleep(0.1)  # let it find the lease taken and wait
    os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
    holder.join(10)
    value, waited, lease_waits = out.get(timeout=30)
    other.join(10)
    assert value == "taken over" and lease_waits >= 1
    assert waited < 5.0  # bounded by the short lease, not by the dead load


def test_invalidation_reaches_another_process_within_100ms_p99(
    redis_server: Any, namespace: str
) -> None:
    rounds = 50
    ready, out = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(
        target=_workers.holder_of_copies, args=(redis_server.url, namespace, rounds, ready, out)
    )
    proc.start()
    cache = Cache(redis_server.url, namespace=namespace)
    sent: list[float] = []
    for _ in range(rounds):
        assert ready.get(timeout=30) == "holding"
        sent.append(time.monotonic())  # CLOCK_MONOTONIC is shared by the processes of a host
        cache.invalidate("k")
    heard = out.get(timeout=30)
    proc.join(30)
    assert proc.exitcode == 0
    delays = sorted(h - s for h, s in zip(heard, sent, strict=True))
    assert delays[int(0.99 * len(delays))] < 0.1, delays[-5:]
    cache.close()
