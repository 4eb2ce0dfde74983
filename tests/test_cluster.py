"""Every feature on a real Redis Cluster: six ``redis-server`` processes on loopback (3 masters,
3 replicas), started by the fixture and stopped by pid. What is done per master (replica waits,
queue partitions, slot refresh, clear, the operations command) is in ``test_cluster_masters.py``."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from cachewise import Cache
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import LocalCluster

from . import _workers, cluster_helpers
from .cluster_helpers import admin, on
from .test_concurrency import wait_until
from .test_multiprocess import herd_loads

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli to join it"),
    # An exception that escapes a thread of cachewise's during a failover is a bug.
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]

#: The module's cluster and the caches each test makes on it (``cluster_helpers``).
cluster, caches = cluster_helpers.cluster, cluster_helpers.caches


def test_a_url_of_any_node_is_served_as_a_cluster(
    cluster: LocalCluster, namespace: str, caches: list[Cache]
) -> None:
    a, b = on(cluster, namespace, caches, 0), on(cluster, namespace, caches, 4)
    assert a.get_or_load("k", lambda: "v", ttl=60) == "v"
    assert b.get_or_load("k", lambda: "other", ttl=60) == "v"  # the shared entry
    assert a._engine.backend is not None and a._engine.backend.cluster
    assert a.stats()["redis_errors"] == 0 and b.stats()["redis_errors"] == 0


def test_entries_spread_over_every_master_and_each_has_a_ttl(
    cluster: LocalCluster, namespace: str, caches: list[Cache]
) -> None:
    cache = on(cluster, namespace, caches)
    for i in range(300):
        cache.set(f"k{i}", i, ttl=60)
    counts = []
    for master in cluster.masters():
        client = master.client()
        keys = list(client.scan_iter(f"{namespace}:*", count=1000))
        counts.append(len(keys))
        assert all(client.pttl(key) > 0 for key in keys)
        client.close()
    assert len(counts) == 3 and all(n > 30 for n in counts), counts
    assert sum(counts) == 300


def test_cluster_clients_given_alone_or_as_a_pair(cluster: LocalCluster, namespace: str) -> None:
    node = cluster.nodes[0]
    sync = redis.cluster.RedisCluster(host="127.0.0.1", port=node.port)

    def asynchronous() -> Any:
        return redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=node.port)

    for spec in (sync, asynchronous(), (sync, asynchronous())):
        cache = Cache(spec, namespace=namespace)
        cache.set("k", "v", ttl=5)

        async def read(c: Cache = cache) -> Any:
            return await c.aget("k")

        assert asyncio.run(read()) == "v" and cache.get("k") == "v"
        assert cache.stats()["redis_errors"] == 0
        cache.close()


def test_single_flight_and_lease_wake_ups_across_caches(
    cluster: LocalCluster, namespace: str, caches: list[Cache]
) -> None:
    a, b = on(cluster, namespace, caches, 0), on(cluster, namespace, caches, 1)
    loads: list[str] = []
    release = threading.Event()

    def load(who: str) -> Any:
        def run() -> str:
            loads.append(who)
            release.wait(10)
            return who

        return run

    results: list[Any] = []

    def call(cache: Cache, who: str) -> None:
        results.append(cache.get_or_load("cold", load(who), ttl=60))

    threads = [threading.Thread(target=call, args=cw) for cw in ((a, "a"), (b, "b")) * 10]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(loads) >= 1)
    time.sleep(0.2)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(loads) == 1 and results == [loads[0]] * 20


def test_get_many_over_many_slots_and_coherent_l1s(
    cluster: LocalCluster, namespace: str, caches: list[Cache]
) -> None:
    a, b = on(cluster, namespace, caches, 0), on(cluster, namespace, caches, 2)
    keys = [f"m{i}" for i in range(50)]
    for i, key in enumerate(keys):
        a.set(key, i, ttl=60)
    assert b.get_many([*keys, "absent"]) == {key: i for i, key in enumerate(keys)}
    assert b.get("m1") == 1  # now in b's L1
    a.set("m1", "new", ttl=60)
    wait_until(lambda: b.get("m1") == "new")  # the fill event reached b's L1
    a.invalidate("m1", "m2", "m3")  # three slots
    wait_until(lambda: b.get("m1") is None and b.get("m2") is None)
    admin_client = admin(cluster)
    assert not admin_client.exists(KeySpace(namespace).entry("m3"))
    admin_client.close()


def test_tags_across_slots(cluster: LocalCluster, namespace: str, caches: list[Cache]) -> None:
    a, b = on(cluster, namespace, caches, 0), on(cluster, namespace, caches, 3, l1_maxsize=0)
    calls: list[int] = []

    @a.cached(ttl=60, tags=lambda team: [f"team:{team}", "all"])
    def members(team: int) -> list[int]:
        calls.append(team)
        return [team]

    @b.cached(ttl=60, tags=lambda team: [f"team:{team}", "all"])
    def members_b(team: int) -> list[int]:
        return [-1]

    for team in range(6):
        assert members(team) == [team]
    assert calls == list(range(6))
    b.invalidate_tags("team:2")
    wait_until(lambda: members(2) == [2] and calls.count(2) == 2)
    assert members(3) == [3] and calls.count(3) == 1
    a.invalidate_tags("all")
    assert [members(t) for t in range(6)] == [[t] for t in range(6)]
    assert all(calls.count(t) >= 2 for t in range(6))
    assert a.stats()["redis_errors"] == 0 and b.stats()["redis_errors"] == 0
    del members_b


async def test_async_reads_and_writes(cluster: LocalCluster, namespace: str) -> None:
    cache = Cache(cluster.nodes[5].url, namespace=namespace)
    loads: list[int] = []

    async def load() -> str:
        loads.append(1)
        await asyncio.sleep(0.05)
        return "v"

    got = await asyncio.gather(*(cache.aget_or_load("k", load, ttl=60) for _ in range(50)))
    assert got == ["v"] * 50 and loads == [1]
    await cache.aset("k2", "x", ttl=60)
    assert await cache.aget_many(["k", "k2", "absent"]) == {"k": "v", "k2": "x"}
    await cache.ainvalidate("k")
    assert await cache.aget("k") is None
    assert cache.stats()["redis_errors"] == 0
    await cache.aclose()


def test_write_behind_on_a_cluster(
    cluster: LocalCluster, namespace: str, redis_server: Any
) -> None:
    store = _workers.use_store(redis_server.url, namespace)  # the "database": a plain Redis
    cache, get_row, save = _workers.rows_cache(cluster.url, namespace)
    try:
        for row in range(20):
            save(row, f"v{row}")
        assert get_row(3) == "v3"
        report = cache.flush(timeout=20)
        assert report.pending == 0 and report.lost == 0
        assert {
            int(k): v.decode() for k, v in store.hgetall(f"{namespace}-store:rows").items()
        } == {row: f"v{row}" for row in range(20)}
        assert cache.stats()["redis_errors"] == 0
    finally:
        cache.close(timeout=5)


def test_cold_key_across_processes_loads_once(
    cluster: LocalCluster, namespace: str, redis_server: Any
) -> None:
    urls = [cluster.nodes[i].url for i in range(4)]
    assert herd_loads(urls, namespace, False, redis_server) == 1


def test_stale_while_revalidate_with_l1_off(
    cluster: LocalCluster, namespace: str, caches: list[Cache]
) -> None:
    """At expiry, within ``stale_ttl``, callers get the stale value at once while one refresh
    runs under the lease."""
    cache = on(cluster, namespace, caches, 2, l1_maxsize=0)
    release = threading.Event()
    loads: list[str] = []

    def load() -> str:
        loads.append("load")
        if len(loads) > 1:
            release.wait(10)
        return f"v{len(loads)}"

    assert cache.get_or_load("k", load, ttl=0.3, stale_ttl=30) == "v1"
    time.sleep(0.5)  # expired: stale now
    began = time.monotonic()
    got = [cache.get_or_load("k", load, ttl=0.3, stale_ttl=30) for _ in range(5)]
    waited = time.monotonic() - began
    assert got == ["v1"] * 5 and waited < 5  # none waited for the blocked refresh
    release.set()
    wait_until(lambda: cache.get_or_load("k", load, ttl=30, stale_ttl=30) == "v2")
    assert len(loads) >= 2  # the refresh ran (and v2, itself short-lived, may have been too)
    assert cache.stats()["stale_served"] >= 5


def test_the_operations_command_counts_the_listeners_of_every_node(
    cluster: LocalCluster, namespace: str, caches: list[Cache], capsys: pytest.CaptureFixture[str]
) -> None:
    """On a cluster listeners keep no registry and subscribe on different nodes: the command
    still counts every one of them."""
    import json

    from cachewise.cli import main

    for node in (0, 1, 2):
        cache = on(cluster, namespace, caches, node=node)
        cache.get("warm-up")  # starts its listener
        listener = cache._engine.backend.listener  # type: ignore[union-attr]
        assert listener is not None and listener.ready.wait(10)

    def listening() -> int:
        assert main(["stats", cluster.url, "-n", namespace, "--json"]) == 0
        return int(json.loads(capsys.readouterr().out)["processes_listening"])

    wait_until(lambda: listening() == 3)


def test_a_plain_client_of_a_cluster_node_is_reported(
    cluster: LocalCluster, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Given as a plain ``redis.Redis``, a cluster node cannot serve other nodes' slots: said
    at ERROR, and every failing call is served without Redis and counted (never a no-op in
    silence, never the caller's exception)."""
    cache = Cache(redis.Redis(port=cluster.nodes[0].port), namespace=namespace)
    try:
        got = [cache.get_or_load(f"k{i}", lambda i=i: i, ttl=60) for i in range(20)]
        assert got == list(range(20))
        assert "plain client of a node of a Redis Cluster" in caplog.text
        assert cache.stats()["redis_errors"] > 0
    finally:
        cache.close(timeout=1)


def test_bulk_loads_and_write_through_over_many_slots(
    cluster: LocalCluster, namespace: str, caches: list[Cache]
) -> None:
    a, b = on(cluster, namespace, caches, 0), on(cluster, namespace, caches, 5, l1_maxsize=0)
    asked: list[list[str]] = []

    def load_many(keys: list[str]) -> dict[str, str]:
        asked.append(sorted(keys))
        return {key: f"row {key}" for key in keys}

    keys = [f"b{i}" for i in range(40)]
    assert a.get_or_load_many(keys, load_many, ttl=60) == {k: f"row {k}" for k in keys}
    assert b.get_or_load_many(keys, load_many, ttl=60) == {k: f"row {k}" for k in keys}
    assert asked == [sorted(keys)]  # the second cache found every entry, on every master
    rows: dict[int, str] = {}

    @a.cached(ttl=60)
    def get_row(row: int) -> str | None:
        return rows.get(row)

    @a.write_through(get_row, args=lambda row, value: row, value=lambda row, value: value)
    def save_row(row: int, value: str) -> None:
        rows[row] = value

    for row in range(10):
        save_row(row, f"v{row}")
    assert [get_row(row) for row in range(10)] == [f"v{row}" for row in range(10)]
    assert a.stats()["redis_errors"] == 0 and b.stats()["redis_errors"] == 0


def test_a_bulk_read_refreshes_stale_keys_of_many_slots_in_one_call(
    cluster: LocalCluster, namespace: str, caches: list[Cache]
) -> None:
    """Keys over every master, gone stale together: served stale at once, refreshed by one
    ``load_many`` call, their leases and fills grouped per node."""
    cache = on(cluster, namespace, caches, 1, l1_maxsize=0)
    asked: list[list[str]] = []

    def load_many(keys: list[str]) -> dict[str, str]:
        asked.append(sorted(keys))
        return {key: f"v{len(asked)} {key}" for key in keys}

    keys = [f"s{i}" for i in range(30)]
    assert cache.get_or_load_many(keys, load_many, ttl=0.3, stale_ttl=30)
    time.sleep(0.5)  # all stale now
    stale = cache.get_or_load_many(keys, load_many, ttl=0.3, stale_ttl=30)
    assert stale == {k: f"v1 {k}" for k in keys}
    wait_until(lambda: not cache._engine.flights)
    assert asked == [sorted(keys), sorted(keys)]  # one refresh call, not one per key
    stats = cache.stats()
    assert (stats["loads"], stats["fills_refused"], stats["redis_errors"]) == (60, 0, 0)


def test_django_incr_on_a_cluster(cluster: LocalCluster, namespace: str) -> None:
    """The Django backend's atomic ``incr`` (and ``touch``) on counters of every master, and the
    L1 of another cache learning of it (its event goes out on the shared channel)."""
    from cachewise.contrib import django as contrib

    made = [
        contrib.CachewiseCache(cluster.url, {"OPTIONS": {"namespace": namespace, **extra}})
        for extra in ({}, {"l1_maxsize": 100})
    ]
    writer, reader = made
    try:
        for i in range(20):
            writer.set(f"n{i}", i)
            assert reader.get(f"n{i}") == i  # held in the reader's L1 from now on
        threads = [
            threading.Thread(target=lambda: [writer.incr(f"n{i}") for i in range(20)])
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [writer.get(f"n{i}") for i in range(20)] == [i + 4 for i in range(20)]
        wait_until(lambda: all(reader.get(f"n{i}") == i + 4 for i in range(20)))
        assert all(writer.touch(f"n{i}", 300) for i in range(20))
        assert [writer.get(f"n{i}") for i in range(20)] == [i + 4 for i in range(20)]
        assert writer._cache.stats()["redis_errors"] == 0
    finally:
        for backend in made:
            backend._cache.close()
        with contrib._LOCK:
            for key in [k for k, v in contrib._SHARED.items() if v in (b._cache for b in made)]:
                del contrib._SHARED[key]
