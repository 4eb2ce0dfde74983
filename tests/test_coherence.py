"""L1 coherence across processes against a real redis-server: events reach every other L1 (on each
listener's own channel or the shared one), refreshes and fills carry the value, and what an L1
cannot vouch for it does not keep."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from cachewise import Cache, CacheError, InvalidationEvent
from cachewise.redis.keyspace import KeySpace

from . import _workers
from .redis_helpers import MakeCache, heard, listening
from .test_concurrency import wait_until


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


def test_pubsub_loss_empties_l1(make_cache: MakeCache, redis_server: Any) -> None:
    cache = listening(make_cache())
    cache.set("k", 1, ttl=30)
    assert cache.stats()["l1_size"] >= 1
    redis_server.client().client_kill_filter(_type="pubsub")
    wait_until(lambda: cache.stats()["l1_flushes"] >= 1, timeout=5)
    assert cache._engine.l1.held(f"{cache.namespace}:{{k}}") is None
    listener = cache._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None and listener.ready.wait(5)  # and it comes back


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


def test_a_refresh_costs_one_publish_and_no_read_before_itslease_key(
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
