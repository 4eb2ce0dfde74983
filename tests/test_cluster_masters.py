"""Redis Cluster, per master: writes wait for their own master's replica, write-behind queues
partitioned over the masters, slots read again, clear and the operations command on every
master (a six-node cluster on loopback, as in ``test_cluster.py``)."""

from __future__ import annotations

import shutil
import time
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from cachewise import Cache
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import LocalCluster

from . import _workers, cluster_helpers, test_lone_compiled
from .cluster_helpers import admin, on

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli to join it"),
    # An exception that escapes a thread of cachewise's during a failover is a bug.
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]

#: The module's cluster and the caches each test makes on it (``cluster_helpers``).
cluster, caches = cluster_helpers.cluster, cluster_helpers.caches


def _replica_of_slot_owner(cluster: LocalCluster, key: str) -> Any:
    """The replica of the master serving ``key``'s slot."""
    client = admin(cluster)
    try:
        master, replica = client.nodes_manager.slots_cache[client.keyslot(key)][:2]
    finally:
        client.close()
    assert replica.port != master.port
    return next(node for node in cluster.nodes if node.port == replica.port)


def test_invalidations_and_enqueues_wait_for_the_replica_of_their_own_master(
    cluster: LocalCluster, namespace: str, caches: list[Cache], redis_server: Any
) -> None:
    """Each write waits (``WAIT 1`` on its master's connection) for that master's replica: a
    paused replica holds back, boundedly and counted, only the writes of its master's slots."""
    _workers.use_store(redis_server.url, namespace)
    # Long enough that a healthy replica answers on a busy machine; short enough to time.
    cache, _get_row, save = _workers.rows_cache(cluster.url, namespace, replica_wait=0.5)
    caches.append(cache)
    space = KeySpace(namespace)
    writer = space.writer("wb", "tests._workers.store_row")
    near = _replica_of_slot_owner(cluster, writer)
    client = admin(cluster)
    owner = client.get_node_from_key(writer).port
    # A key on the writer's master and one on another master.
    same = next(f"s{i}" for i in range(500)
                if client.get_node_from_key(space.entry(f"s{i}")).port == owner)  # fmt: skip
    other = next(f"o{i}" for i in range(500)
                 if client.get_node_from_key(space.entry(f"o{i}")).port != owner)  # fmt: skip
    client.close()
    for key in (same, other):
        cache.set(key, "v", ttl=60)
        cache.invalidate(key)
    save(1, "before")
    assert cache.stats()["invalidations_unreplicated"] == 0
    assert cache.stats()["write_behind_unreplicated"] == 0
    near.pause()
    try:
        cache.invalidate(other)  # its master's replica answers
        assert cache.stats()["invalidations_unreplicated"] == 0
        began = time.monotonic()
        cache.invalidate(same)
        save(2, "paused")
        assert time.monotonic() - began < 3  # bounded by replica_wait (twice), not hung
        assert cache.stats()["invalidations_unreplicated"] == 1
        assert cache.stats()["write_behind_unreplicated"] == 1
    finally:
        near.resume()
    assert cache.flush(timeout=20).pending == 0
    assert cache.stats()["redis_errors"] == 0


def test_a_partitioned_queue_spreads_over_the_masters_and_keeps_dead_letters_per_partition(
    cluster: LocalCluster, namespace: str, redis_server: Any
) -> None:
    store = _workers.use_store(redis_server.url, namespace)
    _workers._store["fail"] = {13}
    cache, get_row, save = _workers.rows_cache(
        cluster.url, namespace, write_behind_partitions=6, write_behind_retries=1,
        write_behind_backoff=0.01,
    )  # fmt: skip
    try:
        for row in range(60):
            save(row, f"v{row}")
        assert get_row(7) == "v7"
        report = cache.flush(timeout=30)
        assert report.pending == 0 and report.lost == 0 and report.dead_lettered == 1
        rows = {int(k): v.decode() for k, v in store.hgetall(f"{namespace}-store:rows").items()}
        assert rows == {row: f"v{row}" for row in range(60) if row != 13}
        # Each partition is a stream of its own, and they live on more than one master.
        holders = set()
        for master in cluster.masters():
            client = master.client()
            if any(client.scan_iter(match=f"{namespace}:wb:*", count=1000)):
                holders.add(master.port)
            client.close()
        assert len(holders) >= 2
        (dead,) = cache.dead_letters()
        assert dead.args == (13, "v13") and dead.writer.startswith("tests._workers.store_row/")
        _workers._store["fail"] = set()
        assert cache.replay_dead_letters() == 1
        assert cache.flush(timeout=30).pending == 0
        assert store.hget(f"{namespace}-store:rows", "13") == b"v13"
        assert cache.stats()["redis_errors"] == 0
    finally:
        cache.close(timeout=5)


async def test_async_writes_wait_per_master_and_write_behind_flushes_on_the_loop(
    cluster: LocalCluster, namespace: str, redis_server: Any
) -> None:
    """The asyncio driver: an invalidation waits for its own master's replica (a paused one is
    counted), and a partitioned async writer's queue lands every write."""
    cache = Cache(cluster.url, namespace=namespace, replica_wait=0.1, write_behind_partitions=4)
    client = redis.asyncio.Redis.from_url(redis_server.url)
    _workers._store.update(aclient=client, ns=namespace)

    @cache.cached(ttl=60)
    async def get_row(row: int) -> str | None:
        return None

    save = cache.write_behind(get_row, args=lambda r, v: r, value=lambda r, v: v)(
        _workers.astore_row
    )
    space = KeySpace(namespace)
    near = _replica_of_slot_owner(cluster, space.entry("k"))
    await cache.aset("k", "v", ttl=60)
    await cache.ainvalidate("k")
    assert cache.stats()["invalidations_unreplicated"] == 0
    await cache.aset("k", "v", ttl=60)
    near.pause()
    try:
        await cache.ainvalidate("k")
    finally:
        near.resume()
    assert cache.stats()["invalidations_unreplicated"] == 1
    for i in range(30):
        await save(i, f"a{i}")
    assert await get_row(3) == "a3"
    report = await cache.aflush(timeout=20)
    assert report.pending == 0 and report.lost == 0
    rows = await client.hgetall(f"{namespace}-store:rows")
    assert {int(k): v.decode() for k, v in rows.items()} == {i: f"a{i}" for i in range(30)}
    assert cache.stats()["redis_errors"] == 0
    await cache.aclose()
    await client.aclose()


def test_the_slots_and_their_replicas_are_read_again_every_minute(
    cluster: LocalCluster, namespace: str, caches: list[Cache]
) -> None:
    """With the server clock (every minute), the cluster client reads the slots' masters and
    replicas again: a replica added or a failover is known without waiting for a MOVED."""
    cache = on(cluster, namespace, caches)
    cache.get("k")
    backend = cache._engine.backend
    assert backend is not None and backend.replicas == 1
    client = backend.sync_client()
    refreshed: list[int] = []
    real = client.nodes_manager.initialize

    def initialize(*args: Any, **kwargs: Any) -> Any:
        refreshed.append(1)
        return real(*args, **kwargs)

    client.nodes_manager.initialize = initialize
    cache.get("k")
    assert refreshed == []
    backend.clock_checked -= 61  # a minute later
    cache.get("k")
    assert refreshed == [1] and backend.replicas == 1
    assert cache.stats()["redis_errors"] == 0


async def test_clear_scans_every_master(cluster: LocalCluster, namespace: str) -> None:
    """``clear`` drops the namespace's entries on every master (a SCAN per master), no other
    namespace's, sync and async."""
    cache = Cache(cluster.url, namespace=namespace)
    other = Cache(cluster.url, namespace=namespace + "x")
    raw = admin(cluster)
    try:
        for round_ in ("sync", "async"):
            for i in range(300):
                await cache.aset(f"k{i}", i, ttl=60)
            await other.aset("k1", "kept", ttl=60)
            holders = {raw.get_node_from_key(KeySpace(namespace).entry(f"k{i}")).port
                       for i in range(300)}  # fmt: skip
            assert len(holders) == 3
            dropped = cache.clear() if round_ == "sync" else await cache.aclear()
            assert dropped == 300
            left = [k for m in cluster.masters() for k in m.client().scan_iter(f"{namespace}:*")]
            assert left == []
            assert await other.aget("k1") == "kept"
        assert cache.stats()["redis_errors"] == 0
    finally:
        raw.close()
        await cache.aclose()
        await other.aclose()


def test_the_operations_command_sees_every_master(
    cluster: LocalCluster, caches: list[Cache], namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cachewise stats`` counts the keys of every master; ``invalidate`` and ``clear`` reach
    the key's own master."""
    import json

    from cachewise.cli import main

    cache = Cache(cluster.url, namespace=namespace)
    caches.append(cache)
    for i in range(30):
        cache.set(f"k{i}", i, ttl=60)

    def run(command: str, *rest: str) -> Any:
        assert main([command, cluster.url, "-n", namespace, *rest, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("stats")["keys"]["value"] == 30
    assert run("invalidate", "k1", "k2", "absent") == {"dropped": 2}
    assert run("clear", "--yes") == {"dropped": 28}
    assert run("stats")["keys"].get("value", 0) == 0


def _master_down(writer: Cache, reader: Cache, key: str) -> None:
    """The breaker of the master serving ``key``'s slot opened (the Cache's stays closed)."""
    backend = reader._engine.backend
    assert backend is not None
    breaker = backend.breaker_for(reader._target(key).full_key)
    for _ in range(breaker.threshold):
        breaker.failed()
    assert breaker.state == breaker.OPEN and backend.breaker.state == breaker.CLOSED


#: The compiled read's scenarios, and one of a cluster's own.
CLUSTER_SCENARIOS = {**test_lone_compiled.SCENARIOS, "its master down": (_master_down, {})}


@test_lone_compiled.compiled
@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_shared_hit_on_a_cluster_is_served_by_the_compiled_path_alone(
    cluster: LocalCluster,
    namespace: str,
    caches: list[Cache],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """The compiled fast path counts the GET on the key's own master's breaker."""
    test_lone_compiled.served_by_the_compiled_path_alone(
        lambda **kw: on(cluster, namespace, caches, **kw), monkeypatch, how
    )


@test_lone_compiled.compiled
@pytest.mark.parametrize("how", ["sync", "async"])
@pytest.mark.parametrize("scenario", list(CLUSTER_SCENARIOS))
def test_on_a_cluster_the_compiled_and_the_python_path_end_the_same(
    cluster: LocalCluster,
    namespace: str,
    caches: list[Cache],
    monkeypatch: pytest.MonkeyPatch,
    scenario: str,
    how: str,
) -> None:
    test_lone_compiled.paths_end_the_same(
        lambda **kw: on(cluster, namespace, caches, **kw),
        monkeypatch, CLUSTER_SCENARIOS, scenario, how,
    )  # fmt: skip
