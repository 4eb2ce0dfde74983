"""An async flight's load starts at once, in a task of its own: its first step runs inside the
leader's (before the steps already due), yet belongs to the load's task, not to the caller's."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

import pytest

from cachewise import Cache, _eager

needs_eager = pytest.mark.skipif(not _eager.EAGER, reason="eager start needs Python 3.11+")
_seen: contextvars.ContextVar[str] = contextvars.ContextVar("_seen", default="unset")


@needs_eager
async def test_a_herds_load_starts_before_the_other_callers_take_their_first_step() -> None:
    cache = Cache(namespace="eager-order")
    order: list[str] = []

    @cache.cached(ttl=60)
    async def load(x: int) -> int:
        order.append("load")
        await asyncio.sleep(0.01)
        return x

    async def call() -> int:
        order.append("call")
        return await load(1)

    assert await asyncio.gather(*(call() for _ in range(20))) == [1] * 20
    assert order[:2] == ["call", "load"]  # before the second caller's first step
    assert order.count("load") == 1
    cache.close()


@needs_eager
async def test_the_loads_first_step_runs_in_its_own_task_and_context() -> None:
    cache = Cache(namespace="eager-task")
    tasks: list[Any] = []

    @cache.cached(ttl=60)
    async def load(x: int) -> str:
        tasks.append(asyncio.current_task())
        _seen.set("load")  # set in the first step, read after the await: one context
        await asyncio.sleep(0)
        tasks.append(asyncio.current_task())
        return _seen.get()

    assert await load(1) == "load"
    caller = asyncio.current_task()
    assert tasks[0] is tasks[1] and tasks[0] is not caller
    assert _seen.get() == "unset"  # the caller's context is not the load's
    cache.close()


@needs_eager
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
async def test_a_timeout_entered_in_the_loads_first_step_cancels_the_load_not_the_caller() -> None:
    cache = Cache(namespace="eager-timeout")

    @cache.cached(ttl=60)
    async def load(x: int) -> int:
        async with asyncio.timeout(0.02):
            await asyncio.sleep(5)
        return x

    with pytest.raises(TimeoutError):
        await load(1)
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]
    await asyncio.sleep(0.03)  # the caller goes on: it was never cancelled
    cache.close()


async def test_a_load_that_raises_or_returns_in_its_first_step_reaches_the_caller() -> None:
    cache = Cache(namespace="eager-first")

    @cache.cached(ttl=60)
    async def at_once(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x * 2

    with pytest.raises(ValueError, match="negative"):
        await at_once(-1)
    assert await asyncio.gather(at_once(2), at_once(2)) == [4, 4]
    cache.close()


async def test_cancelling_the_caller_leaves_the_eagerly_started_load_running() -> None:
    cache = Cache(namespace="eager-cancel")
    finished: list[int] = []

    @cache.cached(ttl=60)
    async def load(x: int) -> int:
        await asyncio.sleep(0.05)
        finished.append(x)
        return x

    first = asyncio.ensure_future(load(1))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await load(1) == 1  # the same load, still running, serves the next caller
    assert finished == [1]
    cache.close()


@needs_eager
async def test_a_task_cancelled_before_its_next_step_closes_its_coroutine() -> None:
    closed: list[str] = []

    async def body() -> None:
        try:
            await asyncio.sleep(5)
        finally:
            closed.append("finally")

    task = _eager.start(asyncio.get_running_loop(), body())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == ["finally"]


async def test_outside_a_task_it_is_a_plain_task() -> None:
    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[int]] = []

    async def body() -> int:
        return 7

    loop.call_soon(lambda: made.append(_eager.start(loop, body())))
    await asyncio.sleep(0)
    assert await made[0] == 7


@needs_eager
async def test_a_load_that_leads_another_load_in_its_first_step_keeps_each_in_its_task() -> None:
    cache = Cache(namespace="eager-nested")
    tasks: list[tuple[str, Any]] = []

    @cache.cached(ttl=60)
    async def inner(x: int) -> int:
        tasks.append(("inner", asyncio.current_task()))
        await asyncio.sleep(0.01)
        return x + 1

    @cache.cached(ttl=60)
    async def outer(x: int) -> int:
        tasks.append(("outer", asyncio.current_task()))
        value = await inner(x)  # leads inner's load from the outer load's first step
        tasks.append(("outer", asyncio.current_task()))
        return value * 10

    assert await asyncio.gather(outer(1), outer(1), inner(1)) == [20, 20, 2]
    caller = asyncio.current_task()
    (_, first), (_, nested), (_, resumed) = tasks
    assert [name for name, _ in tasks] == ["outer", "inner", "outer"]
    assert first is resumed and len({id(caller), id(first), id(nested)}) == 3
    cache.close()
