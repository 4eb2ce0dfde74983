"""Fault scenarios, each on redis-server processes of its own, with one figure row each.

Threads stand for processes: each "process" is a ``Cache`` of its own (its own L1, connections
and event listener) on the same Redis. Per scenario: calls made, errors callers saw (beyond the
documented, loud refusals of a write that could not be queued durably), reads that returned a
value older than a settled invalidation, and write-behind writes acknowledged / in the store /
reported lost / lost silently. The goal in every row: 0, 0 and 0 lost silently.

Run by ``tests/test_fault_scenarios.py`` (short) and ``python -m tests.soak --docs`` (the table
in docs/resilience.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cachewise import Cache
from cachewise.testing import LocalCluster, RedisServer

from .fault_harness import (
    _STORE_DELAY,
    OPTIONS,
    Counter,
    Reads,
    Row,
    Writes,
    _filler,
    every,
    run_threads,
)

__all__ = ["SCENARIOS", "Row", "run_all", "table"]


def evicting_queue(seconds: float, mode: str) -> Row:
    """An ``allkeys-lru`` Redis filling up with cache entries, under write-behind load: the
    queue refused there (``mode`` "refused"), accepted at the user's risk ("accepted": losses
    detected), or kept on a Redis of its own ("own queue", ``write_behind_redis``)."""
    name = {
        "refused": "evicting Redis (allkeys-lru), write-behind refused there",
        "accepted": "evicting Redis (allkeys-lru), write_behind_allow_eviction=True",
        "own queue": "evicting cache Redis (allkeys-lru), queue on its own (write_behind_redis)",
    }[mode]
    row = Row(name)
    counter = Counter(row)
    with RedisServer("--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru") as server, \
            RedisServer() as queue_server:  # fmt: skip
        ns = "fault-evict"
        writes = Writes(row, ns)
        options: dict[str, Any] = dict(OPTIONS)
        if mode == "accepted":
            options["write_behind_allow_eviction"] = True
        elif mode == "own queue":
            options["write_behind_redis"] = queue_server.url
        caches = [Cache(server.url, namespace=ns, **options) for _ in range(2)]
        filler = Cache(server.url, namespace="filler", **OPTIONS)
        until = time.monotonic() + seconds
        try:
            saves = [writes.saver(c) for c in caches]
            run_threads([
                writes.writer(counter, saves[0], range(0, 20), until),
                writes.writer(counter, saves[1], range(20, 40), until),
                _filler(filler, until, "x" * 4000),
            ])  # fmt: skip
            writes.settle(caches)
        finally:
            for cache in [*caches, filler]:
                cache.close(timeout=5)
    return row


def flushall_during_flush(seconds: float) -> Row:
    row = Row("FLUSHALL during write-behind flushes (twice)")
    counter = Counter(row)
    _STORE_DELAY[0] = 0.002
    with RedisServer() as server:
        ns = "fault-flushall"
        writes = Writes(row, ns)
        caches = [Cache(server.url, namespace=ns, write_behind_claim_idle=0.5, **OPTIONS)
                  for _ in range(2)]  # fmt: skip
        until = time.monotonic() + seconds

        def chaos() -> None:
            admin = server.client()
            for at in (seconds / 3, 2 * seconds / 3):
                time.sleep(max(0.0, until - seconds + at - time.monotonic()))
                admin.flushall()

        try:
            saves = [writes.saver(c) for c in caches]
            run_threads([writes.writer(counter, saves[0], range(0, 20), until),
                         writes.writer(counter, saves[1], range(20, 40), until),
                         chaos])  # fmt: skip
            writes.settle(caches)
        finally:
            _STORE_DELAY[0] = 0.0
            for cache in caches:
                cache.close(timeout=5)
    return row


def master_killed(seconds: float) -> Row:
    """kill -9 of the master mid-load; its replica promoted; the app moves to it."""
    row = Row("master killed (kill -9), replica promoted")
    counter = Counter(row)
    with RedisServer() as master, RedisServer("--replicaof", "127.0.0.1", str(master.port)) as rep:
        deadline = time.monotonic() + 20
        while rep.client().info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "replica did not sync"
            time.sleep(0.05)
        ns = "fault-failover"
        writes = Writes(row, ns)
        first = Cache(master.url, namespace=ns, write_behind_replica_wait=1.0, **OPTIONS)
        save_first = writes.saver(first)
        moved: list[Cache] = []
        current = [save_first]
        until = time.monotonic() + seconds

        def chaos() -> None:
            time.sleep(seconds / 2)
            master.kill()
            rep.client().execute_command("REPLICAOF", "NO", "ONE")
            promoted = Cache(rep.url, namespace=ns, write_behind_claim_idle=0.5, **OPTIONS)
            moved.append(promoted)
            current[0] = writes.saver(promoted)

        try:
            run_threads([writes.writer(counter, lambda r, v: current[0](r, v),
                                       range(0, 20), until), chaos])  # fmt: skip
            writes.settle(moved)
        finally:
            first.close(timeout=1)
            for cache in moved:
                cache.close(timeout=5)
    return row


def tag_state_deleted(seconds: float) -> Row:
    row = Row("tag versions deleted under read load")
    counter = Counter(row)
    reads = Reads(row)
    with RedisServer() as server:
        ns = "fault-tags"
        caches = [Cache(server.url, namespace=ns, **OPTIONS),
                  Cache(server.url, namespace=ns, l1_maxsize=0, **OPTIONS)]  # fmt: skip
        fns = []
        for cache in caches:

            @cache.cached(ttl=60, tags=lambda k: [f"k:{k}"])
            def value(k: int) -> int:
                with reads.lock:
                    return reads.version[k]

            fns.append(value)
        until = time.monotonic() + seconds

        admin = server.client()

        def delete_tags() -> None:
            keys = list(admin.scan_iter(f"{ns}:tagv:*"))
            if keys:
                admin.delete(*keys[: len(keys) // 2 + 1])

        chaos = every(0.05, until, delete_tags)

        try:
            targets = [reads.reader(counter, f, until) for f in fns]
            targets += [reads.updater(counter, lambda k: caches[0].invalidate_tags(f"k:{k}"),
                                      until), chaos]  # fmt: skip
            run_threads(targets)
        finally:
            for cache in caches:
                cache.close(timeout=5)
    reads.count_stale()
    return row


def pubsub_killed(seconds: float) -> Row:
    row = Row("pub/sub connections killed (CLIENT KILL TYPE pubsub) during invalidations")
    counter = Counter(row)
    reads = Reads(row)
    with RedisServer() as server:
        ns = "fault-pubsub"
        writer, reader = (Cache(server.url, namespace=ns, **OPTIONS) for _ in range(2))
        until = time.monotonic() + seconds

        def load(k: int) -> Callable[[], int]:
            def get() -> int:
                with reads.lock:
                    return reads.version[k]

            return get

        admin = server.client()
        chaos = every(0.3, until, lambda: admin.client_kill_filter(_type="pubsub"))

        try:
            targets = [
                reads.reader(counter, lambda k: reader.get_or_load(f"k{k}", load(k), ttl=60),
                             until),
                reads.updater(counter, lambda k: writer.invalidate(f"k{k}"), until),
                chaos,
            ]  # fmt: skip
            run_threads(targets)
        finally:
            writer.close(timeout=5)
            reader.close(timeout=5)
    reads.count_stale()
    return row


def cluster_master_killed(seconds: float) -> Row:
    """A Redis Cluster (3 masters, 3 replicas) under write-behind (a partitioned queue), reads
    and invalidations from two processes; one master killed with SIGKILL mid-load."""
    row = Row("Redis Cluster: a master killed (kill -9), its replica promoted")
    counter = Counter(row)
    reads = Reads(row)
    with LocalCluster() as cluster:
        ns = "fault-cluster"
        writes = Writes(row, ns)
        options = {**OPTIONS, "write_behind_partitions": 3, "write_behind_claim_idle": 0.5}
        writer, reader = (Cache(cluster.nodes[i].url, namespace=ns, **options) for i in (0, 1))
        save = writes.saver(writer)
        until = time.monotonic() + seconds
        faults: list[tuple[float, float]] = []

        def load(k: int) -> Callable[[], int]:
            def get() -> int:
                with reads.lock:
                    return reads.version[k]

            return get

        def chaos() -> None:
            time.sleep(seconds / 2)
            victim = cluster.masters()[0]
            replica = cluster.replica_of(victim)
            began = time.monotonic()
            victim.kill()
            deadline = began + 30
            while replica not in cluster.masters() and time.monotonic() < deadline:
                time.sleep(0.05)
            faults.append((began, time.monotonic()))

        try:
            run_threads([
                writes.writer(counter, save, range(0, 20), until),
                reads.reader(counter, lambda k: reader.get_or_load(f"k{k}", load(k), ttl=60),
                             until),
                reads.updater(counter, lambda k: writer.invalidate(f"k{k}"), until),
                chaos,
            ])  # fmt: skip
            writes.settle([writer, reader])
        finally:
            writer.close(timeout=5)
            reader.close(timeout=5)
    reads.count_stale(faults)
    return row


SCENARIOS: dict[str, Callable[[float], Row]] = {
    "evicting-refused": lambda s: evicting_queue(s, "refused"),
    "evicting-accepted": lambda s: evicting_queue(s, "accepted"),
    "evicting-own-queue": lambda s: evicting_queue(s, "own queue"),
    "flushall": flushall_during_flush,
    "failover": master_killed,
    "tags-deleted": tag_state_deleted,
    "pubsub-killed": pubsub_killed,
    "cluster-master-killed": cluster_master_killed,
}


def run_all(seconds: float) -> list[dict[str, Any]]:
    return [SCENARIOS[name](seconds).as_dict() for name in SCENARIOS]


def table(rows: list[dict[str, Any]], seconds: float) -> list[str]:
    lines = [
        f"### Fault scenarios ({seconds:.0f} s each)",
        "",
        "Generated with the soak table by `python -m tests.soak --docs` "
        "(`tests/fault_scenarios.py`; `tests/test_fault_scenarios.py` runs them shorter and "
        "fails on any miss). Threads "
        'stand for processes, each a `Cache` of its own. "Refused loudly": writes that raised '
        "`WriteBehindNotDurable` or `WriteBehindUnavailable` (not acknowledged, by design); "
        '"stored": acknowledged writes whose row holds their value or a newer acknowledged one; '
        '"queued again": writes a process still held when it found the queue lost (see the '
        "durability contract in concepts).",
        "",
        "| scenario | calls | errors seen by callers | writes refused loudly | stale reads "
        "after settle | writes acknowledged | stored | queued again after a loss | reported "
        "lost | lost silently |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['calls']:,} | {r['errors']} | {r['refused']:,} | "
            f"{r['stale']} | {r['acknowledged']:,} | {r['stored']:,} | {r['requeued']:,} | "
            f"{r['reported_lost']} | {r['lost_silently']} |"
        )
    return lines
