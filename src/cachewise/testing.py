"""Helpers for testing code that uses cachewise: an isolated cache for one test, caching off
(``cachewise.disable``), a clock you move by hand, a throwaway ``redis-server`` (or cluster, or
Sentinel) on free loopback ports (started here, stopped by its pids), and herds of callers that
start together and report their latencies."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._switch import disable
from ._testservers import LocalCluster, LocalSentinel, RedisServer, free_port

if TYPE_CHECKING:
    from .cache import Cache

__all__ = [
    "FakeClock",
    "LocalCluster",
    "LocalSentinel",
    "RedisServer",
    "disable",
    "free_port",
    "isolated_cache",
    "task_herd",
    "thread_herd",
]


@contextlib.contextmanager
def isolated_cache(*, default: bool = True, **options: Any) -> Iterator[Cache]:
    """An in-process cache of this test's own (a namespace no other test uses), closed after.

    With ``default`` it is also the cache of module-level ``@cachewise.cached`` functions
    decorated inside the block, and the earlier default comes back after it. ``options`` go to
    ``Cache`` (``clock=FakeClock()``, ``l1_maxsize=``...); ``redis=`` is refused: isolation
    from other tests and processes is the point."""
    import cachewise

    from .cache import Cache
    from .errors import ConfigValueError

    if "redis" in options:
        raise ConfigValueError("isolated_cache() is in-process: use RedisServer for Redis")
    options.setdefault("namespace", f"test-{secrets.token_hex(6)}")
    cache = Cache(**options)
    earlier = cachewise._default
    if default:
        cachewise._default = cache
    try:
        yield cache
    finally:
        if default:
            cachewise._default = earlier
        cache.close(timeout=5)


class FakeClock:
    """A clock for ``Cache(clock=...)`` that only moves when told: expiry without sleeping."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        with self._lock:
            self._now += seconds


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
