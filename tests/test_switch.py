"""Caching off: ``cachewise.disable()`` (every cache), ``CACHEWISE_DISABLE=1``, ``cache.bypass()``
(one cache, this thread or task), and ``cachewise.testing.isolated_cache``; sync and async,
in-process and with Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

import cachewise
from cachewise import MISSING, Cache, ConfigValueError
from cachewise.testing import isolated_cache

from .conftest import Driver


def _counted(cache: Cache, drive: Driver, name: str = "square") -> tuple[Any, list[int]]:
    loads: list[int] = []

    def square(x: int) -> int:
        loads.append(x)
        return x * x

    square.__qualname__ = name
    return cache.cached(ttl=60)(drive.function(square)), loads


def test_disable_makes_every_call_straight_through(
    where: Callable[..., Cache], drive: Driver
) -> None:
    cache, other = where(), where()
    f, loads = _counted(cache, drive)
    assert drive.run(f, 3) == 9 and drive.run(f, 3) == 9 and loads == [3]  # a hit
    drive(cache, "set", "k", "cached", ttl=60)
    with cachewise.disable():
        assert drive.run(f, 3) == 9 and drive.run(f, 3) == 9
        assert loads == [3, 3, 3]  # the L1 hit path too goes through
        assert drive(cache, "get", "k") is None
        assert drive(cache, "get_or_load", "k", lambda: "loaded", ttl=60) == "loaded"
        assert drive(cache, "get_or_load_many", ["a", "b"], lambda ks: {k: k for k in ks},
                     ttl=60) == {"a": "a", "b": "b"}  # fmt: skip
        assert drive.run(f.peek, 3) is MISSING
        g, other_loads = _counted(other, drive, "other")  # decorated while off: off too
        drive.run(g, 1)
        drive.run(g, 1)
        assert other_loads == [1, 1]
        drive(cache, "set", "k", "written while off", ttl=60)  # drops, never stores
    assert drive(cache, "get", "k") is None  # the old value did not survive the write
    assert drive(cache, "get_or_load", "a", lambda: "fresh", ttl=60) == "fresh"  # nothing kept
    assert drive.run(f, 3) == 9 and loads == [3, 3, 3]  # caching again: the old entry is back
    drive.run(g, 1)
    drive.run(g, 1)
    assert other_loads == [1, 1, 1]


_STORE: dict[int, str] = {}


def save_row(row: int, value: str) -> None:
    _STORE[row] = value


async def asave_row(row: int, value: str) -> None:
    _STORE[row] = value


def test_writers_write_at_once_while_off(where: Callable[..., Cache], drive: Driver) -> None:
    cache = where()
    store = _STORE
    store.clear()

    @cache.cached(ttl=60)
    def get_row(row: int) -> str | None:
        return store.get(row)

    writer = asave_row if drive.is_async else save_row
    behind = cache.write_behind(get_row, args=lambda r, v: r, value=lambda r, v: v)(writer)
    through = cache.write_through(get_row, args=lambda r, v: r, value=lambda r, v: v)(writer)
    with cachewise.disable():
        drive.run(behind, 1, "one")
        assert store == {1: "one"}  # not queued: written before the call returned
        drive.run(through, 2, "two")
        assert store == {1: "one", 2: "two"}
    assert get_row(1) == "one" and get_row(2) == "two"
    assert cache.flush(timeout=5).pending == 0


def test_bypass_is_one_cache_in_one_thread(where: Callable[..., Cache]) -> None:
    cache, other = where(), where()
    f, loads = _counted(cache, Driver("sync"))
    g, other_loads = _counted(other, Driver("sync"), "other")
    f(2)
    g(2)
    seen: list[int] = []
    inside, done = threading.Event(), threading.Event()

    def elsewhere() -> None:
        inside.wait(10)
        f(2)  # another thread keeps caching while this one bypasses
        seen.append(len(loads))
        done.set()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    with cache.bypass():
        f(2)
        g(2)  # another cache is not bypassed
        inside.set()
        assert done.wait(10)
        f(2)
    thread.join(10)
    assert loads == [2, 2, 2] and seen == [2] and other_loads == [2]
    f(2)
    assert loads == [2, 2, 2]


def test_bypass_in_one_task_leaves_the_others_caching(where: Callable[..., Cache]) -> None:
    cache = where()
    f, loads = _counted(cache, Driver("async"))

    async def main() -> None:
        await f(5)
        gate = asyncio.Event()

        async def bypassing() -> None:
            with cache.bypass():
                await f(5)
                gate.set()
                await asyncio.sleep(0.01)
                await f(5)

        async def caching() -> None:
            await gate.wait()
            await f(5)

        await asyncio.gather(bypassing(), caching())

    asyncio.run(main())
    assert loads == [5, 5, 5]


def test_the_environment_variable_turns_caching_off() -> None:
    code = (
        "import cachewise\n"
        "loads = []\n"
        "@cachewise.cached(ttl=60)\n"
        "def f(x):\n"
        "    loads.append(x)\n"
        "    return x\n"
        "f(1); f(1)\n"
        "print(len(loads))\n"
    )
    for value, expected in (("1", "2"), ("", "1"), ("0", "1")):
        env = {**os.environ, "CACHEWISE_DISABLE": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60, check=True)  # fmt: skip
        assert out.stdout.strip() == expected, (value, out.stderr)


def test_an_isolated_cache_per_test() -> None:
    before = cachewise.default_cache()
    with isolated_cache() as first:
        assert cachewise.default_cache() is first and first._engine.backend is None

        @cachewise.cached(ttl=60)
        def f(x: int) -> int:
            return x

        f(1)
        assert first.stats()["l1_size"] == 1
    assert cachewise.default_cache() is before
    with isolated_cache(default=False, l1_maxsize=5) as second:
        assert second.namespace != first.namespace
        assert cachewise.default_cache() is before
    with pytest.raises(ConfigValueError, match="in-process"), isolated_cache(redis="redis://x"):
        pass
