"""Durable write-behind against a real redis-server: streams, claims, retries, dead letters."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis

from cachewise import Cache, ConfigValueError, WriteBehindUnavailable, codec
from cachewise.codec import SerializationError
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import free_port

from . import _workers
from .conftest import Gate, in_thread
from .test_concurrency import wait_until

ctx = multiprocessing.get_context("spawn")


def stored_rows(store: redis.Redis, namespace: str) -> dict[int, str]:
    """What ``_workers.store_row`` wrote for this test: row -> its last value."""
    found = store.hgetall(f"{namespace}-store:rows")
    return {int(k): v.decode() for k, v in found.items()}


class Rows:
    """This test's view of the shared store and of the writer's Redis keys."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.ns = namespace
        self.client = _workers.use_store(url, namespace)
        self.stream = KeySpace(namespace).writer("wb", "tests._workers.store_row")
        self.made: list[Cache] = []

    def cache(self, **options: Any) -> tuple[Cache, Any, Any]:
        options.setdefault("write_behind_backoff", 0.01)
        made = _workers.rows_cache(self.url, self.ns, **options)
        self.made.append(made[0])
        return made  # type: ignore[no-any-return]

    def rows(self) -> dict[int, str]:
        return stored_rows(self.client, self.ns)

    def log(self, row: int) -> list[str]:
        return [v.decode() for v in self.client.lrange(f"{self.ns}-store:log:{row}", 0, -1)]

    def count(self, name: str) -> int:
        return int(self.client.get(f"{self.ns}-store:{name}") or 0)


def stop_flusher(cache: Cache) -> None:
    """Stop this cache's flusher (and wait until it is gone) so that writes stay queued."""
    for queue in cache._queues:
        queue.stop()
        if queue._thread is not None:
            queue._thread.join(10)
            assert not queue._thread.is_alive()


@pytest.fixture
def rows(redis_server: Any, namespace: str) -> Iterator[Rows]:
    made = Rows(redis_server.url, namespace)
    yield made
    for cache in made.made:
        cache.close(timeout=10)


def test_write_returns_with_the_cache_set_and_the_write_queued(rows: Rows) -> None:
    cache, get_row, save = rows.cache()
    _other, other_get, _ = rows.cache(l1_maxsize=0)
    save(1, "new")
    assert get_row(1) == "new" and other_get(1) == "new"  # this L1, and Redis for the other
    report = cache.flush(timeout=10)
    assert rows.rows() == {1: "new"} and report.pending == 0
    assert rows.client.xlen(rows.stream) == 0  # acknowledged and deleted
    assert not rows.client.exists(KeySpace(rows.ns).pending(get_row.key(1)))
    assert rows.count("reads") == 0  # nobody loaded the store's old value


def test_process_killed_before_its_flush_loses_nothing(rows: Rows) -> None:
    queued = ctx.Event()
    victim = ctx.Process(target=_workers.enqueue_then_hang, args=(rows.url, rows.ns, 100, queued))
    victim.start()
    try:
        assert queued.wait(60)
        assert rows.client.xlen(rows.stream) == 100
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        victim.join(10)
    assert rows.rows() == {}  # its flusher was stuck in the store: nothing written
    out = ctx.Queue()
    heir = ctx.Process(target=_workers.finish_writes, args=(rows.url, rows.ns, out))
    heir.start()
    written, pending = out.get(timeout=90)
    heir.join(10)
    assert heir.exitcode == 0 and pending == 0 and written >= 25
    # Every row holds its last value, and each row's writes landed in the order they were made.
    assert rows.rows() == {row: f"v{75 + row}" for row in range(25)}
    for row in range(25):
        landed = [int(v[1:]) for v in rows.log(row)]
        assert landed == sorted(landed) and landed[-1] == 75 + row


def test_transient_failure_is_retried_until_it_lands(rows: Rows) -> None:
    cache, _, save = rows.cache()
    _workers._store["flaky"][5] = 2
    save(5, "x")
    report = cache.flush(timeout=10)
    assert rows.rows() == {5: "x"} and report.retried == 2 and report.dead_lettered == 0


def test_poison_write_is_dead_lettered_others_continue_and_replay_works(rows: Rows) -> None:
    cache, get_row, save = rows.cache(write_behind_retries=2)
    _workers._store["fail"].add(13)
    for row in (12, 13, 14):
        save(row, f"d{row}")
    report = cache.flush(timeout=10)
    assert rows.rows() == {12: "d12", 14: "d14"}
    assert report.dead_lettered == 1 and "cannot write 13" in report.errors[0]
    [dead] = cache.dead_letters()
    assert (dead.key, dead.args, dead.attempts) == (get_row.key(13), (13, "d13"), 3)
    assert dead.writer == "tests._workers.store_row" and dead.id
    # The store never got d13, so the cache does not claim it either.
    assert get_row(13) is None and rows.count("reads") == 1

    _workers._store["fail"].clear()
    assert cache.replay_dead_letters() == 1
    cache.flush(timeout=10)
    assert rows.rows()[13] == "d13" and cache.dead_letters() == []
    assert get_row(13) == "d13"  # the replay dropped the cached None


def test_writes_to_one_key_in_one_batch_are_one_store_call(rows: Rows) -> None:
    cache, _, save = rows.cache()
    # Fill the stream before any flusher reads it: every write is read in one batch.
    stop_flusher(cache)
    for i in range(20):
        save(7, f"v{i}")
    save(8, "other")
    flusher, _, _ = rows.cache()
    report = flusher.flush(timeout=10)
    assert rows.log(7) == ["v19"] and rows.rows() == {7: "v19", 8: "other"}
    assert rows.count("calls") == 2
    assert report.written == 2 and report.coalesced == 19


def test_batch_writer_gets_the_batch_and_a_failing_batch_is_split(rows: Rows) -> None:
    cache, _, save = rows.cache(batch=True)
    stop_flusher(cache)
    _workers._store["fail"].add(3)
    for row in range(5):
        save(row, f"b{row}")
    flusher, _, _ = rows.cache(batch=True, write_behind_retries=0)
    report = flusher.flush(timeout=10)
    # One batch call (it failed on row 3), then each write alone: the others landed.
    assert rows.count("batches") == 1 and report.dead_lettered == 1
    assert rows.rows() == {0: "b0", 1: "b1", 2: "b2", 4: "b4"}


def test_pending_value_is_read_when_the_cached_entry_is_gone(rows: Rows, namespace: str) -> None:
    rows.client.hset(f"{rows.ns}-store:rows", "1", "old")
    cache, get_row, save = rows.cache()
    stop_flusher(cache)  # the write stays pending
    save(1, "new")
    rows.client.delete(get_row.key(1))  # evicted (or expired) before the flush
    other = Cache(rows.url, namespace=namespace, l1_maxsize=0)
    rows.made.append(other)
    key = KeySpace(namespace).name_of(get_row.key(1))
    assert other.get_or_load(key, lambda: "old from the store", ttl=60) == "new"
    assert other.stats()["pending_writes_read"] == 1 and other.stats()["loads"] == 1


def test_queue_keys_are_data_without_ttl_and_the_rest_expires(rows: Rows) -> None:
    """The queue (stream, pending records, newest writes, dead letters) carries no TTL, so no
    ``volatile-*`` policy can evict it; everything else (entries, leases) expires."""
    cache, get_row, save = rows.cache(write_behind_retries=0)
    _workers._store["fail"].add(2)
    stop_flusher(cache)
    save(1, "a")
    save(2, "b")
    pending = KeySpace(rows.ns).pending(get_row.key(1))
    assert rows.client.pttl(pending) == -1  # queued: kept until the store has it
    flusher, _, _ = rows.cache(write_behind_retries=0)
    flusher.flush(timeout=10)
    keys = [k.decode() for k in rows.client.scan_iter(f"{rows.ns}:*")]
    queue = {
        KeySpace(rows.ns).writer("wb", "tests._workers.store_row"),
        KeySpace(rows.ns).writer("wbdead", "tests._workers.store_row"),
        KeySpace(rows.ns).writer("wbnewest", "tests._workers.store_row"),
        KeySpace(rows.ns).writer("wbepoch", "tests._workers.store_row"),
    }
    assert KeySpace(rows.ns).writer("wbdead", "tests._workers.store_row") in keys
    assert KeySpace(rows.ns).writer("wbflusher", "tests._workers.store_row") in keys
    assert pending not in keys  # flushed: removed
    for key in keys:
        if key in queue:
            assert rows.client.pttl(key) == -1, key
        else:
            assert rows.client.pttl(key) > 0, key
    assert not list(rows.client.scan_iter(f"{rows.ns}#*"))  # nothing outside ``ns:``


def test_unserializable_argument_is_refused_before_anything_is_queued(rows: Rows) -> None:
    _cache, get_row, save = rows.cache()
    with pytest.raises(SerializationError, match=r"arguments of tests\._workers\.store_row"):
        save(1, {"when": object()})
    assert rows.client.xlen(rows.stream) == 0
    assert not rows.client.exists(get_row.key(1))


def test_a_writer_other_processes_cannot_name_is_refused_with_redis(rows: Rows) -> None:
    cache, get_row, _ = rows.cache()

    def local_writer(row: int, value: str) -> None: ...

    with pytest.raises(ConfigValueError, match="other processes can register by name"):
        cache.write_behind(get_row, args=lambda r, v: r, value=lambda r, v: v)(local_writer)


def test_redis_down_at_enqueue_is_an_error_and_nothing_changes(namespace: str) -> None:
    _workers._store.update(client=None, ns=namespace)
    cache, get_row, save = _workers.rows_cache(
        f"redis://127.0.0.1:{free_port()}/0", namespace, connect_timeout=0.2
    )
    with pytest.raises(WriteBehindUnavailable, match="not confirmed"):
        save(1, "x")
    assert cache._engine.l1.held(get_row.key(1)) is None
    stop_flusher(cache)


async def test_async_writer_flushes_on_the_loop(redis_server: Any, namespace: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    cache = Cache(redis_server.url, namespace=namespace)

    @cache.cached(ttl=60)
    async def get_row(row: int) -> str | None:
        return None

    save = cache.write_behind(get_row, args=lambda r, v: r, value=lambda r, v: v)(
        _workers.astore_row
    )
    _workers._store.update(aclient=client, ns=namespace)
    for i in range(5):
        await save(i, f"a{i}")
    assert await get_row(3) == "a3"
    report = await cache.aflush(timeout=10)
    assert report.written == 5 and report.pending == 0
    assert await client.hget(f"{namespace}-store:rows", "4") == b"a4"
    await cache.aclose()
    await client.aclose()
    await asyncio.sleep(0)


def test_a_key_s_writes_land_in_order_across_batches_and_retries(rows: Rows) -> None:
    cache, _, save = rows.cache(write_behind_batch_size=3)
    _workers._store["flaky"].update({1: 2, 3: 1})
    for i in range(40):
        save(i % 4, f"v{i}")
    cache.flush(timeout=20)
    assert rows.rows() == {row: f"v{36 + row}" for row in range(4)}
    for row in range(4):
        landed = [int(v[1:]) for v in rows.log(row)]
        assert landed == sorted(landed), landed


def test_write_through_with_redis_wins_over_a_slow_load_and_failure_drops(
    rows: Rows, namespace: str
) -> None:
    cache = Cache(rows.url, namespace=namespace)
    rows.made.append(cache)
    gate = Gate("old")

    @cache.cached(ttl=60)
    def get_row(row: int) -> str:
        return gate()  # type: ignore[no-any-return]

    @cache.write_through(get_row, args=lambda r, v: r, value=lambda r, v: v)
    def save(row: int, value: str) -> None:
        if value == "bad":
            raise RuntimeError("store refused")

    loading, result = in_thread(lambda: get_row(1))
    assert gate.started.wait(5)
    save(1, "new")  # lands while the load of the old value runs
    gate.release.set()
    loading.join(5)
    assert result == ["old"]  # the caller that asked before the write gets its load...
    assert get_row(1) == "new"  # ...but the cache keeps the write
    assert msgpack.unpackb(rows.client.get(get_row.key(1)))[codec.VALUE] == "new"
    with pytest.raises(RuntimeError, match="store refused"):
        save(1, "bad")
    assert not rows.client.exists(get_row.key(1))  # dropped, not half-updated
    assert cache._engine.l1.held(get_row.key(1)) is None


def test_a_write_claimed_late_never_overwrites_a_newer_one(rows: Rows) -> None:
    _first, _, save = rows.cache(write_behind_claim_idle=1.0)
    entered, stuck = threading.Event(), threading.Event()
    _workers._store["blocking"] = {"v0": (entered, stuck)}
    try:
        save(0, "v0")
        assert entered.wait(10)  # its flusher is inside the store call, writing v0
        save(0, "v1")
        # The first flusher stalls past its lease (as a paused process would): another takes
        # over, writes v1 at once, and claims v0 only once it has been idle for claim_idle.
        rows.client.delete(KeySpace(rows.ns).writer("wbflusher", "tests._workers.store_row"))
        heir, _, _ = rows.cache(write_behind_claim_idle=1.0)
        report = heir.flush(timeout=20)
        assert rows.rows() == {0: "v1"} and rows.log(0) == ["v1"]
        assert report.written == 1 and report.coalesced == 1  # v0: acknowledged, not written
        assert rows.client.xlen(rows.stream) == 0  # v0 was claimed and acknowledged, unwritten
    finally:
        stuck.set()


def test_consumers_of_processes_long_gone_are_removed(rows: Rows) -> None:
    group = "cachewise"
    rows.client.xgroup_create(rows.stream, group, id="0", mkstream=True)
    rows.client.pexpire(rows.stream, 60_000)
    rows.client.xgroup_createconsumer(rows.stream, group, "gone-long-ago")
    wait_until(lambda: _idle_ms(rows, "gone-long-ago") > 1_100)
    cache, _, save = rows.cache(write_behind_claim_idle=0.1)
    save(1, "x")
    cache.flush(timeout=10)
    names = [_name(c) for c in rows.client.xinfo_consumers(rows.stream, group)]
    assert "gone-long-ago" not in names and len(names) == 1  # only the live flusher's


def _name(consumer: dict[str, Any]) -> str:
    name = consumer["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _idle_ms(rows: Rows, name: str) -> int:
    for consumer in rows.client.xinfo_consumers(rows.stream, "cachewise"):
        if _name(consumer) == name:
            return int(consumer["idle"])
    return 0
