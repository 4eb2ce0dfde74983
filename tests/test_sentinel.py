"""A master managed by Sentinel: named by a ``redis+sentinel://`` URL, or by a Sentinel-managed
client of either flavour alone or as a pair, against a real ``redis-server --sentinel``."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel

from cachewise import Cache, ConfigValueError
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import LocalSentinel, free_port

from . import _workers
from .test_cluster_failover import Load, Writer
from .test_concurrency import wait_until


@pytest.fixture(scope="module")
def sentinel_port(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A sentinel on loopback watching the test server as the service ``main``; stopped by pid."""
    port = free_port()
    folder: Path = tmp_path_factory.mktemp("sentinel")
    conf = folder / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor main 127.0.0.1 {redis_server.port} 1\n"
    )
    binary = shutil.which("redis-server")
    assert binary is not None
    proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        sentinel = redis.sentinel.Sentinel([("127.0.0.1", port)], socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                sentinel.discover_master("main")
                break
            except (redis.exceptions.RedisError, OSError):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _round_trip(cache: Cache, redis_server: Any, namespace: str) -> None:
    """Written with the sync API, read with the async one, landed in the watched server."""
    cache.set("k", "through sentinel", ttl=30)

    async def read() -> Any:
        return await cache.aget_or_load("k", lambda: "loaded", ttl=30)

    assert asyncio.run(read()) == "through sentinel"
    assert redis_server.client().exists(KeySpace(namespace).entry("k")) == 1
    assert cache.stats()["redis_errors"] == 0
    cache.close()


def test_a_sentinel_master_given_as_a_pair(
    sentinel_port: int, redis_server: Any, namespace: str
) -> None:
    sync = redis.sentinel.Sentinel([("127.0.0.1", sentinel_port)], socket_timeout=0.5)
    asyn = redis.asyncio.sentinel.Sentinel([("127.0.0.1", sentinel_port)], socket_timeout=0.5)
    pair = (sync.master_for("main"), asyn.master_for("main"))
    _round_trip(Cache(pair, namespace=namespace), redis_server, namespace)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_sentinel_client_alone_gets_its_twin_through_the_sentinels(
    sentinel_port: int, redis_server: Any, namespace: str, flavour: str
) -> None:
    kind: Any = redis.sentinel.Sentinel if flavour == "sync" else redis.asyncio.sentinel.Sentinel
    client = kind([("127.0.0.1", sentinel_port)], socket_timeout=0.5).master_for("main")
    _round_trip(Cache(client, namespace=namespace), redis_server, namespace)


def test_a_sentinel_url(sentinel_port: int, redis_server: Any, namespace: str) -> None:
    url = f"redis+sentinel://127.0.0.1:{sentinel_port},127.0.0.1:{free_port()}/main/0"
    _round_trip(Cache(url, namespace=namespace), redis_server, namespace)


def test_a_service_the_sentinels_do_not_know_fails_open_and_is_counted(
    sentinel_port: int, namespace: str
) -> None:
    cache = Cache(f"redis+sentinel://127.0.0.1:{sentinel_port}/nosuch", namespace=namespace)
    assert cache.get_or_load("k", lambda: "from the loader", ttl=30) == "from the loader"
    assert cache.stats()["redis_errors"] >= 1
    cache.close()


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://127.0.0.1:1", "redis+sentinel://hostonly/main", "redis+sentinel://h:1/a/b"],
)
def test_a_bad_sentinel_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ConfigValueError, match="Sentinel URL"):
        Cache(url, namespace="n")


def test_sentinel_failover_under_load(namespace: str, redis_server: Any) -> None:
    """``SENTINEL FAILOVER`` while threads read, write, invalidate and queue writes behind: no
    exception but a refused enqueue reaches a caller; afterwards invalidations are honoured on
    the new master, and every enqueue acknowledged by a replica landed in the store."""
    store = _workers.use_store(redis_server.url, namespace)
    with LocalSentinel() as sentinel:
        cache, _get_row, save = _workers.rows_cache(
            sentinel.url, namespace, replica_wait=0.2, write_behind_replica_wait=0.2,
            write_behind_claim_idle=1.0,
        )  # fmt: skip
        other = Cache(sentinel.url, namespace=namespace)
        load = Load(other)
        writer = Writer(save)
        try:
            time.sleep(0.5)
            sentinel.failover()
            time.sleep(1.0)
        finally:
            writer.stop()
            load.stop()
        assert load.errors == [] and load.calls > 100
        wait_until(lambda: cache.flush(timeout=5).pending == 0, timeout=60)
        landed = {int(k): v.decode() for k, v in store.hgetall(f"{namespace}-store:rows").items()}
        missing = {row for row, value in writer.acked.items() if landed.get(row) != value}
        unreplicated = cache.stats()["write_behind_unreplicated"]
        assert len(writer.acked) > 50
        assert len(missing) <= unreplicated  # only writes acknowledged without a replica
        tries = itertools.count()

        def settled() -> bool:  # a write of one cache reaches the other through the new master
            probe = f"probe{next(tries)}"
            cache.set(probe, "p", ttl=30)
            return other.get(probe) == "p" and other.stats()["breaker_state"] == "closed"

        wait_until(settled, timeout=30)
        for i in range(10):  # invalidations are honoured again
            key = f"after{i}"
            cache.set(key, "old", ttl=30)
            assert other.get(key) == "old"
            cache.invalidate(key)
            wait_until(lambda k=key: other.get(k) is None, timeout=10)
        cache.close(timeout=5)
        other.close(timeout=5)
