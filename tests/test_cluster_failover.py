"""Failovers on a real Redis Cluster under load: a replica promoted with ``CLUSTER FAILOVER``,
and a master killed with SIGKILL. No exception reaches callers (serving without Redis during the
switch is allowed); once the cluster settles, invalidations are honoured again."""

from __future__ import annotations

import random
import shutil
import threading
import time
from typing import Any

import pytest
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachewise import Cache, WriteBehindUnavailable
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import LocalCluster, RedisServer

from . import _workers
from .test_concurrency import wait_until

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli to join it"),
    # An exception that escapes a thread of cachewise's during a failover is a bug.
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]


class Load:
    """Threads reading, writing and invalidating keys of every slot until stopped; what any
    call raised is kept, never swallowed."""

    def __init__(self, cache: Cache, threads: int = 4) -> None:
        self.cache = cache
        self.errors: list[BaseException] = []
        self.calls = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        rng = random.Random()
        while not self._stop.is_set():
            key = f"k{rng.randrange(200)}"
            try:
                roll = rng.random()
                if roll < 0.8:
                    self.cache.get_or_load(key, lambda k=key: f"loaded {k}", ttl=30)
                elif roll < 0.9:
                    self.cache.set(key, f"set {key}", ttl=30)
                else:
                    self.cache.invalidate(key)
                self.calls += 1
            except BaseException as exc:  # any exception reaching a caller fails the test
                self.errors.append(exc)
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


class Writer:
    """A thread queueing write-behind writes to new rows (and, given ``cache``, setting and
    invalidating a key per row) until stopped: what was acknowledged, what was refused (loudly,
    as ``WriteBehindUnavailable``: not queued), and the keys whose invalidation returned."""

    def __init__(self, save: Any, cache: Cache | None = None) -> None:
        self.save, self.cache = save, cache
        self.acked: dict[int, str] = {}
        self.refused: list[BaseException] = []
        self.invalidated: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        row = 0
        while not self._stop.is_set():
            try:
                self.save(row, f"v{row}")
                self.acked[row] = f"v{row}"
                if self.cache is not None:
                    self.cache.set(f"gone{row}", "old", ttl=60)
                    self.cache.invalidate(f"gone{row}")
                    self.invalidated.append(f"gone{row}")
            except WriteBehindUnavailable as exc:  # not acknowledged: the caller knows
                self.refused.append(exc)
            row += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _settled(cluster: LocalCluster, a: Cache, b: Cache) -> None:
    """The cluster is ok, and both caches talk to it again: keys of every master answered from
    Redis, so each master's breaker was probed and closed."""
    cluster.wait_ok(timeout=30)
    keys = [f"probe{i}" for i in range(30)]  # a few per master
    for cache in (a, b):
        wait_until(
            lambda c=cache: (
                all(c.get_or_load(k, lambda: "p", ttl=1) == "p" for k in keys)
                and c.stats()["breaker_state"] == "closed"
            ),
            timeout=30,
        )


def invalidations_hold(a: Cache, b: Cache) -> None:
    """A value ``a`` sets and then invalidates, on keys of every slot: ``b`` reads it, then
    learns of the invalidation and loads anew."""
    for i in range(20):
        key = f"after{i}"
        a.set(key, "old", ttl=30)
        assert b.get(key) == "old"
        a.invalidate(key)
        wait_until(lambda k=key: b.get(k) is None, timeout=10)
        assert b.get_or_load(key, lambda: "new", ttl=30) == "new"


@pytest.mark.parametrize("how", ["CLUSTER FAILOVER", "kill -9 of a master"])
def test_failover_under_load(how: str, namespace: str) -> None:
    with LocalCluster() as cluster:
        a = Cache(cluster.nodes[0].url, namespace=namespace)
        b = Cache(cluster.nodes[1].url, namespace=namespace)
        for cache in (a, b):
            assert cache.get_or_load("warm", lambda: "w", ttl=30) == "w"
        load_a, load_b = Load(a), Load(b)
        try:
            time.sleep(0.5)
            master = cluster.masters()[0]
            replica = cluster.replica_of(master)
            if how == "CLUSTER FAILOVER":
                client = replica.client()
                client.execute_command("CLUSTER", "FAILOVER")
                client.close()
                wait_until(lambda: replica in cluster.masters(), timeout=30)
            else:
                master.kill()
                wait_until(lambda: replica in cluster.masters(), timeout=30)
            time.sleep(1.0)  # load goes on across the switch
        finally:
            load_a.stop()
            load_b.stop()
        assert load_a.errors == [] and load_b.errors == []
        assert load_a.calls > 100 and load_b.calls > 100
        _settled(cluster, a, b)
        invalidations_hold(a, b)
        a.close(timeout=1)
        b.close(timeout=1)


def test_acknowledged_writes_and_invalidations_survive_a_master_killed(
    namespace: str, redis_server: RedisServer
) -> None:
    """A master killed with SIGKILL while writes are queued and keys invalidated: every
    write-behind call that returned lands in the store, every invalidation that returned holds
    on the promoted replica (both were acknowledged once a replica had them)."""
    store = _workers.use_store(redis_server.url, namespace)
    with LocalCluster() as cluster:
        cache, _get_row, save = _workers.rows_cache(
            cluster.url, namespace, write_behind_partitions=3, replica_wait=1.0,
            write_behind_replica_wait=1.0, write_behind_claim_idle=1.0,
        )  # fmt: skip
        space = KeySpace(namespace)
        victim = _master_of(cluster, space.writer("wb", "tests._workers.store_row/0"))
        writer = Writer(save, cache)
        try:
            time.sleep(1.0)
            replica = cluster.replica_of(victim)
            victim.kill()
            wait_until(lambda: replica in cluster.masters(), timeout=30)
            time.sleep(1.0)
        finally:
            writer.stop()
        cluster.wait_ok(timeout=30)
        wait_until(lambda: cache.flush(timeout=5).pending == 0, timeout=60)
        landed = {int(k): v.decode() for k, v in store.hgetall(f"{namespace}-store:rows").items()}
        assert len(writer.acked) > 100
        missing = {row: value for row, value in writer.acked.items() if landed.get(row) != value}
        assert missing == {}
        on_cluster = redis.cluster.RedisCluster.from_url(cluster.url)
        # No invalidation that returned is undone by the failover: those a replica acknowledged
        # hold at once, those the outage held back are sent within seconds by the listener,
        # with no further call of this process.
        try:
            wait_until(
                lambda: not [k for k in writer.invalidated if on_cluster.exists(space.entry(k))],
                timeout=15,
            )
        finally:
            on_cluster.close()
        cache.close(timeout=5)


def _master_of(cluster: LocalCluster, key: str) -> RedisServer:
    client = redis.cluster.RedisCluster.from_url(cluster.url)
    try:
        port = client.get_node_from_key(key).port
    finally:
        client.close()
    return next(node for node in cluster.nodes if node.port == port)


def test_an_invalidation_that_failed_while_its_master_was_down_is_replayed(
    namespace: str,
) -> None:
    with LocalCluster() as cluster:
        # A client that gives up at once (redis-py's default retries ride out the failover).
        client = redis.cluster.RedisCluster.from_url(
            cluster.url, retry=Retry(NoBackoff(), 0), socket_timeout=0.5
        )
        cache = Cache(client, namespace=namespace, l1_maxsize=0)
        space = KeySpace(namespace)
        victim = _master_of(cluster, space.entry("k"))
        cache.set("k", "old", ttl=60)
        replica = cluster.replica_of(victim)
        reader = replica.client()
        reader.execute_command("READONLY")  # a replica answers for its master's slots
        wait_until(lambda: reader.exists(space.entry("k")) == 1, timeout=10)
        reader.close()
        victim.kill()
        cache.invalidate("k")  # its master is gone: remembered, not lost
        assert cache.stats()["redis_errors"] >= 1 and cache._engine.backlog_keys
        wait_until(lambda: replica in cluster.masters(), timeout=30)
        cluster.wait_ok(timeout=30)
        on_cluster = redis.cluster.RedisCluster.from_url(replica.url)
        try:
            # Any call sends what was remembered, once the slot's new master answers.
            wait_until(
                lambda: cache.get("other") is None and not on_cluster.exists(space.entry("k")),
                timeout=30,
            )
        finally:
            on_cluster.close()
        assert cache.get("k") is None and not cache._engine.backlog_keys
        cache.close(timeout=1)
        client.close()


def test_a_master_that_stops_answering_turns_off_only_its_own_slots(namespace: str) -> None:
    """Each master has its own circuit breaker: with one master gone (and no replica to take
    over), calls of its slots fail open at once, and the other masters still serve theirs."""
    with LocalCluster(3, 0, 1000, "--cluster-require-full-coverage", "no") as cluster:
        client = redis.cluster.RedisCluster.from_url(
            cluster.url, retry=Retry(NoBackoff(), 0), socket_timeout=0.3
        )
        cache = Cache(client, namespace=namespace, l1_maxsize=0, breaker_threshold=2)
        space = KeySpace(namespace)
        victim = _master_of(cluster, space.entry("k0"))
        on_victim = [
            f"k{i}" for i in range(200) if _master_of_key(client, space, f"k{i}") == victim.port
        ]
        elsewhere = [
            f"k{i}" for i in range(200) if _master_of_key(client, space, f"k{i}") != victim.port
        ]
        for key in on_victim[:5] + elsewhere[:5]:
            cache.set(key, "v", ttl=60)
        victim.kill()
        for key in on_victim[:5]:
            assert cache.get_or_load(key, lambda: "loaded", ttl=60) == "loaded"  # fail open
        stats = cache.stats()
        assert stats["breaker_state"] == "open" and stats["breaker_opens"] == 1
        errors = stats["redis_errors"]
        for key in elsewhere[:5]:  # still from Redis, not refused
            assert cache.get_or_load(key, lambda: "loaded", ttl=60) == "v"
        assert cache.stats()["redis_errors"] == errors
        cache.close(timeout=1)
        client.close()


def _master_of_key(client: redis.cluster.RedisCluster, space: KeySpace, key: str) -> int:
    return int(client.get_node_from_key(space.entry(key)).port)


def test_a_cluster_whose_state_is_not_ok_fails_open_counted(namespace: str) -> None:
    """A master gone with no replica: the cluster refuses every call (``CLUSTERDOWN``). A cache
    made on it then serves from its loaders, counting and logging the failures, never raising."""
    with LocalCluster(3, 0) as cluster:
        victim = cluster.masters()[0]
        victim.kill()
        alive = next(node for node in cluster.nodes if node is not victim)

        def down() -> bool:
            client = alive.client()
            try:
                return client.cluster("info").get("cluster_state") == "fail"
            finally:
                client.close()

        wait_until(down, timeout=30)
        cache = Cache(alive.url, namespace=namespace, socket_timeout=0.3)
        for i in range(5):
            assert cache.get_or_load(f"k{i}", lambda: "loaded", ttl=60) == "loaded"
        cache.set("s", "v", ttl=60)
        cache.invalidate("s")
        assert cache.stats()["redis_errors"] >= 1
        cache.close(timeout=1)
