"""The Redis tier against a real redis-server: two tiers, leases, no stale sets, coherence."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from cachewise import Cache, CacheError, ConfigTypeError, ConfigValueError, InvalidationEvent
from cachewise.events import Invalidated
from cachewise.redis.keyspace import KeySpace

from . import _workers
from .conftest import Gate, in_thread
from .test_concurrency import wait_until

MakeCache = Callable[..., Cache]


def _lease(namespace: str, key: str) -> str:
    """The lease key of explicit key ``key``."""
    space = KeySpace(namespace)
    return space.lease(space.entry(key))


def listening(cache: Cache) -> Cache:
    """Wait until ``cache`` hears its namespace's events (its first Redis call starts that)."""
    cache.get("~warm-up")
    listener = cache._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None and listener.ready.wait(5)
    return cache


def woken_after(
    cache: Cache, read: Callable[[], Any], event: Callable[[], None]
) -> tuple[list[Any], float]:
    """Run ``read`` in a thread until it waits on a lease, then ``event()``: what ``read``
    returned, and how long after ``event`` it did."""
    waiter, got = in_thread(read)
    wait_until(lambda: cache.stats()["lease_waits"] >= 1)
    at = time.monotonic()
    event()
    waiter.join(10)
    return got, time.monotonic() - at


def test_a_value_loaded_in_one_process_is_an_l2_hit_in_another(make_cache: MakeCache) -> None:
    a, b = make_cache(), make_cache()
    calls: list[str] = []

    def load() -> dict[str, Any]:
        calls.append("a")
        return {"name": "ada", "tags": [1, 2]}

    assert a.get_or_load("user:1", load, ttl=30) == {"name": "ada", "tags": [1, 2]}
    assert b.get_or_load("user:1", load, ttl=30) == {"name": "ada", "tags": [1, 2]}
    assert calls == ["a"]
    assert b.stats()["l2_hits"] == 1 and b.stats()["loads"] == 0
    assert b.get("user:1") == {"name": "ada", "tags": [1, 2]}  # now from b's own L1
    assert b.stats()["l2_hits"] == 1


def test_l1_copy_never_outlives_the_l2_entry(make_cache: MakeCache) -> None:
    a, b = make_cache(ttl_jitter=0), make_cache(ttl_jitter=0)
    a.set("k", "v", ttl=1.0)
    time.sleep(0.4)
    assert b.get("k") == "v"
    entry = b._engine.explicit["k"]
    remaining = entry.fresh_until - b._engine.clock()
    assert remaining < 0.65  # what was left of the shared TTL, not a new full second


def test_every_key_written_has_a_ttl(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = make_cache()

    @cache.cached(ttl=30, stale_ttl=60, tags=lambda x: [f"t{x % 2}"])
    def f(x: int) -> int:
        return x

    for i in range(5):
        f(i)
    cache.set("plain", 1, ttl=5)
    cache.get_or_load_many(["m1", "m2"], lambda keys: {k: k for k in keys}, ttl=5)
    client = redis_server.client()
    keys = [k for k in client.scan_iter(f"{namespace}*")]
    assert len(keys) >= 10  # values and tag indexes
    assert all(client.pttl(k) > 0 for k in keys)


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


def test_a_dead_lease_holder_is_taken_over(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = listening(make_cache(lease_ttl=0.3))
    # A holder that took the lease and died: nobody will renew or fill it.
    redis_server.client().set(_lease(namespace, "k"), "dead-holder", px=300)
    started = time.monotonic()
    assert cache.get_or_load("k", lambda: "mine", ttl=30) == "mine"
    waited = time.monotonic() - started
    assert 0.2 < waited < 3.0
    assert cache.stats()["loads"] == 1


def test_long_loads_renew_their_lease(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = make_cache(lease_ttl=0.3)
    seen: list[int] = []

    def slow() -> str:
        for _ in range(4):
            time.sleep(0.2)
            seen.append(redis_server.client().pttl(_lease(namespace, "k")))
        return "v"

    assert cache.get_or_load("k", slow, ttl=30) == "v"
    assert all(ttl > 0 for ttl in seen)  # never expired during a 0.8 s load with a 0.3 s lease
    assert redis_server.client().exists(_lease(namespace, "k")) == 0  # given back after the fill


def test_long_bulk_loads_renew_their_leases(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = make_cache(lease_ttl=0.3)
    seen: list[list[int]] = []

    def slow(keys: list[str]) -> dict[str, str]:
        for _ in range(4):
            time.sleep(0.2)
            seen.append([redis_server.client().pttl(_lease(namespace, k)) for k in keys])
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
    assert client.exists(_lease(namespace, "a"), _lease(namespace, "b")) == 0
    with pytest.raises(CacheError):
        cache.get_or_load_many(["c", "d"], lambda keys: {"c": "C"}, ttl=30)
    assert client.exists(_lease(namespace, "d")) == 0
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
    assert redis_server.client().exists(_lease(namespace, "k")) == 0


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


def test_invalidation_reaches_other_l1s(make_cache: MakeCache) -> None:
    a, b = make_cache(), listening(make_cache())
    events: list[InvalidationEvent] = []
    heard = threading.Event()

    @b.on_invalidate
    def on_event(event: InvalidationEvent) -> None:
        events.append(event)
        heard.set()

    a.set("k", 1, ttl=30)
    assert b.get("k") == 1
    a.invalidate("k")
    assert heard.wait(2)
    assert b.get("k") is None
    assert events[0].origin == "remote" and events[0].keys == (f"{b.namespace}:{{k}}",)


def heard(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The events ``cache``'s listener receives from now on, its own or others'."""
    listener = cache._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None
    events: list[Any] = []
    dispatch = listener._dispatch

    def counting(data: bytes) -> None:
        events.append(msgpack.unpackb(data))
        dispatch(data)

    monkeypatch.setattr(listener, "_dispatch", counting)
    return events


def test_a_process_is_not_woken_by_its_own_events(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each listener has a channel of its own, and events go to every channel but the
    sender's: a writer's listener thread does not wake for (and compete with) its own writes."""
    a, b = listening(make_cache()), listening(make_cache())
    mine, theirs = heard(a, monkeypatch), heard(b, monkeypatch)
    assert b.get_or_load("k", lambda: "old", ttl=60) == "old"
    a.set("k", "new", ttl=60)
    a.get_or_load("filled", lambda: 1, ttl=60)
    a.invalidate("filled")
    wait_until(lambda: len(theirs) >= 3)
    assert b.get_or_load("k", lambda: "loaded", ttl=60) == "new"
    assert [e[0] for e in theirs[-3:]] == ["f", "f", "i"]
    time.sleep(0.2)
    origin = a._engine.backend.origin  # type: ignore[union-attr]
    assert [e[0] for e in mine] == ["f"] and mine[0][1] != origin  # b's fill, and none of a's


def test_events_fall_back_to_the_shared_channel_when_the_registry_is_lost(
    make_cache: MakeCache, redis_server: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the registry of listeners flushed, events go to the channel every listener hears,
    so none is missed; an unregistered subscriber of that channel (an older client) hears
    them too. The next registration restores the channels of their own."""
    a, b = listening(make_cache()), listening(make_cache())
    origin = a._engine.backend.origin  # type: ignore[union-attr]
    in_a, in_b = heard(a, monkeypatch), heard(b, monkeypatch)

    def echoes() -> int:
        return sum(e[1] == origin for e in in_a)

    def set_in_a_and_read_in_b(value: str) -> None:
        before = len(in_b)
        a.set("k", value, ttl=60)
        wait_until(lambda: len(in_b) > before)
        assert b.get_or_load("k", lambda: "loaded", ttl=60) == value

    admin = redis_server.client()
    outsider = admin.pubsub()
    outsider.subscribe(KeySpace(namespace).channel)
    assert outsider.get_message(timeout=5)["type"] == "subscribe"
    assert b.get_or_load("k", lambda: "old", ttl=60) == "old"
    assert (
        admin.exists(KeySpace(namespace).channel) == 1
        and admin.pttl(KeySpace(namespace).channel) > 0
    )
    set_in_a_and_read_in_b("new")  # the outsider is not registered: every listener hears this
    assert outsider.get_message(timeout=5)["type"] == "message"
    wait_until(lambda: echoes() == 1)  # a heard its own event (and skipped it)
    outsider.close()
    admin.delete(KeySpace(namespace).channel)  # the registry, lost
    set_in_a_and_read_in_b("newer")
    wait_until(lambda: echoes() == 2)
    for cache in (a, b):
        cache._engine.backend.listener._register()  # type: ignore[union-attr]
    set_in_a_and_read_in_b("newest")
    time.sleep(0.2)
    assert echoes() == 2
    assert admin.zscore(KeySpace(namespace).channel, origin) is not None
    a.close()  # leaves the registry (from its listener's thread, as that ends)
    wait_until(lambda: admin.zscore(KeySpace(namespace).channel, origin) is None)


def test_past_eight_listeners_events_go_to_the_shared_channel(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUBLISH per listener costs Redis more than one shared PUBLISH: past 8 listeners,
    every listener hears every event, the sender's own included."""
    caches = [listening(make_cache()) for _ in range(9)]
    writer, reader = caches[0], caches[-1]
    origin = writer._engine.backend.origin  # type: ignore[union-attr]
    in_writer = heard(writer, monkeypatch)
    assert reader.get_or_load("k", lambda: "old", ttl=60) == "old"
    writer.set("k", "new", ttl=60)
    wait_until(lambda: any(e[1] == origin for e in in_writer))
    wait_until(lambda: reader.get_or_load("k", lambda: "loaded", ttl=60) == "new")


def test_a_write_replaces_other_l1_copies(make_cache: MakeCache) -> None:
    a, b = make_cache(), listening(make_cache())
    a.set("k", 1, ttl=30)
    assert b.get("k") == 1
    a.set("k", 2, ttl=30)
    wait_until(lambda: b.get("k") == 2, timeout=2)


def test_tags_across_processes(make_cache: MakeCache) -> None:
    a, b = make_cache(), listening(make_cache())

    def member(team: int, user: int) -> str:
        return f"{team}/{user}"

    fa = a.cached(ttl=30, tags=lambda team, user: [f"team:{team}"])(member)
    fb = b.cached(ttl=30, tags=lambda team, user: [f"team:{team}"])(member)
    for user in range(3):
        fa(9, user)
        assert fb(9, user) == f"9/{user}"
    fa(8, 0)
    a.invalidate_tags("team:9")
    wait_until(lambda: b.stats()["l1_size"] <= 2, timeout=2)  # ~warm-up and team 8's entry
    c = make_cache()
    assert c.get_many([fa.key(9, 0)[len(a.namespace) + 1 :]]) == {}
    assert c.stats()["l2_hits"] == 0


def test_get_many_is_l1_then_one_mget(make_cache: MakeCache) -> None:
    a, b = make_cache(), make_cache()
    for i in range(10):
        a.set(f"k{i}", i, ttl=30)
    b.set("k0", "local", ttl=30)
    found = b.get_many([f"k{i}" for i in range(12)])
    assert found == {"k0": "local", **{f"k{i}": i for i in range(1, 10)}}
    assert b.stats()["l2_hits"] == 9


def test_get_or_load_many_loads_only_what_no_tier_has(make_cache: MakeCache) -> None:
    a, b = make_cache(), make_cache()
    a.set("k1", 1, ttl=30)
    asked: list[list[str]] = []

    def load_many(keys: list[str]) -> dict[str, Any]:
        asked.append(sorted(keys))
        return {k: k.upper() for k in keys}

    assert b.get_or_load_many(["k1", "k2", "k3"], load_many, ttl=30) == {
        "k1": 1, "k2": "K2", "k3": "K3"}  # fmt: skip
    assert asked == [["k2", "k3"]]
    c = make_cache()
    assert c.get_many(["k2", "k3"]) == {"k2": "K2", "k3": "K3"}


def test_a_bulk_load_costs_three_round_trips(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MGET, the leases, the fills: each one round trip (a pipeline of script objects would
    ask SCRIPT EXISTS first, every time)."""
    import redis.connection

    cache = make_cache()
    cache.get("~warm-up")  # set up: clock, scripts, listener
    sent: list[bytes] = []
    send = redis.connection.AbstractConnection.send_packed_command
    me = threading.get_ident()

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == me:
            sent.append(b"".join(command) if isinstance(command, list) else command)
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    loaded = cache.get_or_load_many(["a", "b", "c"], lambda keys: {k: k for k in keys}, ttl=30)
    assert loaded == {"a": "a", "b": "b", "c": "c"}
    assert len(sent) == 3, [command[:40] for command in sent]


@pytest.mark.parametrize("how", ["one", "bulk"])
def test_scripts_flushed_from_the_server_are_loaded_again(
    make_cache: MakeCache, redis_server: Any, how: str
) -> None:
    cache = make_cache()
    cache.get("~warm-up")
    redis_server.client().script_flush()
    if how == "one":
        assert cache.get_or_load("k", lambda: "v", ttl=30) == "v"
    else:
        loaded = cache.get_or_load_many(["a", "b"], lambda keys: {k: k for k in keys}, ttl=30)
        assert loaded == {"a": "a", "b": "b"}
    assert cache.stats()["redis_errors"] == 0
    assert make_cache().get_many(["k", "a", "b"]) == (
        {"k": "v"} if how == "one" else {"a": "a", "b": "b"}
    )


def test_undecodable_bytes_are_a_counted_miss_and_get_overwritten(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    client = redis_server.client()
    cache = make_cache()
    for raw in (b"\xc1garbage", msgpack.packb([99, "v", 0, 0, 0, []]), msgpack.packb("short")):
        client.set(f"{namespace}:{{k}}", raw, px=30_000)
        assert cache.get_or_load("k", lambda: "fresh", ttl=30) == "fresh"
        cache.invalidate("k")
    assert cache.stats()["decode_errors"] == 3
    cache.get_or_load("k", lambda: "fresh", ttl=30)
    assert make_cache().get("k") == "fresh"


def test_unserializable_values_are_a_clear_error_and_nothing_is_stored(
    make_cache: MakeCache,
) -> None:
    cache = make_cache()

    class Opaque:
        pass

    with pytest.raises(CacheError, match="Opaque") as err:
        cache.set("k", {"a": Opaque()}, ttl=30)
    assert isinstance(err.value, TypeError)
    assert cache.get("k") is None and make_cache().get("k") is None


def test_unreachable_redis_fails_open(namespace: str) -> None:
    from .redis_server import free_port

    cache = Cache(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace, connect_timeout=0.2)
    calls: list[int] = []

    def load() -> int:
        calls.append(1)
        return 7

    assert cache.get_or_load("k", load, ttl=30) == 7
    assert cache.get_or_load("k", load, ttl=30) == 7  # from L1
    cache.set("j", 1, ttl=30)
    cache.invalidate("j")
    assert calls == [1] and cache.stats()["redis_errors"] >= 1
    cache.close()


@pytest.mark.parametrize(
    "spec, exc",
    [("nosuchscheme://x", ConfigValueError), (42, ConfigTypeError), (("a", "b"), ConfigTypeError)],
)
def test_bad_redis_arguments(spec: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="redis="):
        Cache(spec)


@pytest.mark.parametrize("namespace", ["a:b", "a#b", "", "x" * 65, "a b", "é"])
def test_namespaces_that_could_collide_are_refused(namespace: str) -> None:
    with pytest.raises(ConfigValueError, match="namespace"):
        Cache(namespace=namespace)


def test_clients_given_by_the_user(redis_server: Any, namespace: str) -> None:
    import redis
    import redis.asyncio

    sync = redis.Redis(port=redis_server.port)
    for spec in (sync, redis.asyncio.Redis(port=redis_server.port),
                 (sync, redis.asyncio.Redis(port=redis_server.port))):  # fmt: skip
        cache = Cache(spec, namespace=namespace)
        cache.set("k", "v", ttl=5)

        async def read(c: Cache = cache) -> Any:
            return await c.aget("k")

        assert asyncio.run(read()) == "v"
        cache.close()


def test_close_leaves_the_users_pool_without_a_subscription(
    redis_server: Any, namespace: str
) -> None:
    """The listener's subscription is closed by its own thread before ``close`` returns: a
    subscribed connection left in the user's pool would be handed to the user's next command."""
    import redis

    name = f"user-{namespace[-6:]}"
    sync = redis.Redis(port=redis_server.port, client_name=name)
    for _ in range(10):
        cache = listening(Cache(sync, namespace=namespace))
        cache.set("k", "v", ttl=5)
        cache.close()
        assert sync.ping() is True
    time.sleep(1.2)  # longer than the listener's poll: a thread left reading has woken
    assert [c for c in sync.client_list(_type="pubsub") if c.get("name") == name] == []
    sync.close()


def test_pubsub_loss_empties_l1(make_cache: MakeCache, redis_server: Any) -> None:
    cache = listening(make_cache())
    cache.set("k", 1, ttl=30)
    assert cache.stats()["l1_size"] >= 1
    redis_server.client().client_kill_filter(_type="pubsub")
    wait_until(lambda: cache.stats()["l1_flushes"] >= 1, timeout=5)
    assert cache._engine.l1.held(f"{cache.namespace}:{{k}}") is None
    listener = cache._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None and listener.ready.wait(5)  # and it comes back


# -- asyncio --------------------------------------------------------------------------------


async def test_async_two_tiers_and_single_flight(make_cache: MakeCache) -> None:
    a, b = make_cache(), make_cache()
    release = asyncio.Event()
    loads: list[int] = []

    async def slow() -> str:
        loads.append(1)
        await release.wait()
        return "v"

    first = asyncio.ensure_future(a.aget_or_load("k", slow, ttl=30))
    others = [asyncio.ensure_future(b.aget_or_load("k", slow, ttl=30)) for _ in range(20)]
    # Whichever cache took the lease first loads; the other waits for its fill.
    waits = lambda: a.stats()["lease_waits"] + b.stats()["lease_waits"]  # noqa: E731
    deadline = time.monotonic() + 10
    while not loads or waits() < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    release.set()
    assert await first == "v"
    assert await asyncio.gather(*others) == ["v"] * 20
    assert loads == [1]


async def test_async_stale_set_race(make_cache: MakeCache) -> None:
    a, b = make_cache(), make_cache()
    started, release = asyncio.Event(), asyncio.Event()

    async def old() -> str:
        started.set()
        await release.wait()
        return "old"

    task = asyncio.ensure_future(a.aget_or_load("k", old, ttl=30))
    await started.wait()
    await b.ainvalidate("k")
    release.set()
    assert await task == "old"
    assert await make_cache().aget("k") is None


async def test_async_stale_value_is_served_while_one_process_refreshes(
    make_cache: MakeCache,
) -> None:
    a, b = make_cache(ttl_jitter=0), make_cache(ttl_jitter=0)
    versions = iter(range(100))

    async def load() -> int:
        return next(versions)

    assert await a.aget_or_load("k", load, ttl=0.2, stale_ttl=30) == 0
    await asyncio.sleep(0.3)  # stale in L2 now
    assert await b.aget_or_load("k", load, ttl=0.2, stale_ttl=30) == 0  # served at once
    for _ in range(200):
        if await make_cache().aget("k") == 1:
            break
        await asyncio.sleep(0.01)
    assert await make_cache().aget("k") == 1


def test_waiting_for_a_lease_is_bounded(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    cache = listening(make_cache(lease_wait_timeout=0.3))
    # A live holder that keeps its lease (a long lease standing in for renewals).
    redis_server.client().set(_lease(namespace, "k"), "busy-holder", px=60_000)
    started = time.monotonic()
    assert cache.get_or_load("k", lambda: "mine", ttl=30) == "mine"
    assert 0.25 < time.monotonic() - started < 3.0
    assert cache.stats()["lease_wait_timeouts"] == 1
    # It loaded without the lease, so it did not write over the holder's coming fill.
    assert make_cache().get("k") is None


def test_one_refresh_across_processes_while_stale_is_served(make_cache: MakeCache) -> None:
    caches = [listening(make_cache(ttl_jitter=0, early_refresh_beta=0)) for _ in range(3)]
    gate = threading.Event()
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        if len(loads) > 1:
            assert gate.wait(10)
        return len(loads)

    assert caches[0].get_or_load("k", load, ttl=0.3, stale_ttl=30) == 1
    for cache in caches[1:]:
        assert cache.get_or_load("k", load, ttl=0.3, stale_ttl=30) == 1
    time.sleep(0.35)  # stale everywhere
    for _ in range(5):
        for cache in caches:
            assert cache.get_or_load("k", load, ttl=0.3, stale_ttl=30) == 1  # at once
    wait_until(lambda: len(loads) == 2)
    gate.set()
    wait_until(lambda: all(c.get("k") == 2 for c in caches), timeout=5)
    assert len(loads) == 2  # one refresh for the three processes


def test_a_refresh_costs_one_publish_and_no_read_before_its_lease(
    make_cache: MakeCache, redis_server: Any
) -> None:
    """The fleet's steady state: a refresh of a hot key goes to Redis as its lease script and
    its store script, and its event reaches every other process in one ``PUBLISH`` on the
    shared channel, however many listen (not one per listener), with the new value in it."""
    caches = [listening(make_cache(ttl_jitter=0, early_refresh_beta=0)) for _ in range(4)]
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        return len(loads)

    def held(cache: Cache) -> list[Any]:
        return [e.value for e in cache._engine.l1.entries() if e.l1_key == "k"]

    for cache in caches:
        # Held in every L1 (a copy read while the fill's event was on its way is not kept).
        wait_until(
            lambda cache=cache: (
                cache.get_or_load("k", load, ttl=1, stale_ttl=30) == 1 and held(cache) == [1]
            )
        )
    time.sleep(1.05)  # stale everywhere
    admin = redis_server.client()

    def calls() -> dict[str, int]:
        stats = admin.info("commandstats")
        return {k[len("cmdstat_") :]: v["calls"] for k, v in stats.items() if k != "cmdstat_info"}

    before = calls()
    assert caches[0].get_or_load("k", load, ttl=1, stale_ttl=30) == 1  # stale, refreshes
    # Every process' copy is replaced: the others' from the event, with no Redis call.
    for cache in caches:
        wait_until(lambda cache=cache: held(cache) == [2])  # type: ignore[misc]
    after = calls()
    spent = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
    assert spent.get("publish") == 1, spent
    assert spent.get("evalsha") == 2, spent  # the lease, the store
    assert spent.get("get") == 2, spent  # the lease script's look at the value and at the lease
    assert len(loads) == 2


def test_early_refresh_reloads_through_the_lease(make_cache: MakeCache) -> None:
    # A 20 ms load, beta 100, 2 s TTL: each read refreshes early with p = exp(-2 / 2) ~ 0.37.
    cache = make_cache(ttl_jitter=0, early_refresh_beta=100.0)
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        time.sleep(0.02)
        return len(loads)

    assert cache.get_or_load("k", load, ttl=2) == 1
    time.sleep(1.05)  # early refresh draws start half-way through the fresh life
    for _ in range(60):
        assert cache.get_or_load("k", load, ttl=2) == 1  # the old value is served meanwhile
        if cache.stats()["early_refreshes"]:
            break
    wait_until(lambda: len(loads) >= 2, timeout=5)
    wait_until(lambda: make_cache().get("k") == 2, timeout=5)  # the refresh went to Redis


def test_values_over_the_size_limit_stay_in_this_process(make_cache: MakeCache) -> None:
    a, b = make_cache(max_value_bytes=10_000), listening(make_cache(max_value_bytes=10_000))
    big = "x" * 20_000
    a.set("k", "small", ttl=60)
    assert b.get("k") == "small"
    assert a.get_or_load("big", lambda: big, ttl=60) == big  # the caller gets it
    assert a.get("big") == big  # and this L1 keeps it
    assert b.get("big") is None  # but Redis does not
    a.set("k", big, ttl=60)  # an older shared copy must not survive the new value
    wait_until(lambda: b.get("k") is None)
    assert a.stats()["oversize_values"] == 2
    with pytest.raises(CacheError, match="max_value_bytes"):

        @a.cached(ttl=60)
        def row(x: int) -> str:
            return ""

        a.write_behind(row, args=lambda x, v: x, value=lambda x, v: v)(_workers.store_row)(1, big)


def test_large_values_travel_without_the_event(make_cache: MakeCache) -> None:
    a, b = make_cache(), listening(make_cache())
    b.set("k", "old", ttl=60)
    large = {"blob": "y" * 100_000}  # over the event's limit, under the value limit
    a.set("k", large, ttl=60)
    wait_until(lambda: b._engine.l1.held(f"{b.namespace}:{{k}}") is None)  # copy dropped
    assert b.get("k") == large  # read from Redis instead


def test_undecodable_bytes_are_logged_once_per_key(
    make_cache: MakeCache, redis_server: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(l1_maxsize=0)
    redis_server.client().set(f"{namespace}:{{bad}}", b"\xc1 not msgpack", px=60_000)
    for _ in range(3):
        assert cache.get("bad") is None
    warnings = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(warnings) == 1 and cache.stats()["decode_errors"] == 3
    assert cache.get_or_load("bad", lambda: "fixed", ttl=60) == "fixed"  # overwritten
    assert cache.get("bad") == "fixed"


def test_rich_values_survive_the_shared_tier(make_cache: MakeCache) -> None:
    a, b = make_cache(), make_cache()
    value = {
        "point": (1, 2),
        "tags": {"a", "b"},
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "price": decimal.Decimal("9.99"),
        "id": uuid.UUID(int=7),
        "raw": b"\x00\x01",
    }
    a.set("k", value, ttl=60)
    assert b.get("k") == value and type(b.get("k")["point"]) is tuple


def test_what_is_read_before_the_first_subscription_is_not_kept(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process' first reads run while its listener is still subscribing: an invalidation sent
    in between never reaches it, so what those reads kept in L1 is dropped once it listens."""
    import redis.client

    writer = make_cache()
    writer.set("k", "old", ttl=60)
    subscribed = threading.Event()
    release = threading.Event()
    original = redis.client.PubSub.subscribe

    def slow_subscribe(self: Any, *args: Any, **kwargs: Any) -> Any:
        assert release.wait(10)
        result = original(self, *args, **kwargs)
        subscribed.set()
        return result

    monkeypatch.setattr(redis.client.PubSub, "subscribe", slow_subscribe)
    reader = make_cache()
    assert reader.get_or_load("k", lambda: "loaded", ttl=60) == "old"  # read, kept in L1
    writer.set("k", "new", ttl=60)  # its event is published before the reader listens
    release.set()
    assert subscribed.wait(5)
    listener = reader._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None and listener.ready.wait(5)
    assert reader.get_or_load("k", lambda: "loaded", ttl=60) == "new"


def test_reads_wait_for_a_slow_first_subscription_once(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription that takes longer than the first read's wait: that read goes on without
    it (a sync and an async caller alike), the reads after it do not wait again, and the L1
    is emptied when the subscription is made."""
    import redis.client

    release = threading.Event()
    original = redis.client.PubSub.subscribe

    def slow_subscribe(self: Any, *args: Any, **kwargs: Any) -> Any:
        assert release.wait(10)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.PubSub, "subscribe", slow_subscribe)
    reader = make_cache(socket_timeout=0.1)  # waits at most 2 x 0.05 s for the subscription
    started = time.monotonic()
    assert reader.get_or_load("k", lambda: "v", ttl=60) == "v"
    assert asyncio.run(reader.aget_or_load("k2", lambda: "v2", ttl=60)) == "v2"
    for i in range(20):
        reader.get(f"other{i}")
    assert time.monotonic() - started < 1.0  # one wait of 0.1 s, not one per read
    assert reader.stats()["l1_size"] == 2
    release.set()
    listener = reader._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None and listener.ready.wait(5)
    assert reader.stats()["l1_size"] == 0 and reader.stats()["l1_flushes"] == 0
