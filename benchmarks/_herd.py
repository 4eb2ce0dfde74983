"""Herds of callers that start together and report each caller's latency (seconds)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any


def thread_herd(callers: int, call: Callable[[], Any], timeout: float = 60) -> list[float]:
    """``callers`` threads released together by a barrier, each calling ``call()`` once."""
    barrier = threading.Barrier(callers)
    latencies: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        began = time.perf_counter()
        call()
        with lock:
            latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=one) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return latencies


async def task_herd(callers: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    """``callers`` tasks started at once, each awaiting ``call()`` once."""

    async def one() -> float:
        began = time.perf_counter()
        await call()
        return time.perf_counter() - began

    return list(await asyncio.gather(*(one() for _ in range(callers))))
