"""Shared fixtures: a fake clock, a deterministic cache, and a ``drive`` helper that runs the same
test body through the sync and the async API."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from cachewise import Cache
from cachewise.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> Iterator[Cache]:
    """No jitter and no early refresh: expiry happens exactly when the test says."""
    c = Cache(namespace="t", clock=clock, ttl_jitter=0, early_refresh_beta=0)
    yield c
    c.close(timeout=5)


class Driver:
    """Calls ``Cache`` methods the sync way or the async way (``aget`` for ``get``...)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.is_async = mode == "async"

    def __call__(self, cache: Cache, method: str, *args: Any, **kwargs: Any) -> Any:
        if not self.is_async:
            return getattr(cache, method)(*args, **kwargs)
        return asyncio.run(self._acall(getattr(cache, "a" + method), args, kwargs))

    @staticmethod
    async def _acall(fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a decorated function (sync) or await it (async)."""
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return asyncio.run(_await(result))
        return result

    def function(self, body: Callable[..., Any]) -> Callable[..., Any]:
        """``body`` as a ``def`` or as an ``async def`` with the same signature and name."""
        if not self.is_async:
            return body

        async def as_async(*args: Any, **kwargs: Any) -> Any:
            return body(*args, **kwargs)

        as_async.__signature__ = inspect.signature(body)  # type: ignore[attr-defined]
        as_async.__qualname__ = body.__qualname__
        as_async.__name__ = body.__name__
        return as_async


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


@pytest.fixture(params=["sync", "async"])
def drive(request: pytest.FixtureRequest) -> Driver:
    return Driver(request.param)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    from .redis_server import RedisServer

    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own, so tests sharing one server never see each other."""
    import re
    import secrets

    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:40] + "-" + secrets.token_hex(3)


@contextlib.contextmanager
def caches(url: str, **defaults: Any) -> Iterator[Callable[..., Cache]]:
    """A maker of caches on ``url`` (``defaults`` under each call's options), all closed at the
    end; several of them stand for several processes."""
    made: list[Cache] = []

    def make(**options: Any) -> Cache:
        cache = Cache(url, **{**defaults, **options})
        made.append(cache)
        return cache

    try:
        yield make
    finally:
        for cache in made:
            cache.close(timeout=5)


@pytest.fixture
def make_cache(redis_server: Any, namespace: str) -> Iterator[Callable[..., Cache]]:
    """Caches on the shared test server, in this test's namespace."""
    with caches(redis_server.url, namespace=namespace) as make:
        yield make


class Gate:
    """A loader that blocks until ``release`` is set; ``started`` is set when it runs."""

    def __init__(self, value: Any = "v") -> None:
        self.value = value
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        assert self.release.wait(10)
        return self.value


class AsyncGate:
    """``Gate`` for asyncio: an ``async`` loader blocked on an ``asyncio.Event``."""

    def __init__(self, value: Any = "v") -> None:
        self.value = value
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> Any:
        self.calls += 1
        await self.release.wait()
        return self.value


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a started thread; its result lands in the returned list."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(fn()))
    thread.start()
    return thread, results


@pytest.fixture
def replicated() -> Iterator[tuple[Any, Any]]:
    """A master and a replica in sync with it, started and stopped by pid."""
    from .redis_server import RedisServer

    master = RedisServer()
    replica = RedisServer("--replicaof", "127.0.0.1", str(master.port))
    try:
        deadline = time.monotonic() + 20
        while replica.client().info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
        yield master, replica
    finally:
        replica.stop()
        master.stop()


@pytest.fixture(params=["in-process", "redis"])
def where(
    request: pytest.FixtureRequest, redis_server: Any, namespace: str
) -> Iterator[Callable[..., Cache]]:
    """A maker of caches in this test's namespace: in-process, or on the shared server."""
    made: list[Cache] = []

    def make(**options: Any) -> Cache:
        url = redis_server.url if request.param == "redis" else None
        cache = Cache(url, namespace=namespace, **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close(timeout=5)
