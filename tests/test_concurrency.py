"""Single-flight across threads and asyncio tasks; cancellation; shared exceptions.

Synchronised with events and barriers: a loader blocks until the test releases it, and the
test releases it only once every caller is known to be waiting (the engine's own counters).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cachewise import Cache

from .conftest import AsyncGate, Gate, in_thread


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Block until ``predicate()`` holds; fails the test instead of hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


async def await_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0)


def test_100_threads_on_a_cold_key_load_once(cache: Cache) -> None:
    release = threading.Event()
    loads: list[int] = []

    @cache.cached(ttl=60)
    def get(key: str) -> str:
        loads.append(1)
        assert release.wait(10)
        return key.upper()

    barrier = threading.Barrier(100)
    results: list[str] = []

    def caller() -> None:
        barrier.wait()
        results.append(get("k"))

    threads = [threading.Thread(target=caller) for _ in range(100)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.stats()["coalesced_waits"] == 99)
    release.set()
    for t in threads:
        t.join(10)
    assert loads == [1] and results == ["K"] * 100


async def test_500_tasks_on_a_cold_key_load_once(cache: Cache) -> None:
    release = asyncio.Event()
    loads: list[int] = []

    @cache.cached(ttl=60)
    async def get(key: str) -> str:
        loads.append(1)
        await release.wait()
        return key.upper()

    tasks = [asyncio.ensure_future(get("k")) for _ in range(500)]
    await await_until(lambda: cache.stats()["coalesced_waits"] == 499)
    release.set()
    assert await asyncio.gather(*tasks) == ["K"] * 500
    assert loads == [1]


async def test_cancelling_the_first_caller_does_not_cancel_the_load(cache: Cache) -> None:
    load = AsyncGate()
    leader = asyncio.ensure_future(cache.aget_or_load("k", load, ttl=60))
    await await_until(lambda: load.calls == 1)
    follower = asyncio.ensure_future(cache.aget_or_load("k", load, ttl=60))
    await await_until(lambda: cache.stats()["coalesced_waits"] == 1)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    load.release.set()
    assert await follower == "v"
    assert load.calls == 1 and cache.get("k") == "v"


async def test_waiter_that_times_out_does_not_cancel_the_load(cache: Cache) -> None:
    load = AsyncGate()
    leader = asyncio.ensure_future(cache.aget_or_load("k", load, ttl=60))
    await await_until(lambda: load.calls == 1)
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        await asyncio.wait_for(cache.aget_or_load("k", load, ttl=60), 0.01)
    load.release.set()
    assert await leader == "v"
    assert load.calls == 1 and await cache.aget("k") == "v"


async def test_load_survives_when_every_caller_is_gone(cache: Cache) -> None:
    release = asyncio.Event()
    done = asyncio.Event()

    async def load() -> str:
        await release.wait()
        done.set()
        return "v"

    task = asyncio.ensure_future(cache.aget_or_load("k", load, ttl=60))
    await asyncio.sleep(0)
    task.cancel()
    release.set()
    await asyncio.wait_for(done.wait(), 5)
    await await_until(lambda: cache.get("k") == "v")


def test_exception_is_shared_by_every_thread_that_joined(cache: Cache) -> None:
    release = threading.Event()
    attempts: list[int] = []

    def load() -> str:
        attempts.append(1)
        assert release.wait(10)
        raise ConnectionError("db down")

    errors: list[BaseException] = []

    def caller() -> None:
        try:
            cache.get_or_load("k", load, ttl=60)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    wait_until(lambda: cache.stats()["coalesced_waits"] + len(attempts) == 20)
    release.set()
    for t in threads:
        t.join(10)
    assert len(attempts) == 1 and len(errors) == 20
    assert all(isinstance(e, ConnectionError) for e in errors)
    # Not cached: the next call loads again (and nothing is left locked).
    assert cache.get_or_load("k", lambda: "ok", ttl=60) == "ok"


async def test_exception_is_shared_by_every_task_that_joined(cache: Cache) -> None:
    release = asyncio.Event()
    attempts: list[int] = []

    async def load() -> str:
        attempts.append(1)
        await release.wait()
        raise ConnectionError("db down")

    tasks = [asyncio.ensure_future(cache.aget_or_load("k", load, ttl=60)) for _ in range(50)]
    await await_until(lambda: cache.stats()["coalesced_waits"] == 49)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert len(attempts) == 1 and all(isinstance(r, ConnectionError) for r in results)
    assert await cache.aget_or_load("k", lambda: "ok", ttl=60) == "ok"


async def test_threads_and_tasks_share_one_load(cache: Cache) -> None:
    """A sync caller in a thread and async callers on the loop join the same flight."""
    release = threading.Event()
    loads: list[int] = []

    def load() -> str:
        loads.append(1)
        assert release.wait(10)
        return "v"

    thread_result: list[Any] = []
    thread = threading.Thread(
        target=lambda: thread_result.append(cache.get_or_load("k", load, ttl=60))
    )
    thread.start()
    await await_until(lambda: bool(loads))
    tasks = [asyncio.ensure_future(cache.aget_or_load("k", load, ttl=60)) for _ in range(10)]
    await await_until(lambda: cache.stats()["coalesced_waits"] == 10)
    release.set()
    assert await asyncio.gather(*tasks) == ["v"] * 10
    thread.join(10)
    assert thread_result == ["v"] and loads == [1]


@pytest.mark.timeout(30)
async def test_sync_code_on_the_loop_never_waits_for_a_load_of_that_loop(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    """Sync code on the loop's thread (a sync cached function called in ``async def``) that
    waited for a load running in a task of that loop would block the task, and so itself, for
    ever: it loads by itself, keeps nothing, and says why."""
    gate = AsyncGate("async")
    task = asyncio.ensure_future(cache.aget_or_load("k", gate, ttl=60))
    await await_until(lambda: gate.calls == 1)
    assert cache.get_or_load("k", lambda: "sync", ttl=60) == "sync"
    assert cache.stats()["sync_loads_on_loop"] == 1
    assert "async API" in caplog.text
    gate.release.set()
    assert await task == "async"
    assert cache.get_or_load("k", lambda: "other", ttl=60) == "async"  # the task's load is kept


@pytest.mark.timeout(30)
async def test_sync_bulk_code_on_the_loop_never_waits_for_a_load_of_that_loop(
    cache: Cache,
) -> None:
    release, started = asyncio.Event(), asyncio.Event()

    async def aload_many(keys: list[str]) -> dict[str, str]:
        started.set()
        await release.wait()
        return dict.fromkeys(keys, "async")

    task = asyncio.ensure_future(cache.aget_or_load_many(["a", "b"], aload_many, ttl=60))
    await asyncio.wait_for(started.wait(), 10)
    got = cache.get_or_load_many(["a", "c"], lambda keys: dict.fromkeys(keys, "sync"), ttl=60)
    assert got == {"a": "sync", "c": "sync"}
    assert cache.stats()["sync_loads_on_loop"] == 1  # "a"; "c" it led itself
    release.set()
    assert await task == {"a": "async", "b": "async"}


async def test_a_thread_still_waits_for_a_load_led_by_a_task(cache: Cache) -> None:
    """Only the loop's own thread must not wait: another thread joins the task's load."""
    gate = AsyncGate("v")
    task = asyncio.ensure_future(cache.aget_or_load("k", gate, ttl=60))
    await await_until(lambda: gate.calls == 1)
    thread, result = in_thread(lambda: cache.get_or_load("k", lambda: "own", ttl=60))
    await await_until(lambda: cache.stats()["coalesced_waits"] == 1)
    gate.release.set()
    assert await task == "v"
    await asyncio.to_thread(thread.join, 10)
    assert result == ["v"] and gate.calls == 1
    assert cache.stats()["sync_loads_on_loop"] == 0


def test_waiter_past_wait_timeout_loads_itself(clock: Any) -> None:
    cache = Cache(clock=clock, wait_timeout=0.05)
    slow = Gate("slow")
    thread, _ = in_thread(lambda: cache.get_or_load("k", slow, ttl=60))
    assert slow.started.wait(10)
    assert cache.get_or_load("k", lambda: "own", ttl=60) == "own"
    assert cache.stats()["wait_timeouts"] == 1
    slow.release.set()
    thread.join(10)


def test_invalidation_during_a_load_wins(cache: Cache) -> None:
    """The in-process stale-set race: a load that started before an invalidation must not
    store its (old) value afterwards."""
    old_value = Gate("old")
    thread, result = in_thread(lambda: cache.get_or_load("k", old_value, ttl=60))
    assert old_value.started.wait(10)
    cache.invalidate("k")
    old_value.release.set()
    thread.join(10)
    assert result == ["old"]  # its own caller still gets what it asked for
    assert cache.get("k") is None  # but it was not stored
    assert cache.get_or_load("k", lambda: "new", ttl=60) == "new"


def test_a_tag_invalidation_during_a_load_wins(cache: Cache) -> None:
    """The same race through a tag: the loading entry is held nowhere yet, so no tag index
    names it; the flight knows the tags its entry will carry."""
    old_value = Gate("old")

    @cache.cached(ttl=60, tags=lambda team: [f"team:{team}"])
    def members(team: int) -> str:
        return str(old_value())

    thread, result = in_thread(lambda: members(9))
    assert old_value.started.wait(10)
    cache.invalidate_tags("team:9")
    old_value.release.set()
    thread.join(10)
    assert result == ["old"]
    assert cache.stats()["l1_size"] == 0  # not stored
    old_value.value = "new"
    old_value.release.set()
    assert members(9) == "new"


def test_set_during_a_load_wins(cache: Cache) -> None:
    old_value = Gate("old")
    thread, _ = in_thread(lambda: cache.get_or_load("k", old_value, ttl=60))
    assert old_value.started.wait(10)
    cache.set("k", "written", ttl=60)
    old_value.release.set()
    thread.join(10)
    assert cache.get("k") == "written"


def test_lease_renewals_run_while_their_loads_run_and_stop_after() -> None:
    """Sync loads renew their leases from one shared thread: each job at its own interval,
    a failing renewal does not stop the others, and a removed job runs no more."""
    from cachewise._drivers import Invoke, Plan

    runs: dict[str, int] = {"a": 0, "b": 0, "bad": 0}

    def renewal(name: str) -> Callable[[], Plan[None]]:
        def plan() -> Plan[None]:
            runs[name] += 1
            if name == "bad":
                raise RuntimeError("Redis said no")
            return
            yield  # a plan with no operation

        return plan

    gate = threading.Event()
    loads = [
        in_thread(lambda n=n, every=every: Invoke(gate.wait, renewal(n), every).run_sync())
        for n, every in (("a", 0.02), ("b", 0.05), ("bad", 0.02))
    ]
    time.sleep(0.3)
    gate.set()
    for thread, _ in loads:
        thread.join(5)
    counted = dict(runs)
    assert counted["a"] >= 5 and counted["bad"] >= 5  # failures are logged, renewals go on
    assert 2 <= counted["b"] < counted["a"]
    time.sleep(0.1)
    assert runs == counted  # the loads returned: nothing is renewed any more
