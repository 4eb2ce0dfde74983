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

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from cachewise import Cache, WriteBehindNotDurable, WriteBehindUnavailable
from cachewise.testing import LocalCluster, RedisServer

SETTLE = 0.5  # an invalidation counts as settled this long after it returned
AFTER_FAULT = 3.0  # or this long after the end of the fault it returned in
OPTIONS: dict[str, Any] = {"socket_timeout": 0.25, "connect_timeout": 0.25, "breaker_reset": 0.3}

#: The store behind the write-behind scenarios: row -> the values written, in order.
_STORE: dict[int, list[int]] = {}
_STORE_LOCK = threading.Lock()
_STORE_DELAY = [0.0]


def store_row(row: int, value: int) -> None:
    """The writer of the write-behind scenarios (module level: every process can name it)."""
    if _STORE_DELAY[0]:
        time.sleep(_STORE_DELAY[0])
    with _STORE_LOCK:
        _STORE.setdefault(row, []).append(value)


@dataclass
class Row:
    scenario: str
    calls: int = 0
    errors: int = 0
    refused: int = 0  # writes refused loudly: not durable here, or Redis down (by design)
    stale: int = 0
    acknowledged: int = 0
    stored: int = 0
    reported_lost: int = 0
    requeued: int = 0  # writes queued again after the queue was found lost
    samples: list[str] = field(default_factory=list)

    @property
    def lost_silently(self) -> int:
        return max(0, self.acknowledged - self.stored - self.reported_lost)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "lost_silently": self.lost_silently}


class Counter:
    """Thread-safe call and error counts of one scenario."""

    def __init__(self, row: Row) -> None:
        self.row = row
        self.lock = threading.Lock()

    def call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (WriteBehindNotDurable, WriteBehindUnavailable):
            with self.lock:
                self.row.refused += 1
            return None
        except Exception as exc:
            with self.lock:
                self.row.errors += 1
                if len(self.row.samples) < 3:
                    self.row.samples.append(repr(exc))
            return None
        finally:
            with self.lock:
                self.row.calls += 1


def every(interval: float, until: float, action: Callable[[], None]) -> Callable[[], None]:
    """A thread body that runs ``action`` every ``interval`` seconds until ``until``; a Redis
    error of the fault itself is ignored."""

    def run() -> None:
        while time.monotonic() < until:
            with contextlib.suppress(redis.RedisError):
                action()
            time.sleep(interval)

    return run


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Run each target in a thread of its own, and wait for all of them."""
    pool = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)


# -- write-behind -----------------------------------------------------------------------------


class Writes:
    """Write-behind load: each writer thread owns its rows and writes increasing values, so the
    store's last value of a row tells which acknowledged writes reached it (or were replaced by a
    newer acknowledged write that did: coalescing)."""

    def __init__(self, row: Row, namespace: str) -> None:
        self.row = row
        self.ns = namespace
        self.acked: dict[int, list[int]] = {}
        self.lock = threading.Lock()
        _STORE.clear()

    def saver(self, cache: Cache) -> Callable[[int, int], None]:
        @cache.cached(ttl=60)
        def get_row(row: int) -> int | None:
            with _STORE_LOCK:
                found = _STORE.get(row)
            return found[-1] if found else None

        return cache.write_behind(  # type: ignore[no-any-return]
            get_row, args=lambda row, value: row, value=lambda row, value: value
        )(store_row)

    def writer(self, counter: Counter, save: Callable[..., Any], rows: range, until: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            value = 0
            while time.monotonic() < until:
                value += 1
                for r in rows:
                    done = counter.call(lambda r=r, v=value: save(r, v) or True)
                    if done:
                        with self.lock:
                            self.acked.setdefault(r, []).append(value)
                time.sleep(0.002)

        return run

    def settle(self, caches: list[Cache]) -> None:
        for cache in caches:
            deadline = time.monotonic() + 60
            with contextlib.suppress(Exception):
                while True:  # until a flush found nothing left and Redis answered it
                    report = cache.flush(timeout=30)
                    self.row.reported_lost += report.lost
                    if (report.pending == 0 and not report.errors) or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                self.row.requeued += cache.stats()["write_behind_requeued"]
        self.row.acknowledged = sum(len(v) for v in self.acked.values())
        with _STORE_LOCK:
            final = {r: (vals[-1] if vals else 0) for r, vals in _STORE.items()}
        self.row.stored = sum(
            1 for r, vals in self.acked.items() for v in vals if final.get(r, 0) >= v
        )


def _filler(cache: Cache, until: float, blob: str) -> Callable[[], None]:
    def run() -> None:
        i = 0
        while time.monotonic() < until:
            with contextlib.suppress(Exception):
                cache.set(f"fill{i}", blob, ttl=600)
            i += 1

    return run


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


# -- reads and invalidation --------------------------------------------------------------------


class Reads:
    """Readers record (version read, when the read began); the updater records (version, when
    its invalidation settles). A read that began after version v settled and returned less than
    v is stale."""

    def __init__(self, row: Row) -> None:
        self.row = row
        self.version = {k: 1 for k in range(10)}
        self.reads: list[tuple[int, int, float]] = []
        self.settled: list[tuple[int, int, float]] = []
        self.lock = threading.Lock()

    def reader(self, counter: Counter, read: Callable[[int], Any], until: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            k = 0
            while time.monotonic() < until:
                k = (k + 1) % 10
                began = time.monotonic()
                got = counter.call(lambda k=k: read(k))
                if isinstance(got, int):
                    with self.lock:
                        self.reads.append((k, got, began))

        return run

    def updater(self, counter: Counter, invalidate: Callable[[int], Any], until: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            k = 0
            while time.monotonic() < until - 1.0:
                k = (k + 1) % 10
                with self.lock:
                    self.version[k] += 1
                    v = self.version[k]
                counter.call(lambda k=k: invalidate(k))
                with self.lock:
                    self.settled.append((k, v, time.monotonic() + SETTLE))
                time.sleep(0.02)

        return run

    def count_stale(self, faults: list[tuple[float, float]] = ()) -> None:  # type: ignore[assignment]
        """Count stale reads; an invalidation whose settling overlapped a fault window (an
        outage: it is remembered and sent when Redis answers) settles ``AFTER_FAULT`` after
        the fault ended."""

        def effective(at: float) -> float:
            overlapping = [end + AFTER_FAULT for start, end in faults
                           if at - SETTLE <= end and at >= start]  # fmt: skip
            return max([at, *overlapping])

        settled = [(key, v, effective(at)) for key, v, at in self.settled]
        for k, got, began in self.reads:
            newest = max((v for key, v, at in settled if key == k and at <= began), default=0)
            if got < newest:
                self.row.stale += 1


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
