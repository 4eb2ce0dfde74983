"""Helpers of the tests that run caches against a real redis-server (several caches stand for
several processes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from cachewise import Cache
from cachewise.redis.keyspace import KeySpace

from .conftest import in_thread
from .test_concurrency import wait_until

MakeCache = Callable[..., Cache]


def lease_key(namespace: str, key: str) -> str:
    """The lease key of explicit key ``key``."""
    space = KeySpace(namespace)
    return space.lease(space.entry(key))


def listening(cache: Cache) -> Cache:
    """Wait until ``cache`` hears its namespace's events (its first Redis call starts that)."""
    cache.get("~warm-up")
    listener = cache._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None and listener.ready.wait(5)
    return cache


def woken_after(
    cache: Cache, read: Callable[[], Any], event: Callable[[], None]
) -> tuple[list[Any], float]:
    """Run ``read`` in a thread until it waits on a lease, then ``event()``: what ``read``
    returned, and how long after ``event`` it did."""
    waiter, got = in_thread(read)
    wait_until(lambda: cache.stats()["lease_waits"] >= 1)
    at = time.monotonic()
    event()
    waiter.join(10)
    return got, time.monotonic() - at


def heard(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The events ``cache``'s listener receives from now on, its own or others'."""
    listener = cache._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None
    events: list[Any] = []
    dispatch = listener._dispatch

    def counting(data: bytes) -> None:
        events.append(msgpack.unpackb(data))
        dispatch(data)

    monkeypatch.setattr(listener, "_dispatch", counting)
    return events
