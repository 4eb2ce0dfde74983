"""Flushing a write-behind queue from sync code (``Cache.flush``, ``close``, interpreter exit),
whatever loop or thread its flusher runs on."""

from __future__ import annotations

import asyncio
import threading

from .._drivers import run_async, run_sync
from .queue import WriteBehindQueue
from .types import FlushReport


def check_sync_flush(queue: WriteBehindQueue) -> None:
    """Refuse a sync flush of an async writer's Redis queue: its flusher is a task."""
    if queue.durable and queue.is_async and (queue.pending or queue.busy):
        raise RuntimeError(f"write-behind of {queue.where} is async: use await cache.aflush()")


def flush_from_sync(queue: WriteBehindQueue, timeout: float | None) -> FlushReport:
    """``flush`` for sync code (``Cache.flush``, ``close``, interpreter exit). An ``async
    def`` writer's in-memory queue that holds writes is drained on the writer's loop if it
    still runs in another thread, else on an event loop of its own in a helper thread (the
    writer's loop is closed or stopped). Raises when called on the thread of the writer's
    running loop, which it would block."""
    if not (queue.is_async and not queue.durable and (queue.pending or queue.busy)):
        return run_sync(queue.flush(timeout))
    loop, here = queue._loop, asyncio._get_running_loop()  # public twin raises without one
    if loop is not None and loop.is_running():
        if loop is here:
            raise RuntimeError(
                f"write-behind of {queue.where} runs on this event loop: await "
                "cache.aflush() or cache.aclose() there"
            )
        return asyncio.run_coroutine_threadsafe(run_async(queue.flush(timeout)), loop).result()
    reports: list[FlushReport] = []
    failures: list[BaseException] = []

    def drain() -> None:
        try:
            reports.append(asyncio.run(run_async(queue.flush(timeout))))
        except BaseException as exc:  # raised in the caller's thread below
            failures.append(exc)

    helper = threading.Thread(target=drain, name=f"cachewise-drain:{queue.where}")
    helper.start()
    helper.join()
    if failures:
        raise failures[0]
    return reports[0]
