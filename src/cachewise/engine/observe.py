"""What integrations (``cachewise.contrib.prometheus``, ``cachewise.contrib.otel``) learn of
a cache's work: each load (around the loader, so a tracing span can be current while it runs)
and each read that L1 did not answer. Nothing here runs on an L1 hit, and nothing at all while
no observer is attached (``Engine.observers`` is empty: one truth test per load or miss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Observer(Protocol):
    """Told of loads and of reads L1 did not answer; its methods must not raise."""

    def around_load(
        self, where: str, key: str, reason: str, loader: Callable[[], Any]
    ) -> Callable[[], Any]:
        """The loader to call instead of ``loader`` (``loader`` itself when not tracing);
        ``reason``: ``miss``, ``stale`` (a refresh while the stale entry is served) or
        ``early`` (a refresh before expiry)."""
        ...

    def loaded(self, where: str, seconds: float, error: BaseException | None) -> None:
        """A load of a ``where`` function's entry ended after ``seconds``."""
        ...

    def read(self, where: str, seconds: float, tier: str, role: str) -> None:
        """A read L1 did not answer ended after ``seconds``: ``tier`` ``l2`` (Redis had it) or
        ``load`` (loaded, by this caller or the one it waited for); ``role`` ``leader``,
        ``waiter`` or ``alone`` (the lone caller's Redis read)."""
        ...


def traced(
    observers: tuple[Observer, ...], where: str, key: str, reason: str, loader: Callable[[], Any]
) -> Callable[[], Any]:
    """``loader`` wrapped by every observer, the first outermost."""
    for observer in reversed(observers):
        loader = observer.around_load(where, key, reason, loader)
    return loader
