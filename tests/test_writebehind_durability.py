"""The write-behind durability contract on real redis-server processes: a queue Redis that may
evict is refused before a write is accepted; queue keys survive a ``volatile-*`` policy under
memory pressure; with a replica, an enqueue returns once the replica has it, and a master killed
after the acknowledgement loses nothing when the replica is promoted."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachewise import Cache, WriteBehindNotDurable, WriteBehindUnavailable
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import RedisServer

from . import _workers
from .test_writebehind_redis import stop_flusher
from .test_writebehind_redis import stored_rows as rows

WRITER = "tests._workers.store_row"


@pytest.fixture
def store(redis_server: Any, namespace: str) -> Iterator[redis.Redis]:
    """The store the writer writes to, on the shared test server (apart from the queue's)."""
    yield _workers.use_store(redis_server.url, namespace)


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_a_queue_redis_that_evicts_any_key_is_refused_before_a_write(
    store: redis.Redis, namespace: str, policy: str
) -> None:
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", policy) as server:
        cache, get_row, save = _workers.rows_cache(server.url, namespace)
        try:
            with pytest.raises(WriteBehindNotDurable) as caught:
                save(1, "a")
            message = str(caught.value)
            assert policy in message and "write_behind_allow_eviction=True" in message
            assert "noeviction" in message and "write_behind_redis=" in message  # ways out
            assert isinstance(caught.value, ValueError)
            client = server.client()
            assert client.xlen(KeySpace(namespace).writer("wb", WRITER)) == 0  # nothing queued
            assert get_row(1) is None  # and the cache unchanged
        finally:
            cache.close(timeout=5)
        accepting, _, save = _workers.rows_cache(
            server.url, namespace, write_behind_allow_eviction=True
        )
        try:
            save(1, "a")  # the user accepted the risk
            assert accepting.flush(timeout=10).pending == 0
            assert rows(store, namespace) == {1: "a"}
        finally:
            accepting.close(timeout=5)


def test_the_policy_is_checked_again_when_the_server_changes(
    store: redis.Redis, namespace: str
) -> None:
    with RedisServer("--maxmemory", "64mb") as server:
        cache, _, save = _workers.rows_cache(server.url, namespace)
        try:
            save(1, "a")
            server.client().config_set("maxmemory-policy", "allkeys-lru")
            for queue in cache._queues:
                queue.server.due_at = 0.0  # as when CHECK_EVERY passed, or after a reconnect
            with pytest.raises(WriteBehindNotDurable):
                save(2, "b")
        finally:
            cache.close(timeout=5)


def test_queue_keys_survive_memory_pressure_under_a_volatile_policy(
    store: redis.Redis, namespace: str
) -> None:
    """The issue's scenario with an evicting policy that spares keys without a TTL: the cache's
    own entries are evicted, the queue is not; a write Redis cannot take raises (loud), and every
    acknowledged write reaches the store."""
    with RedisServer("--maxmemory", "8mb", "--maxmemory-policy", "volatile-lru") as server:
        filler = Cache(server.url, namespace=f"{namespace}-fill")
        cache, _, save = _workers.rows_cache(server.url, namespace)
        try:
            blob = "x" * 4000
            for i in range(3000):  # about 12 MB of ordinary cache entries, with TTLs
                filler.set(f"k{i}", blob, ttl=600)
            acknowledged: dict[int, str] = {}
            refused = 0
            for i in range(2000):
                try:
                    save(i, f"v{i}")
                    acknowledged[i] = f"v{i}"
                except WriteBehindUnavailable:
                    refused += 1
            assert len(acknowledged) > 1000
            report = cache.flush(timeout=60)
            assert report.pending == 0 and not report.errors
            stored = rows(store, namespace)
            assert {k: stored.get(k) for k in acknowledged} == acknowledged
        finally:
            cache.close(timeout=5)
            filler.close(timeout=5)


def test_an_enqueue_returns_once_a_replica_has_it_and_survives_a_failover(
    store: redis.Redis, namespace: str, replicated: tuple[RedisServer, RedisServer]
) -> None:
    master, replica = replicated
    cache, _, save = _workers.rows_cache(master.url, namespace, write_behind_replica_wait=2.0)
    stop_flusher(cache)
    on_replica = replica.client()
    for i in range(20):
        save(i, f"v{i}")
        # Acknowledged: the replica has the entry already, no waiting for it here.
        assert on_replica.xlen(KeySpace(namespace).writer("wb", WRITER)) == i + 1
    assert cache.stats()["write_behind_unreplicated"] == 0
    master.kill()  # kill -9 after the acknowledgements, before any flush
    cache.close(timeout=1)
    on_replica.execute_command("REPLICAOF", "NO", "ONE")
    promoted, _, _ = _workers.rows_cache(replica.url, namespace, write_behind_claim_idle=0.5)
    try:
        report = promoted.flush(timeout=30)
        assert report.pending == 0
        assert rows(store, namespace) == {i: f"v{i}" for i in range(20)}
    finally:
        promoted.close(timeout=5)


@pytest.mark.parametrize(("wait", "counted"), [(0.1, 1), (0, 0)], ids=["bounded", "off"])
def test_a_replica_that_does_not_answer_is_waited_for_boundedly_and_counted(
    store: redis.Redis,
    namespace: str,
    replicated: tuple[RedisServer, RedisServer],
    wait: float,
    counted: int,
) -> None:
    """Bounded by ``write_behind_replica_wait``, and counted; with 0, no WAIT at all."""
    master, replica = replicated
    cache, _, save = _workers.rows_cache(master.url, namespace, write_behind_replica_wait=wait)
    try:
        save(1, "a")
        replica.pause()
        began = time.monotonic()
        save(2, "b")  # returns after the wait (or at once), acknowledged
        assert time.monotonic() - began < 5
        assert cache.stats()["write_behind_unreplicated"] == counted
        replica.resume()
        assert cache.flush(timeout=10).pending == 0
        assert rows(store, namespace) == {1: "a", 2: "b"}
    finally:
        replica.resume()
        cache.close(timeout=5)


@pytest.mark.parametrize("bad", [-1, 60, "0.1", None])
def test_a_bad_replica_wait_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="write_behind_replica_wait"):
        Cache(write_behind_replica_wait=bad)


# -- a lost queue is detected, reported and queued again ------------------------------------


@contextlib.contextmanager
def held_writes(namespace: str, writes: int) -> Iterator[tuple[RedisServer, Cache, Cache, Any]]:
    """A server whose queue holds ``writes`` writes of a holder, neither of two caches' flushers
    running: the test loses the queue, then starts the flusher's (``start_flusher``)."""
    with RedisServer() as server:
        holder, _, save = _workers.rows_cache(server.url, namespace)
        flusher, _, _ = _workers.rows_cache(server.url, namespace, write_behind_claim_idle=0.5)
        try:
            stop_flusher(holder)
            stop_flusher(flusher)
            for i in range(writes):
                save(i, f"v{i}")
            yield server, holder, flusher, save
        finally:
            holder.close(timeout=5)
            flusher.close(timeout=5)


def start_flusher(cache: Cache) -> None:
    cache._queues[0].stopped = False
    cache._queues[0].ensure_flusher()


def test_flushall_before_a_flush_is_reported_and_held_writes_are_queued_again(
    store: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    with held_writes(namespace, 50) as (server, holder, flusher, _):
        server.client().flushall()
        start_flusher(flusher)
        with caplog.at_level("ERROR", logger="cachewise"):
            report = holder.flush(timeout=30)
        assert report.requeued == 50 and report.lost == 0
        assert report.pending == 0
        assert any("was lost" in e and "50 were queued again" in e for e in report.errors)
        assert any("was lost" in r.getMessage() for r in caplog.records)
        assert rows(store, namespace) == {i: f"v{i}" for i in range(50)}
        stats = holder.stats()
        assert stats["write_behind_losses"] == 1 and stats["write_behind_requeued"] == 50
        assert holder.flush(timeout=5).requeued == 0  # reported once


@pytest.mark.parametrize("then", ["a new write", "another flusher leads"])
def test_a_stream_made_again_under_the_old_epoch_does_not_hide_the_loss(
    store: redis.Redis, namespace: str, then: str
) -> None:
    """An evicting Redis may drop the stream and keep the (hot) epoch key; whatever makes the
    stream again (the next write, a flusher taking the lead) starts a new epoch, so that the
    writes the holder still has are queued again, never taken as settled."""
    with held_writes(namespace, 20) as (server, holder, flusher, save):
        server.client().delete(KeySpace(namespace).writer("wb", WRITER))
        if then == "a new write":
            save(20, "v20")
        start_flusher(flusher)
        if then == "another flusher leads":
            assert flusher.flush(timeout=10).pending == 0
        report = holder.flush(timeout=30)
        want = {i: f"v{i}" for i in range(21 if then == "a new write" else 20)}
        assert rows(store, namespace) == want, report
        assert report.requeued == 20 and report.lost == 0
        assert any("was lost" in e for e in report.errors)


@pytest.mark.parametrize("fault", ["flushall", "group destroyed", "stream deleted"])
def test_a_queue_lost_during_flushing_is_noticed_by_the_flusher(
    store: redis.Redis, namespace: str, fault: str
) -> None:
    """The flusher notices by itself (no flush() call): every acknowledged write lands."""
    with RedisServer() as server:
        cache, _, save = _workers.rows_cache(server.url, namespace, write_behind_claim_idle=0.5)
        try:
            entered, release = __import__("threading").Event(), __import__("threading").Event()
            _workers._store["blocking"] = {"v0": (entered, release)}
            save(0, "v0")
            assert entered.wait(10)  # the flusher is inside the store write of row 0
            for i in range(1, 30):
                save(i, f"v{i}")
            client = server.client()
            stream = KeySpace(namespace).writer("wb", WRITER)
            if fault == "flushall":
                client.flushall()
            elif fault == "group destroyed":
                client.xgroup_destroy(stream, "cachewise")
            else:
                client.delete(stream)
            release.set()
            deadline = time.monotonic() + 30
            want = {i: f"v{i}" for i in range(30)}
            while rows(store, namespace) != want:
                assert time.monotonic() < deadline, rows(store, namespace)
                time.sleep(0.05)
            assert cache.stats()["write_behind_losses"] >= 1
            assert cache.flush(timeout=10).pending == 0
        finally:
            cache.close(timeout=5)


# -- a queue of its own: write_behind_redis= -----------------------------------------------


def test_a_non_evicting_queue_redis_beside_an_evicting_cache(
    store: redis.Redis, namespace: str
) -> None:
    """The first way out the refusal names: the cache on an ``allkeys-lru`` Redis, the queue on
    one that does not evict. The queue's keys are on the queue's Redis only; the cached value
    and its pending record on the cache's; every write lands, and a lost queue is still
    detected and queued again with its pending records."""
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as cache_server, \
            RedisServer() as queue_server:  # fmt: skip
        cache, get_row, save = _workers.rows_cache(
            cache_server.url, namespace, write_behind_redis=queue_server.url
        )
        try:
            stop_flusher(cache)
            for i in range(10):
                save(i, f"v{i}")
            on_cache, on_queue = cache_server.client(), queue_server.client()
            stream = KeySpace(namespace).writer("wb", WRITER)
            assert on_queue.xlen(stream) == 10 and not on_cache.exists(stream)
            pending = KeySpace(namespace).pending(get_row.key(3))
            assert on_cache.exists(pending) and not on_queue.exists(pending)
            assert get_row(3) == "v3"  # the cache has the new value already
            on_queue.flushall()  # the queue is lost; this process still holds the writes
            cache._queues[0].stopped = False
            report = cache.flush(timeout=30)
            assert report.requeued == 10 and report.lost == 0 and report.pending == 0
            assert rows(store, namespace) == {i: f"v{i}" for i in range(10)}
            assert not on_cache.exists(pending)  # settled: the pending record is gone
        finally:
            cache.close(timeout=5)


def test_write_behind_redis_needs_a_cache_redis() -> None:
    with pytest.raises(ValueError, match="write_behind_redis"):
        Cache(write_behind_redis="redis://127.0.0.1:1/0")


def test_a_queue_redis_that_refuses_info_is_refused_unless_the_risk_is_accepted(
    store: redis.Redis, namespace: str, redis_server: Any
) -> None:
    """A user whose ACL denies INFO cannot learn the eviction policy: not durable for sure."""
    admin = redis_server.client()
    user = f"noinfo-{namespace}"[:60]
    admin.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=[f"{namespace}*"],
        channels=[f"{namespace}*"], commands=["+@all", "-info"],
    )  # fmt: skip
    url = f"redis://{user}:pw@127.0.0.1:{redis_server.port}/0"
    made = []
    try:
        cache, _, save = _workers.rows_cache(url, namespace)
        made.append(cache)
        with pytest.raises(WriteBehindNotDurable, match=r"INFO refused.*no permissions"):
            save(1, "a")
        accepting, _, save = _workers.rows_cache(url, namespace, write_behind_allow_eviction=True)
        made.append(accepting)
        save(1, "a")
        assert accepting.flush(timeout=10).pending == 0
        assert rows(store, namespace) == {1: "a"}
    finally:
        for cache in made:
            cache.close(timeout=5)
        admin.acl_deluser(user)


def test_a_lost_record_of_newest_writes_never_makes_writes_look_superseded(
    store: redis.Redis, namespace: str
) -> None:
    """Evicted or deleted, the hash of newest writes must not turn every queued write into an
    "older" one acknowledged without a store call (a silent loss)."""
    with RedisServer() as server:
        cache, _, save = _workers.rows_cache(server.url, namespace, write_behind_claim_idle=0.5)
        try:
            stop_flusher(cache)
            for i in range(10):
                save(i, f"v{i}")
            server.client().delete(KeySpace(namespace).writer("wbnewest", WRITER))
            flusher, _, _ = _workers.rows_cache(server.url, namespace, write_behind_claim_idle=0.5)
            try:
                assert flusher.flush(timeout=30).pending == 0
                assert rows(store, namespace) == {i: f"v{i}" for i in range(10)}
            finally:
                flusher.close(timeout=5)
        finally:
            cache.close(timeout=5)


def test_a_record_of_newest_writes_made_again_by_a_new_write_does_not_hide_the_loss(
    store: redis.Redis, namespace: str
) -> None:
    """An evicting Redis may drop the hash of newest writes and keep the stream; the next write
    makes the hash again, without the fields of the writes queued before it. Those must not
    look superseded (acknowledged without a store call): making the hash again starts a new
    epoch, and the holder queues its writes again."""
    with held_writes(namespace, 20) as (server, holder, flusher, save):
        server.client().delete(KeySpace(namespace).writer("wbnewest", WRITER))
        save(20, "v20")
        start_flusher(flusher)
        report = holder.flush(timeout=30)
        assert rows(store, namespace) == {i: f"v{i}" for i in range(21)}, report
        assert report.lost == 0
        assert any("was lost" in e for e in report.errors)
