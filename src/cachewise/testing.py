"""Helpers for testing code that uses cachewise: a clock you move by hand."""

from __future__ import annotations

import threading


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
