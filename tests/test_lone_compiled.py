"""The compiled lone-caller fast path (``_speedups_lone.c``): it serves a shared-tier hit by
itself, and every read, whatever Redis holds, ends the same as with the Python path alone
(value, counters, what is left behind)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from cachewise import Cache, codec
from cachewise.codec import Envelope
from cachewise.engine import lone
from cachewise.engine.lone import LoneReads
from cachewise.testing import FakeClock

from .test_concurrency import wait_until
from .test_fast_path import _never, _warm

MakeCache = Callable[..., Cache]

compiled = pytest.mark.skipif(
    LoneReads.read_sync is lone.PYTHON_READS["read_sync"], reason="built without the C extension"
)

#: What a read adds to a cache's counters that must not depend on the path.
COUNTED = ("hits", "misses", "l2_hits", "loads", "decode_errors", "redis_errors", "stale_served")


@compiled
@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_shared_hit_is_served_by_the_compiled_path_alone(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    served_by_the_compiled_path_alone(make_cache, monkeypatch, how)


def served_by_the_compiled_path_alone(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A shared-tier hit of caches ``make_cache`` makes, with Python's read path refused."""
    writer, reader = make_cache(), make_cache(l1_maxsize=0)
    writer.set("k", {"rows": [1, 2]}, ttl=60)
    _warm(reader)

    def python_path(*args: Any) -> Any:
        raise AssertionError("served by Python, not by the compiled path")

    monkeypatch.setattr(codec, "body", python_path)  # how Python's ``probed`` decodes
    for name in ("_finish_sync", "read"):
        monkeypatch.setattr(LoneReads, name, python_path)
    if how == "sync":
        value = reader.get_or_load("k", _never, ttl=60)
    else:
        value = asyncio.run(reader.aget_or_load("k", _never, ttl=60))
    assert value == {"rows": [1, 2]}
    stats = reader.stats()
    assert (stats["misses"], stats["l2_hits"], stats["miss_latency"]["count"]) == (1, 1, 1)
    assert not reader._engine.probing and not reader._engine.flights


def _fresh(writer: Cache, reader: Cache, key: str) -> None:
    """Written straight into Redis, as another process' ``set`` would, but without its event:
    the reader's L1 must not learn the value (or see its epoch move) while it reads."""
    backend = reader._engine.backend
    assert backend is not None
    fresh_until = int(backend.server_now_ms()) + 60_000
    entry = codec.pack(Envelope({"v": [1, "two", None]}, fresh_until, fresh_until, 1, ()), key)
    backend.sync_client().set(reader._target(key).full_key, entry, ex=60)


def _stale(writer: Cache, reader: Cache, key: str) -> None:
    writer.get_or_load(key, lambda: "old", ttl=0.05, stale_ttl=60)
    time.sleep(0.1)


def _tagged(writer: Cache, reader: Cache, key: str) -> None:
    @writer.cached(ttl=60, key=lambda: key, tags=["t"])
    def tagged() -> str:
        return "tagged"

    tagged()


def _undecodable(writer: Cache, reader: Cache, key: str) -> None:
    client = writer._engine.backend.sync_client()  # type: ignore[union-attr]
    client.set(writer._target(key).full_key, b"\xc1 not msgpack", ex=60)


def _redis_down(writer: Cache, reader: Cache, key: str) -> None:
    def down(*args: Any) -> Any:
        raise redis.ConnectionError("refused")

    reader._engine.backend.sync_client().get = down  # type: ignore[union-attr]


def _bypassed(writer: Cache, reader: Cache, key: str) -> None:
    writer.set(key, "shared", ttl=60)


#: What a scenario does to Redis before the reads, and the reading cache's options.
Scenario = tuple[Callable[[Cache, Cache, str], None], dict[str, Any]]

SCENARIOS: dict[str, Scenario] = {
    "fresh": (_fresh, {"l1_maxsize": 0}),
    "fresh, L1 on": (_fresh, {}),
    "fresh, a fake clock": (_fresh, {"l1_maxsize": 0, "clock": FakeClock()}),
    "absent": (lambda writer, reader, key: None, {"l1_maxsize": 0}),
    "stale": (_stale, {"l1_maxsize": 0}),
    "tagged": (_tagged, {"l1_maxsize": 0}),
    "undecodable": (_undecodable, {"l1_maxsize": 0}),
    "redis down": (_redis_down, {"l1_maxsize": 0}),
    "bypassed": (_bypassed, {"l1_maxsize": 0}),
}


def _read_twice(
    make_cache: MakeCache, prepared: Scenario, scenario: str, key: str, how: str
) -> tuple[list[Any], dict[str, Any]]:
    prepare, options = prepared
    writer, reader = make_cache(), make_cache(**options)
    _warm(reader)
    prepare(writer, reader, key)
    before = reader.stats()
    # Once where a second read would race the first one's background refresh (stale).
    times = 1 if scenario in ("bypassed", "stale") else 2

    async def reads() -> list[Any]:
        return [
            await reader.aget_or_load(key, lambda: "loaded", ttl=60, stale_ttl=60)
            for _ in range(times)
        ]

    with reader.bypass() if scenario == "bypassed" else contextlib.nullcontext():
        if how == "sync":
            values = [
                reader.get_or_load(key, lambda: "loaded", ttl=60, stale_ttl=60)
                for _ in range(times)
            ]
        else:
            values = asyncio.run(reads())
    if scenario == "stale":  # its refresh runs beside the reads
        wait_until(lambda: reader.stats()["refreshes"] >= 1)
    after = reader.stats()
    engine = reader._engine
    wait_until(lambda: not engine.flights)
    assert not engine.probing
    return values, {name: after.get(name, 0) - before.get(name, 0) for name in COUNTED}


@compiled
@pytest.mark.parametrize("how", ["sync", "async"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_compiled_and_the_python_path_end_the_same(
    make_cache: MakeCache, monkeypatch: pytest.MonkeyPatch, scenario: str, how: str
) -> None:
    paths_end_the_same(make_cache, monkeypatch, SCENARIOS, scenario, how)


def paths_end_the_same(
    make_cache: MakeCache,
    monkeypatch: pytest.MonkeyPatch,
    scenarios: dict[str, Scenario],
    scenario: str,
    how: str,
) -> None:
    """The reads of ``scenario`` end the same with the compiled path and with Python's."""
    with_c = _read_twice(make_cache, scenarios[scenario], scenario, "c", how)
    for name, method in lone.PYTHON_READS.items():
        monkeypatch.setattr(LoneReads, name, method)
    in_python = _read_twice(make_cache, scenarios[scenario], scenario, "py", how)
    assert with_c == in_python
    if scenario in ("fresh", "fresh, a fake clock"):
        assert with_c[0] == [{"v": [1, "two", None]}] * 2
