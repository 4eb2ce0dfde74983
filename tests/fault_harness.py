"""What the fault scenarios (``fault_scenarios``) share: their figure row, the call counter,
the write-behind load and its store, the readers and the updater whose reads are checked for
staleness, and the threads that stand for processes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from cachewise import Cache, WriteBehindNotDurable, WriteBehindUnavailable

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
