"""``Cache(timer=...)``: the deadlines of waits (lease waits, the circuit breaker's reset,
timed flushes, write-behind backoff) are kept on an injected timer, so a test moves them with a
``FakeClock`` instead of sleeping."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from cachewise import Cache, ConfigTypeError
from cachewise.redis import Breaker, CircuitOpen
from cachewise.testing import FakeClock, free_port

from .conftest import Gate, in_thread
from .test_concurrency import wait_until
from .test_writes import Store, make

MakeCache = Callable[..., Cache]


def test_a_timer_must_be_callable() -> None:
    with pytest.raises(ConfigTypeError, match="timer"):
        Cache(timer=3)  # type: ignore[arg-type]


def test_the_breaker_resets_on_the_timer() -> None:
    timer = FakeClock()
    recovered: list[bool] = []
    breaker = Breaker(2, 30.0, lambda: recovered.append(True), timer)
    breaker.failed()
    breaker.failed()
    assert breaker.state is Breaker.OPEN
    timer.advance(29.9)
    with pytest.raises(CircuitOpen):
        breaker.check()
    timer.advance(0.2)
    breaker.check()  # a probe may go now
    assert breaker.state is Breaker.HALF_OPEN
    breaker.passed(None)
    assert breaker.state is Breaker.CLOSED and recovered == [True]


def test_a_cache_on_a_dead_redis_probes_again_when_the_timer_says_so() -> None:
    timer = FakeClock()
    cache = Cache(f"redis://127.0.0.1:{free_port()}/0", namespace="timer-breaker", timer=timer,
                  breaker_threshold=1, breaker_reset=60, connect_timeout=0.2)  # fmt: skip
    assert cache.get_or_load("k", lambda: 1, ttl=5) == 1
    backend = cache._engine.backend
    assert backend is not None and backend.breaker.state is Breaker.OPEN
    errors = cache.stats()["redis_errors"]
    cache.delete("k")
    assert cache.get_or_load("k", lambda: 2, ttl=5) == 2
    assert cache.stats()["redis_errors"] == errors  # short-circuited: Redis not tried
    timer.advance(61)
    cache.delete("k")
    assert cache.get_or_load("k", lambda: 3, ttl=5) == 3
    assert cache.stats()["redis_errors"] > errors  # the probe went to Redis (and failed)
    cache.close()


def test_a_lease_wait_gives_up_when_the_timer_passes_its_deadline(make_cache: MakeCache) -> None:
    timer = FakeClock()
    holder, waiter = make_cache(), make_cache(timer=timer, lease_wait_timeout=30, lease_ttl=0.5)
    gate = Gate("holder's")
    holding, held = in_thread(lambda: holder.get_or_load("k", gate, ttl=60))
    assert gate.started.wait(5)
    got: list[Any] = []
    waiting = threading.Thread(
        target=lambda: got.append(waiter.get_or_load("k", lambda: "own", ttl=60))
    )
    waiting.start()
    wait_until(lambda: waiter.stats()["lease_waits"] >= 2, timeout=5)
    assert got == []  # still waiting: 30 s have not passed on its timer
    timer.advance(31)
    waiting.join(5)
    assert got == ["own"] and waiter.stats()["lease_wait_timeouts"] == 1
    gate.release.set()
    holding.join(5)
    assert held == ["holder's"]


def test_a_timed_flush_ends_when_the_timer_passes_its_deadline() -> None:
    timer = FakeClock()
    cache = Cache(namespace="timer-flush", timer=timer)
    store = Store()
    get_user = make(cache, store)
    release = threading.Event()

    @cache.write_behind(get_user, args=lambda u, d: u, value=lambda u, d: d)
    def save(user_id: int, data: str) -> None:
        assert release.wait(10)
        store.save(user_id, data)

    save(1, "x")
    flushing, flushed = in_thread(lambda: cache.flush(timeout=600))
    flushing.join(0.3)
    assert flushing.is_alive()  # 600 s have not passed on its timer
    timer.advance(601)
    flushing.join(5)
    [report] = flushed
    assert report.pending == 1 and store.rows == {}
    release.set()
    assert cache.flush(timeout=600).written == 1 and store.rows == {1: "x"}
    cache.close()


def test_write_behind_backoff_runs_on_the_timer() -> None:
    timer = FakeClock()
    cache = Cache(namespace="timer-backoff", timer=timer, write_behind_backoff=30,
                  write_behind_retries=3)  # fmt: skip
    store = Store()
    store.fail_times = 1
    get_user = make(cache, store)

    @cache.write_behind(get_user, args=lambda u, d: u, value=lambda u, d: d)
    def save(user_id: int, data: str) -> None:
        store.save(user_id, data)

    save(1, "x")
    wait_until(lambda: store.fail_times == 0, timeout=5)  # the first attempt failed
    threading.Event().wait(0.3)  # the flusher took no second one meanwhile: see below
    first = cache.flush(timeout=0)  # a timed flush ends only when the timer passes its deadline
    assert first.retried == 1 and first.pending == 1 and store.rows == {}
    timer.advance(31)  # the backoff (15-30 s) has passed on the timer
    assert cache.flush(timeout=5).written == 1 and store.rows == {1: "x"}
    cache.close()
