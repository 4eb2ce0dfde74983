"""The Redis tier against a real redis-server: two tiers, bulk reads, scripts, bad input and
the asyncio API."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import threading
import time
import uuid
from typing import Any

import msgpack
import pytest

from cachewise import Cache, CacheError, ConfigTypeError, ConfigValueError, codec

from .redis_helpers import MakeCache, listening
from .test_concurrency import wait_until


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


def test_an_entry_an_earlier_release_wrote_is_a_miss_then_overwritten(
    make_cache: MakeCache, redis_server: Any, namespace: str
) -> None:
    """After an upgrade, entries of the earlier layout (format 2, the value second) are misses,
    one at a time or in bulk, and the next load writes the current layout over them."""
    client = redis_server.client()
    far = 2**45  # fresh for a long while on the server's clock
    old = msgpack.packb([2, "old", far, far, 1, [], []])
    for key in ("a", "b"):
        client.set(f"{namespace}:{{{key}}}", old, px=30_000)
    cache = make_cache(l1_maxsize=0)
    assert cache.get_many(["a", "b"]) == {}
    assert cache.get_or_load("a", lambda: "new", ttl=30) == "new"
    assert cache.get("b") is None
    raw = client.get(f"{namespace}:{{a}}")
    assert raw is not None and msgpack.unpackb(raw)[0] == codec.FORMAT
    assert make_cache().get_many(["a", "b"]) == {"a": "new"}


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


def test_early_refresh_reloads_through_thelease_key(make_cache: MakeCache) -> None:
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


def test_an_async_sequence_starts_no_step_after_one_that_raised() -> None:
    """A cluster's server-time sequence on an async client: a step is started only once the
    one before answered, so a step that raises leaves no coroutine never awaited."""
    from cachewise.redis.ops import _Sequence

    started: list[str] = []

    def step(name: str, fails: bool = False) -> Any:
        async def run() -> str:
            if fails:
                raise ConnectionError(name)
            return name

        started.append(name)
        return run()

    def sequence(*steps: Any) -> Any:
        return _Sequence(list(steps)).execute(raise_on_error=False)

    assert asyncio.run(sequence(lambda: step("a"), lambda: step("b"))) == ["a", "b"]
    started.clear()
    with pytest.raises(ConnectionError):
        asyncio.run(sequence(lambda: step("a", fails=True), lambda: step("b")))
    assert started == ["a"]
    assert sequence(lambda: "x", lambda: "y") == ["x", "y"]  # a sync client's replies
