"""The in-process tier through both drivers: reads, writes, expiry, invalidation, tags, stats."""

from __future__ import annotations

import os
from typing import Any

import pytest

import cachewise
from cachewise import Cache, InvalidationEvent
from cachewise.testing import FakeClock

from .conftest import Driver


def counting_loader(value: Any) -> tuple[list[int], Any]:
    calls: list[int] = []

    def load() -> Any:
        calls.append(1)
        return value

    return calls, load


def test_get_or_load_loads_once_and_caches_none(cache: Cache, drive: Driver) -> None:
    calls, load = counting_loader(None)
    assert drive(cache, "get_or_load", "k", load, ttl=10) is None
    assert drive(cache, "get_or_load", "k", load, ttl=10) is None
    assert len(calls) == 1


def test_entries_expire_with_the_clock(cache: Cache, clock: FakeClock, drive: Driver) -> None:
    calls, load = counting_loader("v")
    drive(cache, "get_or_load", "k", load, ttl=10)
    clock.advance(9.9)
    drive(cache, "get_or_load", "k", load, ttl=10)
    assert len(calls) == 1
    clock.advance(0.1)
    drive(cache, "get_or_load", "k", load, ttl=10)
    assert len(calls) == 2


def test_set_get_delete(cache: Cache, clock: FakeClock, drive: Driver) -> None:
    assert drive(cache, "get", "k", default="d") == "d"
    drive(cache, "set", "k", {"a": 1}, ttl=5)
    assert drive(cache, "get", "k") == {"a": 1}
    assert drive(cache, "delete", "k") is True
    assert drive(cache, "delete", "k") is False
    drive(cache, "set", "k", 1, ttl=5)
    clock.advance(5)
    assert drive(cache, "get", "k", default=None) is None


def test_values_are_shared_not_copied(cache: Cache) -> None:
    # One behaviour in every mode: L1 hands out the stored object itself (documented).
    value = {"a": 1}
    cache.set("k", value, ttl=5)
    assert cache.get("k") is value


def test_get_many_and_get_or_load_many(cache: Cache, drive: Driver) -> None:
    drive(cache, "set", "a", 1, ttl=10)
    assert drive(cache, "get_many", ["a", "b"]) == {"a": 1}
    asked: list[list[str]] = []

    def load_many(keys: list[str]) -> dict[str, Any]:
        asked.append(sorted(keys))
        return {k: k.upper() for k in keys}

    got = drive(cache, "get_or_load_many", ["a", "b", "c"], load_many, ttl=10)
    assert got == {"a": 1, "b": "B", "c": "C"}
    assert asked == [["b", "c"]]
    assert drive(cache, "get_or_load_many", ["a", "b", "c"], load_many, ttl=10) == got
    assert len(asked) == 1


def test_get_or_load_many_missing_key_is_an_error(cache: Cache) -> None:
    with pytest.raises(cachewise.LoaderResultError, match="'b'"):
        cache.get_or_load_many(["a", "b"], lambda keys: {"a": 1}, ttl=10)
    assert cache.get("a") == 1 and cache.get("b") is None


def test_cached_function(cache: Cache, clock: FakeClock, drive: Driver) -> None:
    calls: list[int] = []

    def square(x: int, scale: int = 1) -> int:
        calls.append(x)
        return x * x * scale

    f = cache.cached(ttl=10)(drive.function(square))
    assert drive.run(f, 3) == 9
    assert drive.run(f, x=3) == 9
    assert drive.run(f, 3, scale=1) == 9
    assert calls == [3]
    assert drive.run(f, 3, 2) == 18
    assert drive.run(f.invalidate, 3) == 1
    assert drive.run(f, 3) == 9
    assert calls == [3, 3, 3]
    assert f.__name__ == "square"


def test_cached_keeps_signature_and_metadata(cache: Cache) -> None:
    import inspect

    @cache.cached(ttl=1)
    def f(a: int, b: str = "x") -> str:
        """Doc."""
        return b * a

    assert inspect.signature(f) == inspect.signature(f.__wrapped__)  # type: ignore[attr-defined]
    assert f.__doc__ == "Doc." and f.__name__ == "f"
    with pytest.raises(TypeError, match="missing"):
        f()  # type: ignore[call-arg]


def test_methods_leave_self_out_of_the_key(cache: Cache) -> None:
    loads: list[tuple[str, int]] = []

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name

        @cache.cached(ttl=10)
        def get(self, item: int) -> str:
            loads.append((self.name, item))
            return f"{self.name}:{item}"

        @classmethod
        @cache.cached(ttl=10)
        def make(cls, n: int) -> int:
            loads.append(("cls", n))
            return n

        @cache.cached(ttl=10)
        @staticmethod
        def static(n: int) -> int:
            loads.append(("static", n))
            return n

    a, b = Repo("a"), Repo("b")
    assert a.get(1) == "a:1" and b.get(1) == "a:1"  # self is not part of the key
    assert Repo.make(2) == 2 and Repo.make(2) == 2
    assert Repo.static(3) == 3 and a.static(3) == 3
    assert loads == [("a", 1), ("cls", 2), ("static", 3)]
    assert Repo.get.key(a, 1) == Repo.get.key(b, 1)  # type: ignore[attr-defined]


def test_instances_with_cache_key_are_told_apart(cache: Cache) -> None:
    class Tenant:
        def __init__(self, name: str) -> None:
            self.name = name

        def __cache_key__(self) -> str:
            return self.name

        @cache.cached(ttl=10)
        def greet(self, who: str) -> str:
            return f"{self.name}->{who}"

    assert Tenant("a").greet("x") == "a->x"
    assert Tenant("b").greet("x") == "b->x"


def test_key_function_shares_explicit_keys(cache: Cache, drive: Driver) -> None:
    def load(user_id: int) -> str:
        return f"user{user_id}"

    f = cache.cached(ttl=10, key=lambda user_id: f"user:{user_id}")(drive.function(load))
    assert drive.run(f, 1) == "user1"
    assert f.key(1) == "t:{user:1}"
    assert drive(cache, "get", "user:1") == "user1"
    drive(cache, "invalidate", "user:1")
    assert drive(cache, "get", "user:1") is None


def test_tags_invalidate_many(cache: Cache, drive: Driver) -> None:
    def member(team: int, user: int) -> str:
        return f"{team}/{user}"

    f = cache.cached(ttl=10, tags=lambda team, user: [f"team:{team}"])(drive.function(member))
    for user in range(3):
        drive.run(f, 9, user)
    drive.run(f, 8, 0)
    events: list[InvalidationEvent] = []
    cache.on_invalidate(events.append)
    assert drive(cache, "invalidate_tags", "team:9") == 3
    assert cache.stats()["l1_size"] == 1
    assert events[-1].tags == ("team:9",) and len(events[-1].keys) == 3
    assert events[-1].origin == "local"


def test_on_invalidate_sees_every_kind_of_invalidation(cache: Cache) -> None:
    events: list[InvalidationEvent] = []

    @cache.on_invalidate
    def listener(event: InvalidationEvent) -> None:
        events.append(event)

    @cache.on_invalidate
    def broken(event: InvalidationEvent) -> None:
        raise RuntimeError("listener bug")

    @cache.cached(ttl=10)
    def f(x: int) -> int:
        return x

    f(1)
    f.invalidate(1)
    cache.invalidate("a", "b")
    cache.delete("c")
    assert [e.keys for e in events] == [(f.key(1),), ("t:{a}", "t:{b}"), ("t:{c}",)]


def test_l1_is_bounded_and_counts_evictions(clock: FakeClock) -> None:
    cache = Cache(l1_maxsize=3, clock=clock, ttl_jitter=0)
    for i in range(5):
        cache.set(str(i), i, ttl=10)
    stats = cache.stats()
    assert stats["l1_size"] == 3 and stats["evictions"] == 2
    assert cache.get("0") is None and cache.get("4") == 4


def test_recently_hit_entries_survive_eviction(clock: FakeClock) -> None:
    cache = Cache(l1_maxsize=3, clock=clock, ttl_jitter=0)
    for key in "abc":
        cache.set(key, key, ttl=10)
    assert cache.get("a") == "a"  # a is the oldest, but it was just used
    cache.set("d", "d", ttl=10)
    assert cache.get("a") == "a" and cache.get("b") is None


def test_l1_off_still_single_flights_but_holds_nothing(clock: FakeClock) -> None:
    cache = Cache(l1_maxsize=0, clock=clock)
    calls, load = counting_loader(1)
    cache.get_or_load("k", load, ttl=10)
    cache.get_or_load("k", load, ttl=10)
    assert len(calls) == 2 and cache.stats()["l1_size"] == 0


def test_ttl_jitter_spreads_expiry(clock: FakeClock) -> None:
    cache = Cache(clock=clock, ttl_jitter=0.2, early_refresh_beta=0)
    for i in range(50):
        cache.set(str(i), i, ttl=100)
    clock.advance(90)
    alive = sum(cache.get(str(i)) is not None for i in range(50))
    assert 0 < alive < 50
    clock.advance(10)
    assert all(cache.get(str(i)) is None for i in range(50))


def test_timedelta_ttl(cache: Cache, clock: FakeClock) -> None:
    import datetime

    cache.set("k", 1, ttl=datetime.timedelta(seconds=2))
    clock.advance(1.9)
    assert cache.get("k") == 1
    clock.advance(0.1)
    assert cache.get("k") is None


def test_stats_count_and_reading_changes_nothing(cache: Cache) -> None:
    _calls, load = counting_loader(1)
    for _ in range(3):
        cache.get_or_load("k", load, ttl=10)
    first = cache.stats()
    assert first == cache.stats()
    assert first["loads"] == 1 and first["misses"] == 1 and first["l1_hits"] == 2
    assert first["load_latency"]["count"] == 1


def test_loader_exception_is_not_cached(cache: Cache, drive: Driver) -> None:
    attempts: list[int] = []

    def load() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise LookupError("db down")
        return 7

    with pytest.raises(LookupError, match="db down"):
        drive(cache, "get_or_load", "k", load, ttl=10)
    assert drive(cache, "get_or_load", "k", load, ttl=10) == 7
    assert cache.stats()["load_errors"] == 1


def test_async_loader_in_sync_call_is_a_clear_error(cache: Cache) -> None:
    async def load() -> int:
        return 1

    with pytest.raises(TypeError, match="aget_or_load"):
        cache.get_or_load("k", load, ttl=10)
    assert cache.get("k") is None


def test_module_level_configure_and_cached() -> None:
    cache = cachewise.configure(namespace="mod", l1_maxsize=10)
    calls: list[int] = []

    @cachewise.cached(ttl=10)
    def f(x: int) -> int:
        calls.append(x)
        return x

    f(1), f(1)
    assert calls == [1] and f.key(1).startswith("mod:") and cachewise.default_cache() is cache


def test_context_managers() -> None:
    with Cache() as cache:
        cache.set("k", 1, ttl=1)

    async def main() -> None:
        async with Cache() as acache:
            await acache.aset("k", 1, ttl=1)
            assert await acache.aget("k") == 1

    import asyncio

    asyncio.run(main())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_with_empty_l1(cache: Cache) -> None:
    cache.set("k", 1, ttl=100)
    pid = os.fork()
    if pid == 0:  # child: report through the exit code only
        os._exit(0 if cache.get("k") is None and cache.stats()["l1_size"] == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get("k") == 1


def test_explicit_keys_targets_are_remembered_within_a_bound(cache: Cache) -> None:
    """An explicit key's target (its names) is made once and kept for the next reads, for a
    bounded number of keys; reads of many keys stay right across the bound."""
    from cachewise.engine import state

    engine = cache._engine
    assert engine.explicit_target("k") is engine.explicit_target("k")
    for i in range(state._TARGETS_KEPT * 2 + 5):
        cache.set(f"key{i}", i, ttl=60)
        assert len(engine._targets) <= state._TARGETS_KEPT
    assert [cache.get(f"key{i}") for i in range(state._TARGETS_KEPT * 2 + 5)] == list(
        range(state._TARGETS_KEPT * 2 + 5)
    )
    assert engine.explicit_target("key7").full_key == "t:{key7}"
