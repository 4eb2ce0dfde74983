"""Redis in trouble: killed, paused, slowed, full, flushed. Callers keep getting correct values,
the circuit breaker opens and recovers, nothing raises, and no stale copy survives."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.backoff
import redis.retry

from cachewise import Cache, RedisUnavailable
from cachewise.testing import RedisServer

from .conftest import Gate, caches, in_thread

TIMEOUT = 0.2  # socket and connect timeouts of the caches under test


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of this test's own: the tests kill, pause and fill it."""
    made = RedisServer("--enable-debug-command", "yes")
    yield made
    made.stop()


@pytest.fixture
def make(server: RedisServer) -> Iterator[Callable[..., Cache]]:
    with caches(
        server.url,
        namespace="f",
        socket_timeout=TIMEOUT,
        connect_timeout=TIMEOUT,
        breaker_reset=0.3,
    ) as build:
        yield build


def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``check`` (in 10 ms steps) until it holds, or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def counting(loads: Counter[str], prefix: str = "v") -> Callable[[str], Callable[[], str]]:
    def loader(key: str) -> Callable[[], str]:
        def load() -> str:
            loads[key] += 1
            return f"{prefix}{key}"

        return load

    return loader


def test_killed_redis_answers_from_l1_and_origin_then_recovers(
    server: RedisServer, make: Callable[..., Cache]
) -> None:
    cache = make()
    loads: Counter[str] = Counter()
    load = counting(loads)
    assert cache.get_or_load("a", load("a"), ttl=60) == "va"
    server.kill()
    until(lambda: cache.stats()["l1_flushes"] >= 1)  # the event channel dropped: L1 emptied
    began = time.monotonic()
    for key in "bcdefgh":
        assert cache.get_or_load(key, load(key), ttl=60) == f"v{key}"  # the origin, no error
    assert time.monotonic() - began < 10 * 2 * TIMEOUT
    stats = cache.stats()
    assert stats["breaker_state"] == "open" and stats["breaker_opens"] == 1
    assert stats["short_circuits"] > 0 and stats["loads_without_redis"] >= 7
    assert cache.get_or_load("b", load("b"), ttl=60) == "vb" and loads["b"] == 1  # L1 serves
    began = time.monotonic()
    assert cache.get_or_load("z", load("z"), ttl=60) == "vz"
    assert time.monotonic() - began < TIMEOUT  # open: no timeout paid

    server.restart()
    flushes = stats["l1_flushes"]
    probes = itertools.count()
    until(
        lambda: (
            cache.get(f"probe{next(probes)}") is None and cache.stats()["breaker_state"] == "closed"
        )
    )
    assert cache.stats()["l1_flushes"] > flushes  # L1 is not trusted after the outage
    assert cache.get_or_load("b", load("b"), ttl=60) == "vb"
    assert loads["b"] == 2  # reloaded after the outage, and stored in Redis again
    assert server.client().exists("f:{b}")


def test_paused_redis_costs_bounded_time_and_outage_invalidations_are_sent_after(
    server: RedisServer, make: Callable[..., Cache]
) -> None:
    writer, reader = make(), make()  # two processes, as far as the cache can tell
    store = {"k": "old"}
    assert writer.get_or_load("k", lambda: store["k"], ttl=60) == "old"
    assert reader.get_or_load("k", lambda: store["k"], ttl=60) == "old"  # held in its L1
    server.pause()
    try:
        store["k"] = "new"
        began = time.monotonic()
        writer.invalidate("k")  # cannot reach Redis: kept for later
        for i in range(8):
            assert writer.get_or_load(f"m{i}", lambda: "x", ttl=60) == "x"
        took = time.monotonic() - began
        assert took < 9 * 2 * TIMEOUT + 1.0, took
        assert writer.stats()["breaker_state"] == "open"
    finally:
        server.resume()
    # The next call of the writer sends the invalidation; the reader's copy goes.
    ticks = itertools.count()
    until(
        lambda: (
            writer.get(f"tick{next(ticks)}") is None
            and writer.stats()["outage_invalidations_sent"] >= 1
        )
    )
    until(lambda: reader.get_or_load("k", lambda: store["k"], ttl=60) == "new")
    assert writer.get_or_load("k", lambda: store["k"], ttl=60) == "new"


def test_an_idle_process_sends_what_an_outage_held_back(
    server: RedisServer, make: Callable[..., Cache]
) -> None:
    """An invalidation that could not reach Redis is sent once Redis answers again, with no
    further call of that process: its listener sends it (else an idle process would leave the
    old value in Redis for every other process to read)."""
    writer, reader = make(), make()
    store = {"k": "old"}
    assert writer.get_or_load("k", lambda: store["k"], ttl=60) == "old"
    server.pause()
    try:
        store["k"] = "new"
        writer.invalidate("k")  # cannot reach Redis: held back
    finally:
        server.resume()
    until(lambda: writer.stats()["outage_invalidations_sent"] >= 1)  # no call of the writer
    until(lambda: reader.get_or_load("k", lambda: store["k"], ttl=60) == "new")


def test_fail_closed_raises_on_a_miss_instead_of_loading(
    server: RedisServer, make: Callable[..., Cache]
) -> None:
    cache = make()

    @cache.cached(ttl=60, fail_closed=True)
    def strict(x: int) -> int:
        return x * 2

    @cache.cached(ttl=60)
    def lenient(x: int) -> int:
        return x * 3

    assert strict(1) == 2
    server.kill()
    with pytest.raises(RedisUnavailable, match="fail-closed"):
        strict(2)
    assert lenient(2) == 6  # the cache's default: fail open
    whole = make(fail_closed=True)
    with pytest.raises(RedisUnavailable):
        whole.get_or_load("k", lambda: 1, ttl=60)
    with pytest.raises(RedisUnavailable):
        whole.get_or_load_many(["a", "b"], lambda keys: dict.fromkeys(keys, 1), ttl=60)


def test_slow_redis_times_out_and_callers_get_values(
    server: RedisServer, make: Callable[..., Cache]
) -> None:
    cache = make(breaker_threshold=100)  # measure the timeouts, not the breaker
    cache.get_or_load("warm", lambda: 1, ttl=60)
    sleeper = threading.Thread(
        target=lambda: server.client().execute_command("DEBUG", "SLEEP", "1")
    )
    sleeper.start()
    probe = redis.Redis(
        host="127.0.0.1",
        port=server.port,
        socket_timeout=0.05,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),  # a timeout is the answer
    )

    def asleep() -> bool:
        try:
            probe.ping()
            return False
        except redis.exceptions.TimeoutError:
            return True

    until(asleep, 5)  # the server is asleep now
    began = time.monotonic()
    assert cache.get_or_load("slow", lambda: "from origin", ttl=60) == "from origin"
    assert time.monotonic() - began < 4 * TIMEOUT + 0.3
    assert cache.stats()["redis_errors"] >= 1
    sleeper.join(5)
    until(lambda: cache.stats()["breaker_state"] == "closed" and cache.get("warm") == 1)


@pytest.mark.parametrize("policy", ["allkeys-lru", "noeviction"])
def test_full_redis_is_a_miss_never_an_error(
    server: RedisServer, make: Callable[..., Cache], policy: str
) -> None:
    client = server.client()
    client.config_set("maxmemory", 4 * 1024 * 1024)
    client.config_set("maxmemory-policy", policy)
    cache = make(l1_maxsize=0)
    loads: Counter[str] = Counter()
    blob = "x" * 4096
    for i in range(2000):
        key = f"k{i}"

        def load(key: str = key) -> str:
            loads[key] += 1
            return blob

        assert cache.get_or_load(key, load, ttl=600) == blob
    assert cache.get_or_load("k0", lambda: blob, ttl=600) == blob
    stats = cache.stats()
    assert stats["loads"] >= 2000
    if policy == "noeviction":
        assert stats["redis_errors"] > 0  # OOM refusals: counted, never raised
    else:
        assert int(client.info("stats")["evicted_keys"]) > 0


def test_flushall_during_a_load_refuses_the_fill_and_nothing_raises(
    server: RedisServer, make: Callable[..., Cache]
) -> None:
    cache = make(l1_maxsize=0)
    gate = Gate("loaded")
    loading, result = in_thread(lambda: cache.get_or_load("k", gate, ttl=60))
    assert gate.started.wait(5)
    server.client().flushall()  # the lease goes with everything else
    gate.release.set()
    loading.join(5)
    assert result == ["loaded"]
    assert cache.stats()["fills_refused"] == 1
    assert cache.get_or_load("k", lambda: "again", ttl=60) == "again"


def test_a_lease_whose_reply_was_lost_is_given_back(
    redis_server: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeout does not say the lease script did not run: Redis may hold the lease after
    all. It is given back, so another process does not wait it out (lease_ttl) for a fill that
    never comes."""
    from cachewise import redis as _redis

    with caches(redis_server.url, namespace=namespace, lease_ttl=5) as make:
        a, b = make(), make()
        a.get("~warm-up")
        b.get("~warm-up")
        real = _redis.RunScript.call_sync

        def reply_lost(self: Any) -> Any:
            result = real(self)
            if self.name == "acquire" and self.backend is a._engine.backend:
                raise redis.TimeoutError("the reply was lost")
            return result

        monkeypatch.setattr(_redis.RunScript, "call_sync", reply_lost)
        assert a.get_or_load("k", lambda: "a's", ttl=60) == "a's"  # loaded without the lease
        started = time.monotonic()
        assert b.get_or_load("k", lambda: "b's", ttl=60) == "b's"
        assert time.monotonic() - started < 2.0  # not the 5 s lease
        assert b.stats()["loads"] == 1
