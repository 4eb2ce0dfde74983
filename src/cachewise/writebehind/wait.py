"""The op that waits on a write-behind queue: a thread on its condition, a task on its events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from .._clock import monotonic
from .._drivers import Op

if TYPE_CHECKING:
    from .core import QueueCore


class QueueWait(Op):
    """Wait until ``ready()`` holds or ``timeout`` passes; True when it holds.

    A thread waits on the queue's condition. A task waits on one of the queue's events, set on
    its loop: ``kick`` (a write or a flush for the flusher) or ``progress`` (a write settled, for
    callers), checking ``ready()`` again after each.
    """

    def __init__(
        self,
        queue: QueueCore,
        ready: Callable[[], bool],
        timeout: float | None,
        event: Literal["kick", "progress"],
    ) -> None:
        self.queue = queue
        self.ready = ready
        self.timeout = timeout
        self.event = event

    def run_sync(self) -> bool:
        with self.queue.cond:
            return self.queue.cond.wait_for(self.ready, self.timeout)

    async def run_async(self) -> bool:
        queue = self.queue
        if not queue.is_async:  # its flusher is a thread: wait in one
            return await asyncio.to_thread(self.run_sync)
        deadline = None if self.timeout is None else monotonic() + self.timeout
        while not self.ready():
            if self.event == "progress":
                queue.ensure_flusher()  # wakes it, or restarts it on this loop
            event = queue._kick if self.event == "kick" else queue._progress
            left = None if deadline is None else deadline - monotonic()
            if event is None or (left is not None and left <= 0):
                return self.ready()
            event.clear()  # no await since ready() was checked: a set cannot be lost
            try:
                await asyncio.wait_for(event.wait(), left)
            except (asyncio.TimeoutError, TimeoutError):
                return self.ready()
        return True
