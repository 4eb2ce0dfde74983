"""An invalidation that returned holds after a failover: with replicas, it is acknowledged once
one of them has it (``WAIT``, bounded by ``replica_wait``; a wait that runs out is counted)."""

from __future__ import annotations

import time

import pytest

from cachewise import Cache, ConfigValueError
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import RedisServer


def _ready(cache: Cache) -> Cache:
    """Set up (server clock, replicas counted) before the test's own calls."""
    cache.get("~warm-up")
    return cache


@pytest.mark.parametrize(("wait", "counted"), [(0.1, 1), (0, 0)], ids=["bounded", "off"])
def test_a_replica_that_does_not_answer_is_waited_for_boundedly_and_counted(
    namespace: str, replicated: tuple[RedisServer, RedisServer], wait: float, counted: int
) -> None:
    master, replica = replicated
    cache = _ready(Cache(master.url, namespace=namespace, replica_wait=wait))
    try:
        cache.set("k", "v", ttl=60)
        cache.invalidate("k")  # the replica answers: no count
        assert cache.stats()["invalidations_unreplicated"] == 0
        cache.set("k", "v", ttl=60)
        replica.pause()
        began = time.monotonic()
        cache.invalidate("k")  # returns after the wait (or at once), acknowledged
        assert time.monotonic() - began < 2
        assert cache.stats()["invalidations_unreplicated"] == counted
        assert cache.stats()["redis_errors"] == 0
    finally:
        replica.resume()
        cache.close(timeout=1)


def test_an_invalidation_that_returned_survives_a_failover(
    namespace: str, replicated: tuple[RedisServer, RedisServer]
) -> None:
    master, replica = replicated
    cache = _ready(Cache(master.url, namespace=namespace, replica_wait=2.0))
    on_replica = replica.client()
    key = KeySpace(namespace).entry("k")
    for i in range(20):
        cache.set("k", f"v{i}", ttl=60)
        cache.invalidate("k")
        assert on_replica.exists(key) == 0  # acknowledged: the replica has it already
    cache.set("k", "old", ttl=60)
    cache.invalidate("k")
    master.kill()  # kill -9 right after the acknowledgement
    cache.close(timeout=1)
    on_replica.execute_command("REPLICAOF", "NO", "ONE")
    promoted = Cache(replica.url, namespace=namespace)
    try:
        assert promoted.get("k") is None  # the dropped value did not come back
        assert cache.stats()["invalidations_unreplicated"] == 0
    finally:
        promoted.close(timeout=1)


@pytest.mark.parametrize("bad", [-1, 60, "0.1", None])
def test_a_bad_replica_wait_is_a_clear_error(bad: object) -> None:
    with pytest.raises(ConfigValueError, match="replica_wait"):
        Cache(replica_wait=bad)
