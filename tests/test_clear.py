"""``cache.clear()``: every entry of the namespace, in Redis and in every process' L1; no other
namespace's keys, and never the write-behind queues or writes the store does not have yet."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from cachewise import Cache
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import RedisServer

from .conftest import Driver
from .test_concurrency import wait_until


def test_in_process_clear_empties_l1_and_reloads(drive: Driver) -> None:
    cache = Cache(namespace="t")
    loads: list[int] = []

    def f(x: int) -> int:
        loads.append(x)
        return x * 2

    wrapped = cache.cached(ttl=60)(drive.function(f))
    for x in range(5):
        drive.run(wrapped, x)
    assert drive(cache, "clear") == 5
    loads.clear()
    assert drive.run(wrapped, 3) == 6 and loads == [3]
    cache.close()


def test_clear_drops_the_namespace_everywhere_and_nothing_else(
    make_cache: Callable[..., Cache], redis_server: Any, namespace: str, drive: Driver
) -> None:
    a, b = make_cache(), make_cache()
    other = Cache(redis_server.url, namespace=namespace + "x")
    raw = redis_server.client()
    space = KeySpace(namespace)
    for i in range(1500):  # more than one SCAN step
        a.set(f"k{i}", i, ttl=60)

    @a.cached(ttl=60, tags=["team"])
    def tagged() -> str:
        return "t"

    assert tagged() == "t"
    other.set("k1", "kept", ttl=60)
    assert b.get("k1") == 1  # held in b's L1 too
    # Data, not cache: a write-behind queue and a write the store does not have yet.
    queue_keys = [space.writer("wb", "app.save"), space.pending(space.entry("w"))]
    for key in queue_keys:
        raw.set(key, "data")
    dropped = drive(a, "clear")
    assert dropped >= 1501
    assert raw.exists(space.entry("k1"), space.tag("team")) == 0
    assert not list(raw.scan_iter(match=f"{namespace}:{{*"))
    assert all(raw.exists(key) for key in queue_keys)
    assert other.get("k1") == "kept"
    wait_until(lambda: b.get("k1") is None)  # every process' L1 learnt it
    assert a.get("k1") is None and a.stats()["redis_errors"] == 0
    raw.delete(*queue_keys)
    other.close()


def test_a_load_running_across_a_clear_does_not_store_its_older_value(
    make_cache: Callable[..., Cache], redis_server: Any, namespace: str
) -> None:
    cache = make_cache()
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(10)
        return "loaded before the clear"

    caller = threading.Thread(target=lambda: cache.get_or_load("k", slow, ttl=60))
    caller.start()
    assert entered.wait(10)
    cache.clear()
    release.set()
    caller.join(10)
    assert redis_server.client().exists(KeySpace(namespace).entry("k")) == 0
    assert cache.get("k") is None


def test_a_clear_redis_missed_is_sent_again(namespace: str) -> None:
    with RedisServer() as server:
        cache = Cache(server.url, namespace=namespace, socket_timeout=0.2)
        cache.set("k", "v", ttl=60)
        server.pause()
        try:
            assert cache.clear() == 0  # Redis did not answer: logged, counted, remembered
        finally:
            server.resume()
        assert cache.stats()["redis_errors"] >= 1
        wait_until(
            lambda: cache.get("other") is None and cache.stats()["breaker_state"] == "closed"
        )
        assert server.client().exists(KeySpace(namespace).entry("k")) == 0
        cache.close()


@pytest.mark.parametrize("bad", [1, "x"])
def test_clear_takes_no_arguments(bad: object) -> None:
    with pytest.raises(TypeError):
        Cache(namespace="t").clear(bad)  # type: ignore[call-arg]
