"""Leases against a real redis-server: one load per key across processes, its waiters woken by
its fill, its lease renewed, given back and taken over; invalidations and writes during a load
win (no stale sets)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cachewise import Cache, CacheError
from cachewise.events import Invalidated

from .conftest import Gate, in_thread
from .redis_helpers import MakeCache, lease_key, listening, woken_after
from .test_concurrency import wait_until


def test_invalidation_during_a_load_wins_across_processes(make_cache: MakeCache) -> None:
    """The stale-set race: a slow load that began before an invalidation must not be stored."""
    a, b = make_cache(), make_cache()
    old = Gate("old")
    thread, result = in_thread(lambda: a.get_or_load("k", old, ttl=30))
    assert old.started.wait(10)
    b.invalidate("k")  # the database changed while a was loading
    old.release.set()
    thread.join(10)
    assert result == ["old"]
    assert a.stats()["fills_refused"] == 1
    assert b.get_or_load("k", lambda: "new", ttl=30) == "new"
    assert a.get_or_load("k", lambda: "wrong", ttl=30) == "new"


def test_a_tag_invalidation_during_a_load_wins_across_processes(make_cache: MakeCache) -> None:
    """A tag invalidated in one process while another loads an entry carrying it: the load's
    lease joined the tag's index, so the invalidation deleted it and the fill is refused."""
    a, b = make_cache(), listening(make_cache())
    a.set("unrelated", 1, ttl=30)  # a tag index and a listener exist before the load
    listening(a)
    db = {"row": "old"}
    gate = Gate()

    def load() -> str:
        row = db["row"]
        gate()
        return row

    @a.cached(ttl=30, tags=lambda team: [f"team:{team}"])
    def members_a(team: int) -> str:
        return load()

    @b.cached(ttl=30, tags=lambda team: [f"team:{team}"])
    def members_b(team: int) -> str:
        return db["row"]

    thread, result = in_thread(lambda: members_a(9))
    assert gate.started.wait(10)
    db["row"] = "new"
    b.invalidate_tags("team:9")
    gate.release.set()
    thread.join(10)
    assert result == ["old"]
    assert a.stats()["fills_refused"] == 1
    assert members_b(9) == "new"
    wait_until(lambda: members_a(9) == "new")


def test_a_write_during_a_load_wins(make_cache: MakeCache) -> None:
    a, b = make_cache(), make_cache()
    old = Gate("old")
    thread, _ = in_thread(lambda: a.get_or_load("k", old, ttl=30))
    assert old.started.wait(10)
    b.set("k", "written", ttl=30)
    old.release.set()
    thread.join(10)
    c = make_cache()
    assert c.get("k") == "written"


def test_waiters_in_another_process_are_woken_by_the_fill(make_cache: MakeCache) -> None:
    a, b = make_cache(), listening(make_cache())
    slow = Gate("v")
    loads_in_b: list[str] = []
    thread, _ = in_thread(lambda: a.get_or_load("k", slow, ttl=30))
    assert slow.started.wait(10)
    read = lambda: b.get_or_load("k", lambda: loads_in_b.append("b"), ttl=30)  # noqa: E731
    got, after = woken_after(b, read, slow.release.set)
    thread.join(10)
    assert got == ["v"] and slow.calls == 1 and loads_in_b == []
    assert after < 1.0  # woken by the event, not by the lease expiring


def load_past_a_lease(
    cache: Cache, redis_server: Any, namespace: str, holder: str, px: int
) -> float:
    """Give ``holder`` the lease of key ``k`` for ``px`` ms, then load ``k``: the seconds the
    load took."""
    redis_server.client().set(lease_key(namespace, "k"), holder, px=px)
    started = time.monotonic()
    assert cache.get_or_load("k", lambda: "mine", ttl=30) == "mine"
    return time.monotonic() - started


def test_a_dead_lease_holder_is_taken_over(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = listening(make_cache(lease_ttl=0.3))
    # A holder that took the lease and died: nobody will renew or fill it.
    waited = load_past_a_lease(cache, redis_server, namespace, "dead-holder", 300)
    assert 0.2 < waited < 3.0
    assert cache.stats()["loads"] == 1


def test_long_loads_renew_theirlease_key(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = make_cache(lease_ttl=0.3)
    seen: list[int] = []

    def slow() -> str:
        for _ in range(4):
            time.sleep(0.2)
            seen.append(redis_server.client().pttl(lease_key(namespace, "k")))
        return "v"

    assert cache.get_or_load("k", slow, ttl=30) == "v"
    assert all(ttl > 0 for ttl in seen)  # never expired during a 0.8 s load with a 0.3 s lease
    assert redis_server.client().exists(lease_key(namespace, "k")) == 0  # given back after the fill


def test_long_bulk_loads_renew_their_leases(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = make_cache(lease_ttl=0.3)
    seen: list[list[int]] = []

    def slow(keys: list[str]) -> dict[str, str]:
        for _ in range(4):
            time.sleep(0.2)
            seen.append([redis_server.client().pttl(lease_key(namespace, k)) for k in keys])
        return {k: k.upper() for k in keys}

    assert cache.get_or_load_many(["a", "b", "c"], slow, ttl=30) == {"a": "A", "b": "B", "c": "C"}
    assert all(ttl > 0 for ttls in seen for ttl in ttls)  # held through a 0.8 s load
    assert cache.stats()["fills_refused"] == 0
    assert make_cache().get_many(["a", "b", "c"]) == {"a": "A", "b": "B", "c": "C"}


def test_a_failed_bulk_load_gives_its_leases_back(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    """Also the leases of the keys a ``load_many`` left out: another process does not wait
    them out."""
    cache, other = make_cache(lease_ttl=30), listening(make_cache(lease_ttl=30))
    client = redis_server.client()

    def broken(keys: list[str]) -> dict[str, str]:
        raise LookupError("db")

    with pytest.raises(LookupError):
        cache.get_or_load_many(["a", "b"], broken, ttl=30)
    assert client.exists(lease_key(namespace, "a"), lease_key(namespace, "b")) == 0
    with pytest.raises(CacheError):
        cache.get_or_load_many(["c", "d"], lambda keys: {"c": "C"}, ttl=30)
    assert client.exists(lease_key(namespace, "d")) == 0
    started = time.monotonic()
    assert other.get_or_load("d", lambda: "D", ttl=30) == "D"
    assert time.monotonic() - started < 1.0


def test_renewals_of_one_process_share_a_round_trip(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync loads of a process renew from one thread; the renewals due together go in one
    pipeline, so a slow Redis costs that thread one timeout a tick, not one per load."""
    from cachewise import redis as _redis

    cache = make_cache(lease_ttl=0.3)  # renewed every 0.1 s
    trips: list[int] = []  # RENEW calls per round trip, from the renewal thread

    def counting(op: Any, real: Callable[[Any], Any]) -> Any:
        if threading.current_thread().name == "cachewise-renewals":
            calls = op.calls if isinstance(op, _redis.RunPipeline) else [(op.name,)]
            trips.append(sum(call[0] == "renew" for call in calls))
        return real(op)

    for cls in (_redis.RunPipeline, _redis.RunScript):
        real = cls.call_sync
        monkeypatch.setattr(cls, "call_sync", lambda op, real=real: counting(op, real))

    def slow() -> str:
        time.sleep(0.7)
        return "v"

    threads = [in_thread(lambda k=k: cache.get_or_load(k, slow, ttl=30))[0] for k in "abcd"]
    for thread in threads:
        thread.join(10)
    assert cache.stats()["loads"] == 4 and cache.stats()["fills_refused"] == 0
    assert sum(trips) >= 16  # each of the 4 loads renewed at least 4 times
    assert len(trips) <= sum(trips) / 2  # mostly together


def test_a_failed_load_gives_the_lease_back(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = make_cache(lease_ttl=30)

    def broken() -> str:
        raise LookupError("db")

    with pytest.raises(LookupError):
        cache.get_or_load("k", broken, ttl=30)
    assert redis_server.client().exists(lease_key(namespace, "k")) == 0


def test_a_failed_load_wakes_the_waiters_of_other_processes(make_cache: MakeCache) -> None:
    a, b = make_cache(lease_ttl=30), listening(make_cache(lease_ttl=30))
    failing = Gate()

    def broken() -> str:
        failing()
        raise LookupError("db")

    def load_in_a() -> None:
        with pytest.raises(LookupError):
            a.get_or_load("k", broken, ttl=30)

    thread, _ = in_thread(load_in_a)
    assert failing.started.wait(10)
    got, after = woken_after(
        b, lambda: b.get_or_load("k", lambda: "b's", ttl=30), failing.release.set
    )
    thread.join(10)
    assert got == ["b's"] and b.stats()["loads"] == 1
    assert after < 1.0  # told the lease is back, not waiting 30 s


@pytest.mark.parametrize("outcome", ["fills", "fails"])
def test_a_flight_waiting_on_a_lease_of_its_own_process_is_woken(
    make_cache: MakeCache, namespace: str, outcome: str
) -> None:
    """A late invalidation event detaches a running load from its key, and the next read of
    the key waits on that load's lease. Events do not come back to their sender, so the load's
    own process wakes that waiter itself (it waited the lease out, 5 s here, before)."""
    cache = listening(make_cache(lease_ttl=5))
    slow = Gate("first")

    def load() -> str:
        value = slow()
        if outcome == "fails":
            raise LookupError("db")
        return str(value)

    def first() -> None:
        with contextlib.suppress(LookupError):
            cache.get_or_load("k", load, ttl=30)

    thread, _ = in_thread(first)
    assert slow.started.wait(10)
    # The invalidation was made in Redis before this load took its lease; its event is late.
    cache._engine._on_event(Invalidated("another-process", (f"{namespace}:{{k}}",)))
    read = lambda: cache.get_or_load("k", lambda: "second", ttl=30)  # noqa: E731
    got, after = woken_after(cache, read, slow.release.set)
    thread.join(10)
    assert got == (["first"] if outcome == "fills" else ["second"])
    assert after < 1.0


@pytest.mark.parametrize("by", ["key", "tag"])
def test_waiters_look_again_when_the_key_is_invalidated(make_cache: MakeCache, by: str) -> None:
    """An invalidation deletes the lease a waiter waits on: no fill will come, so it loads."""
    holder, waiting = make_cache(lease_ttl=5), listening(make_cache(lease_ttl=5))
    holder.set("other", 1, ttl=30)  # a tag index exists before the load
    slow = Gate("old")

    @holder.cached(ttl=30, tags=["t"], key=lambda: "k")
    def tagged() -> str:
        return str(slow())

    thread, _ = in_thread(tagged)
    assert slow.started.wait(10)
    invalidate = (
        (lambda: holder.invalidate("k")) if by == "key" else lambda: holder.invalidate_tags("t")
    )
    got, after = woken_after(
        waiting, lambda: waiting.get_or_load("k", lambda: "new", ttl=30), invalidate
    )
    assert got == ["new"] and after < 1.0
    slow.release.set()
    thread.join(10)


def test_waiting_for_a_lease_is_bounded(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = listening(make_cache(lease_wait_timeout=0.3))
    # A live holder that keeps its lease (a long lease standing in for renewals).
    assert 0.25 < load_past_a_lease(cache, redis_server, namespace, "busy-holder", 60_000) < 3.0
    assert cache.stats()["lease_wait_timeouts"] == 1
    # It loaded without the lease, so it did not write over the holder's coming fill.
    assert make_cache().get("k") is None
