"""A Redis Cluster resharding under cachewise: the slot of an entry migrates from one master to
another (``CLUSTER SETSLOT … MIGRATING``/``IMPORTING``, ``MIGRATE``, ``SETSLOT … NODE``), done
step by step by the test on a six-node cluster of its own. Between the steps every kind of
call is made: redis-py's cluster client follows the ``ASK`` and ``MOVED`` replies, and
cachewise neither fails open nor counts them as Redis errors."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from cachewise import Cache
from cachewise.testing import LocalCluster

from . import cluster_helpers
from .cluster_helpers import admin, on
from .test_cluster_failover import Load, invalidations_hold
from .test_concurrency import wait_until

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli to join it"),
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
]

#: The module's cluster and the caches each test makes on it (``cluster_helpers``).
cluster, caches = cluster_helpers.cluster, cluster_helpers.caches


class Migration:
    """The slot of ``full_key`` moved by hand from its master to another one."""

    def __init__(self, cluster: LocalCluster, full_key: str) -> None:
        self.slot = key_slot(full_key.encode())
        client = admin(cluster)
        try:
            source = client.nodes_manager.slots_cache[self.slot][0]
            masters = [node for node in client.get_primaries() if node.name != source.name]
        finally:
            client.close()
        self.source = redis.Redis(host=source.host, port=source.port)
        target = masters[0]
        self.target = redis.Redis(host=target.host, port=target.port)
        self.target_address = (target.host, target.port)
        self.masters = [self.source, self.target] + [
            redis.Redis(host=node.host, port=node.port) for node in masters[1:]
        ]
        self.source_id = self.source.execute_command("CLUSTER MYID")
        self.target_id = self.target.execute_command("CLUSTER MYID")

    def begin(self) -> None:
        self.target.execute_command("CLUSTER SETSLOT", self.slot, "IMPORTING", self.source_id)
        self.source.execute_command("CLUSTER SETSLOT", self.slot, "MIGRATING", self.target_id)

    def move_keys(self) -> int:
        """Every key of the slot sent to the target; how many there were."""
        moved = 0
        while keys := self.source.execute_command("CLUSTER GETKEYSINSLOT", self.slot, 100):
            host, port = self.target_address
            self.source.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        return moved

    def end(self) -> None:
        for master in self.masters:
            master.execute_command("CLUSTER SETSLOT", self.slot, "NODE", self.target_id)

    def close(self) -> None:
        for master in self.masters:
            master.close()


@pytest.fixture
def migration(cluster: LocalCluster) -> Iterator[Callable[[str], Migration]]:
    made: list[Migration] = []

    def make(full_key: str) -> Migration:
        made.append(Migration(cluster, full_key))
        return made[-1]

    yield make
    for each in made:
        each.close()
    cluster.wait_ok()


def _never() -> Any:
    raise AssertionError("a cached value was expected")


def _calm(cache: Cache) -> None:
    """No Redis error counted, no breaker opened: the redirections were followed."""
    stats = cache.stats()
    assert stats["redis_errors"] == 0, stats
    assert stats["breaker_opens"] == 0, stats


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_resharded_slot_is_followed_by_every_call(
    cluster: LocalCluster,
    namespace: str,
    caches: list[Cache],
    migration: Callable[[str], Migration],
    how: str,
) -> None:
    cache = on(cluster, namespace, caches, l1_maxsize=0)
    other = on(cluster, namespace, caches, node=3)  # a second process' view, with its L1
    loads: list[str] = []

    def load(value: str) -> Callable[[], str]:
        def loader() -> str:
            loads.append(value)
            return value

        return loader

    def read(c: Cache, loader: Callable[[], Any]) -> Any:
        if how == "sync":
            return c.get_or_load("moving", loader, ttl=60)
        return asyncio.run(c.aget_or_load("moving", loader, ttl=60))

    assert read(cache, load("v1")) == "v1" and read(other, _never) == "v1"
    moving = migration(cache._target("moving").full_key)

    moving.begin()  # the entry is still on its master, which answers
    assert read(cache, _never) == "v1"
    assert moving.move_keys() >= 1  # now on the target: the source answers ASK
    assert read(cache, _never) == "v1"  # the GET asked again on the target
    _calm(cache)
    # A script of several keys of the slot (the value, its lease) is refused with TRYAGAIN
    # while only some of them have moved, by the source and by the target alike, until the slot
    # is the target's: redis-py retries for a while, then the write fails open. Not an outage:
    # no breaker opens, and the key is remembered, so its old value is not read back.
    cache.set("moving", "v2", ttl=60)
    stats = cache.stats()
    assert stats["breaker_opens"] == 0 and stats["redis_errors"] >= 1, stats
    errors = stats["redis_errors"]

    moving.end()  # the slot is the target's: the clients' maps answer MOVED once
    assert read(cache, load("v3")) == "v3"  # the remembered key dropped first: not "v1"
    wait_until(lambda: read(other, _never) == "v3")  # its L1 hears of it
    cache.set("moving", "v4", ttl=60)
    assert read(cache, _never) == "v4"
    cache.invalidate("moving")
    assert read(cache, load("v5")) == "v5"
    assert loads == ["v1", "v3", "v5"]
    assert cache.get_many(["moving", "absent"]) == {"moving": "v5"}
    wait_until(lambda: read(other, _never) == "v5")
    assert cache.stats()["redis_errors"] == errors  # every MOVED followed
    assert cache.stats()["breaker_opens"] == 0
    _calm(other)


def test_a_reshard_under_load_reaches_no_caller_and_opens_no_breaker(
    cluster: LocalCluster, namespace: str, caches: list[Cache]
) -> None:
    """``redis-cli --cluster reshard`` moves a thousand slots, with their keys, from one master
    to another while two caches read, write and invalidate keys of every slot."""
    a, b = on(cluster, namespace, caches, node=0), on(cluster, namespace, caches, node=4)
    for cache in (a, b):
        assert cache.get_or_load("warm", lambda: "w", ttl=30) == "w"
    client = admin(cluster)
    try:
        source, target = client.get_primaries()[:2]
    finally:
        client.close()
    ids = []
    for node in (source, target):
        plain = redis.Redis(host=node.host, port=node.port)
        ids.append(plain.execute_command("CLUSTER MYID").decode())
        plain.close()
    load_a, load_b = Load(a), Load(b)
    try:
        time.sleep(0.3)
        subprocess.run(
            [str(shutil.which("redis-cli")), "--cluster", "reshard",
             f"{source.host}:{source.port}", "--cluster-from", ids[0], "--cluster-to", ids[1],
             "--cluster-slots", "1000", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
        )  # fmt: skip
        time.sleep(0.3)  # load goes on after the slots moved
    finally:
        load_a.stop()
        load_b.stop()
    assert load_a.errors == [] and load_b.errors == []
    assert load_a.calls > 100 and load_b.calls > 100
    assert a.stats()["breaker_opens"] == 0 and b.stats()["breaker_opens"] == 0
    invalidations_hold(a, b)  # on every slot, moved or not
