"""The lone-caller fast path of shared-tier reads (one GET, no flight, no plan): served and
counted as the full path would, and never leaving an older value in L1 when an invalidation or
a write races its GET."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import redis

from cachewise import Cache, codec
from cachewise.codec import Envelope
from cachewise.events import Event, decode
from cachewise.redis import Fetch

from .conftest import in_thread
from .test_concurrency import wait_until

MakeCache = Callable[..., Cache]


def _never() -> Any:
    raise AssertionError("the value is shared: nothing should load")


def _warm(cache: Cache) -> None:
    """A first call sets the tier up (clock, listener): the fast path applies from then on, and
    L1 keeps what is read once the listener is subscribed."""
    cache.get("~warm-up")
    listener = cache._engine.backend.listener  # type: ignore[union-attr]
    assert listener is not None and listener.ready.wait(5)


def test_a_shared_hit_is_served_counted_and_kept(make_cache: MakeCache) -> None:
    writer, reader = make_cache(), make_cache()
    writer.set("k", {"v": 1}, ttl=60)
    _warm(reader)
    assert reader.get_or_load("k", _never, ttl=60) == {"v": 1}
    stats = reader.stats()
    assert (stats["misses"], stats["l2_hits"], stats["l1_size"]) == (1, 1, 1)
    assert stats["miss_latency"]["count"] == 1 and stats["miss_latency"]["p50"] > 0
    assert reader.get_or_load("k", _never, ttl=60) == {"v": 1}  # now from L1
    assert reader.stats()["l2_hits"] == 1
    assert reader.stats()["miss_latency"]["count"] == 1  # L1 hits are not timed
    assert reader.get_or_load("absent", lambda: "loaded", ttl=60) == "loaded"
    assert reader.stats()["miss_latency"]["count"] == 2  # a miss after the fast path's GET


def test_async_shared_hit(make_cache: MakeCache) -> None:
    writer, reader = make_cache(), make_cache(l1_maxsize=0)
    writer.set("k", [1, 2], ttl=60)

    async def main() -> list[Any]:
        await asyncio.to_thread(_warm, reader)
        return [
            await reader.aget_or_load("k", _never, ttl=60),
            await reader.aget_many(["k", "absent"]),
        ]

    assert asyncio.run(main()) == [[1, 2], {"k": [1, 2]}]
    assert reader.stats()["l2_hits"] == 2


def test_each_loop_is_served_its_own_client(make_cache: MakeCache) -> None:
    """The client a loop was served last is remembered, never handed to another loop."""
    reader = make_cache(l1_maxsize=0)
    reader.set("k", 1, ttl=60)
    backend = reader._engine.backend
    assert backend is not None

    async def read() -> tuple[Any, Any]:
        client = backend.async_client()
        assert backend.async_client() is client  # the remembered one
        return await reader.aget_or_load("k", _never, ttl=60), client

    first_loop, second_loop = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        value, first = first_loop.run_until_complete(read())
        assert value == 1
        value, second = second_loop.run_until_complete(read())  # the first loop still alive
        assert value == 1 and second is not first
        assert first_loop.run_until_complete(read())[1] is first
    finally:
        first_loop.close()
        second_loop.close()


def _racing(cache: Cache, race: Callable[[], None], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``race`` happen after ``cache``'s next fast-path GET got its reply (on the client
    itself: the compiled fast path does not go through ``Fetch``)."""
    client = cache._engine.backend.sync_client()  # type: ignore[union-attr]
    get = client.get

    def get_then_race(key: str) -> Any:
        got = get(key)
        race()
        return got

    monkeypatch.setattr(client, "get", get_then_race, raising=False)


def _event(kind: str, *fields: Any) -> Event:
    """An event as another process' listener would hand it over (decoded from its wire form)."""
    event = decode(msgpack.packb([kind, "another-process", *fields], use_bin_type=True))
    assert event is not None
    return event


@pytest.mark.parametrize("race", ["invalidate", "set", "remote-invalidation", "remote-fill"])
@pytest.mark.parametrize("how", ["get_or_load", "get_many"])
def test_a_read_racing_a_change_keeps_nothing_older_in_l1(
    make_cache: MakeCache, race: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, reader = make_cache(), make_cache()
    writer.set("k", "old", ttl=60)
    _warm(reader)
    engine = reader._engine
    full = reader._target("k").full_key
    new = codec.pack(Envelope("new", 2**62, 2**62, 1, ()), "k")
    changes: dict[str, Callable[[], None]] = {
        "invalidate": lambda: reader.invalidate("k"),
        "set": lambda: reader.set("k", "new", ttl=60),
        "remote-invalidation": lambda: engine._on_event(_event("i", [full], [])),
        "remote-fill": lambda: engine._on_event(_event("f", full, new)),
    }
    _racing(reader, changes[race], monkeypatch)
    if how == "get_or_load":
        assert reader.get_or_load("k", _never, ttl=60) == "old"  # what Redis held when read
    else:
        assert reader.get_many(["k"]) == {"k": "old"}
    held = engine.explicit.get("k")
    assert held is None or held.value == "new"


def test_redis_failing_on_the_fast_path_is_counted_once(make_cache: MakeCache) -> None:
    cache = make_cache()
    _warm(cache)
    client = cache._engine.backend.sync_client()  # type: ignore[union-attr]

    def down(*args: Any) -> Any:
        raise redis.ConnectionError("refused")

    client.get = down  # type: ignore[method-assign]
    client.mget = down  # type: ignore[method-assign]
    assert cache.get_or_load("k", lambda: "loaded", ttl=60) == "loaded"
    assert cache.get_many(["a", "b"]) == {}
    stats = cache.stats()
    assert stats["redis_errors"] == 2
    assert stats["loads_without_redis"] == 1
    assert cache._engine.backend.breaker.failures == 2  # type: ignore[union-attr]


def test_an_undecodable_entry_is_counted_once_and_loaded(make_cache: MakeCache) -> None:
    cache = make_cache()
    _warm(cache)
    client = cache._engine.backend.sync_client()  # type: ignore[union-attr]
    client.set(cache._target("k").full_key, b"\xc1 not msgpack", ex=60)
    assert cache.get_or_load("k", lambda: "loaded", ttl=60) == "loaded"
    assert cache.stats()["decode_errors"] == 1


def test_a_stale_shared_value_is_served_and_refreshed(make_cache: MakeCache) -> None:
    writer, reader = make_cache(), make_cache()
    writer.get_or_load("k", lambda: "old", ttl=0.05, stale_ttl=60)
    _warm(reader)
    time.sleep(0.1)
    assert reader.get_or_load("k", lambda: "new", ttl=60, stale_ttl=60) == "old"
    deadline = time.monotonic() + 5
    while reader.stats()["refreshes"] < 1 or writer.get("k") != "new":
        assert time.monotonic() < deadline
        time.sleep(0.01)


class _SlowGets:
    """Wraps a client's GET: counts calls, and holds the first one until ``release``."""

    def __init__(self, client: Any, fail: BaseException | None = None) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail
        self._get = client.get
        client.get = self

    def __call__(self, name: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            self.started.set()
            assert self.release.wait(10)
            if self.fail is not None:
                raise self.fail
        return self._get(name)


@pytest.mark.parametrize("shared", [True, False], ids=["hit", "cold"])
def test_callers_arriving_during_the_fast_get_wait_for_it(
    make_cache: MakeCache, shared: bool
) -> None:
    writer, reader = make_cache(), make_cache(l1_maxsize=0)
    if shared:
        writer.set("k", "row", ttl=60)
    _warm(reader)
    gets = _SlowGets(reader._engine.backend.sync_client())  # type: ignore[union-attr]
    loads: list[int] = []

    def load() -> str:
        loads.append(1)
        return "row"

    first, results = in_thread(lambda: reader.get_or_load("k", load, ttl=60))
    assert gets.started.wait(5)
    herd = [in_thread(lambda: reader.get_or_load("k", load, ttl=60)) for _ in range(5)]
    wait_until(lambda: reader.stats()["coalesced_waits"] == 5)
    gets.release.set()
    for thread, out in [(first, results), *herd]:
        thread.join(10)
        assert out == ["row"]
    assert gets.calls == 1  # one GET for the whole herd
    assert len(loads) == (0 if shared else 1)


@pytest.mark.timeout(30)
def test_sync_code_on_the_loop_never_waits_for_that_loops_fast_get(make_cache: MakeCache) -> None:
    """A task's fast-path GET is under way; sync code on the loop's thread then reads the key.
    Waiting for the GET's caller to settle it would block the loop, which must deliver the
    reply: it loads by itself instead."""
    writer, reader = make_cache(), make_cache()
    writer.set("k", "shared", ttl=60)
    _warm(reader)

    async def main() -> list[Any]:
        async def sync_beside() -> Any:
            await asyncio.sleep(0)  # the task below has sent its GET and awaits the reply
            assert reader._target("k").full_key in reader._engine.probing
            return reader.get_or_load("k", lambda: "own", ttl=60)

        return await asyncio.gather(reader.aget_or_load("k", _never, ttl=60), sync_beside())

    assert asyncio.run(main()) == ["shared", "own"]
    assert reader.stats()["sync_loads_on_loop"] == 1


def test_callers_start_over_when_the_fast_get_is_abandoned(make_cache: MakeCache) -> None:
    class Interrupted(BaseException):
        pass

    reader = make_cache(l1_maxsize=0)
    _warm(reader)
    gets = _SlowGets(reader._engine.backend.sync_client(), Interrupted())  # type: ignore[union-attr]
    errors: list[BaseException] = []
    loads: list[str] = []

    def load(value: str) -> str:
        loads.append(value)
        return value

    def first_caller() -> None:
        try:
            reader.get_or_load("k", _never, ttl=60)
        except Interrupted as exc:
            errors.append(exc)

    first = threading.Thread(target=first_caller)
    first.start()
    assert gets.started.wait(5)
    herd = [in_thread(lambda: reader.get_or_load("k", lambda: load("one"), ttl=60))]
    wait_until(lambda: reader.stats()["coalesced_waits"] == 1)
    # A bulk caller joins the same flight: it never probes, but may wait on a probed flight.
    bulk = in_thread(
        lambda: reader.get_or_load_many(["k"], lambda ks: {k: load("many") for k in ks}, ttl=60)[
            "k"
        ]
    )
    wait_until(lambda: reader.stats()["coalesced_waits"] == 2)
    gets.release.set()
    first.join(10)
    for thread, _ in [*herd, bulk]:
        thread.join(10)
    assert len(errors) == 1
    assert len(loads) == 1  # the callers started over, and one of them loaded for all
    assert herd[0][1] == bulk[1] == loads
    assert not reader._engine.probing and not reader._engine.flights


def test_a_cancelled_fast_get_hands_its_callers_on(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio: the task whose fast GET the others wait for is cancelled mid-GET (a request
    timeout): the others start over and get the value."""
    writer, reader = make_cache(), make_cache(l1_maxsize=0)
    writer.set("k", "row", ttl=60)

    async def main() -> list[Any]:
        await asyncio.to_thread(_warm, reader)
        fetch = Fetch.run_async
        held = asyncio.Event()

        async def slow_fetch(op: Fetch) -> Any:
            if not held.is_set():
                held.set()
                await asyncio.sleep(10)  # cancelled before this ends
            return await fetch(op)

        monkeypatch.setattr(Fetch, "run_async", slow_fetch)
        first = asyncio.create_task(reader.aget_or_load("k", _never, ttl=60))
        await held.wait()
        others = [asyncio.create_task(reader.aget_or_load("k", _never, ttl=60)) for _ in range(3)]
        while reader.stats()["coalesced_waits"] < 3:
            await asyncio.sleep(0.001)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return list(await asyncio.wait_for(asyncio.gather(*others), 5))

    assert asyncio.run(main()) == ["row"] * 3
    assert not reader._engine.probing and not reader._engine.flights
