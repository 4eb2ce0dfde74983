"""The in-memory write-behind queue (a cache without Redis): returns before the store write,
coalesces, retries, dead-letters, bounds, drains at close and at interpreter exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pytest

from cachewise import Cache, WriteBehindFull
from cachewise.testing import FakeClock

from .test_writes import Store, make


def wb_cache(clock: FakeClock, **options: Any) -> Cache:
    defaults: dict[str, Any] = dict(
        clock=clock, ttl_jitter=0, early_refresh_beta=0, write_behind_interval=0.01,
        write_behind_backoff=0.001,
    )  # fmt: skip
    return Cache(**{**defaults, **options})


def gated_saver(
    cache: Cache, get_user: Any, store: Store
) -> tuple[Any, threading.Event, threading.Event]:
    """A write-behind writer that blocks in the flusher until ``gate`` is set; ``started`` is
    set when the flusher first calls it."""
    gate, started = threading.Event(), threading.Event()

    @cache.write_behind(get_user, args=lambda u, d: u, value=lambda u, d: d)
    def save(user_id: int, data: Any) -> None:
        started.set()
        assert gate.wait(10)
        store.save(user_id, data)

    return save, gate, started


def test_write_behind_returns_before_the_store_write(clock: FakeClock) -> None:
    cache = wb_cache(clock)
    store = Store()
    get_user = make(cache, store)
    save, gate, _ = gated_saver(cache, get_user, store)

    save(1, "new")  # returns although the writer is blocked
    assert get_user(1) == "new" and store.writes == []
    gate.set()
    report = cache.flush()
    assert store.rows == {1: "new"} and report.written == 1 and report.pending == 0
    cache.close()


def test_write_behind_coalesces_and_keeps_order(clock: FakeClock) -> None:
    cache = wb_cache(clock, write_behind_interval=0.01)
    store = Store()
    get_user = make(cache, store)
    save, gate, first = gated_saver(cache, get_user, store)

    save(0, -1)  # occupies the flusher
    assert first.wait(10)
    for i in range(50):
        save(1, i)
    for i in range(3):
        save(2, i)
    gate.set()
    cache.flush()
    assert store.writes == [(0, -1), (1, 49), (2, 2)]  # 50 writes to key 1 -> one store call
    assert get_user(1) == 49
    cache.close()


def test_write_behind_retries_then_succeeds(clock: FakeClock) -> None:
    cache = wb_cache(clock, write_behind_retries=5)
    store = Store()
    get_user = make(cache, store)
    store.fail_times = 3

    @cache.write_behind(get_user, args=lambda u, d: u, value=lambda u, d: d)
    def save(user_id: int, data: str) -> None:
        store.save(user_id, data)

    save(1, "x")
    report = cache.flush()
    assert store.rows == {1: "x"} and report.retried == 3 and report.dead_lettered == 0
    cache.close()


def test_poison_write_is_dead_lettered_others_continue(clock: FakeClock) -> None:
    cache = wb_cache(clock, write_behind_retries=2)
    store = Store()
    get_user = make(cache, store)
    store.fail_keys.add(13)

    @cache.write_behind(get_user, args=lambda u, d: u, value=lambda u, d: d)
    def save(user_id: int, data: str) -> None:
        store.save(user_id, data)

    for user in (12, 13, 14):
        save(user, f"d{user}")
    report = cache.flush()
    assert store.rows == {12: "d12", 14: "d14"}
    assert report.dead_lettered == 1 and "cannot write 13" in report.errors[0]
    [dead] = cache.dead_letters()
    assert dead.args == (13, "d13") and dead.attempts == 3
    cache.close()


def test_pending_write_is_served_after_the_entry_expires(clock: FakeClock) -> None:
    cache = wb_cache(clock)
    store = Store()
    store.rows[1] = "old"
    get_user = make(cache, store)
    save, gate, _ = gated_saver(cache, get_user, store)

    save(1, "new")
    clock.advance(120)  # the cache entry expired; the store still has "old"
    assert get_user(1) == "new"
    gate.set()
    cache.flush()
    clock.advance(120)
    assert get_user(1) == "new"  # from the store now
    assert cache._engine.pinned == {}
    cache.close()


def test_bounded_queue_raises_when_told_to(clock: FakeClock) -> None:
    cache = wb_cache(clock, write_behind_maxsize=2, write_behind_when_full="raise")
    store = Store()
    get_user = make(cache, store)
    save, gate, started = gated_saver(cache, get_user, store)

    save(1, "a")
    assert started.wait(10)
    save(2, "b")
    save(2, "b2")  # coalesced into the queued write: no room needed
    with pytest.raises(WriteBehindFull, match="not queued"):
        save(3, "c")
    assert cache.get_or_load("probe", lambda: 0, ttl=1) == 0
    assert get_user.key(3) not in [e.full_key for e in cache._engine.l1.entries()]
    gate.set()
    cache.flush()
    assert store.rows == {1: "a", 2: "b2"}
    cache.close()


def test_bounded_queue_blocks_by_default(clock: FakeClock) -> None:
    cache = wb_cache(clock, write_behind_maxsize=1)
    store = Store()
    get_user = make(cache, store)
    save, gate, started = gated_saver(cache, get_user, store)

    save(1, "a")
    assert started.wait(10)
    done = threading.Event()
    blocked = threading.Thread(target=lambda: (save(2, "b"), done.set()))
    blocked.start()
    assert not done.wait(0.05)  # still blocked while the queue is full
    gate.set()
    assert done.wait(10)
    cache.flush()
    assert store.rows == {1: "a", 2: "b"}
    cache.close()


async def test_async_write_behind_flushes_on_the_loop(clock: FakeClock) -> None:
    cache = wb_cache(clock)
    rows: dict[int, str] = {}
    loop = asyncio.get_running_loop()
    seen_loops: list[Any] = []

    @cache.cached(ttl=60)
    async def get_user(user_id: int) -> str | None:
        return rows.get(user_id)

    @cache.write_behind(get_user, args=lambda u, d: u, value=lambda u, d: d)
    async def save(user_id: int, data: str) -> None:
        seen_loops.append(asyncio.get_running_loop())
        rows[user_id] = data

    for i in range(5):
        await save(i, f"d{i}")
    assert await get_user(3) == "d3"
    report = await cache.aflush()
    assert rows == {i: f"d{i}" for i in range(5)} and report.written == 5
    assert seen_loops == [loop] * 5
    await cache.aclose()


def test_close_drains_the_queue(clock: FakeClock) -> None:
    cache = wb_cache(clock)
    store = Store()
    get_user = make(cache, store)

    @cache.write_behind(get_user, args=lambda u, d: u, value=lambda u, d: d)
    def save(user_id: int, data: str) -> None:
        store.save(user_id, data)

    with cache:
        for i in range(20):
            save(i, str(i))
    assert len(store.rows) == 20


def _async_saver(cache: Cache, rows: dict[int, str], blocked: list[bool]) -> Any:
    """An ``async def`` writer that hangs while ``blocked[0]`` (until its loop ends)."""

    @cache.cached(ttl=60)
    async def get_user(user_id: int) -> str | None:
        return rows.get(user_id)

    @cache.write_behind(get_user, args=lambda u, d: u, value=lambda u, d: d)
    async def save(user_id: int, data: str) -> None:
        while blocked[0]:
            await asyncio.sleep(0.01)
        rows[user_id] = data

    return save


@pytest.mark.parametrize("how", ["close", "flush"])
def test_close_drains_an_async_writers_queue_after_its_loop_ended(
    clock: FakeClock, how: str
) -> None:
    """The loop ended (``asyncio.run`` returned) with writes queued, one of them cut off in the
    writer: sync ``close`` (or ``flush``) writes them all on a loop of its own."""
    cache = wb_cache(clock)
    rows: dict[int, str] = {}
    blocked = [True]
    save = _async_saver(cache, rows, blocked)

    async def main() -> None:
        for i in range(5):
            await save(i, f"d{i}")
        await asyncio.sleep(0.1)  # the flusher is now inside the writer, which hangs

    asyncio.run(main())
    assert rows == {} and cache.stats()["write_behind_pending"] == 5
    blocked[0] = False
    report = cache.close(timeout=10) if how == "close" else cache.flush(timeout=10)
    assert rows == {i: f"d{i}" for i in range(5)}
    assert report.written == 5 and report.pending == 0
    cache.close()


def test_close_drains_an_async_writers_queue_on_its_loop_in_another_thread(
    clock: FakeClock,
) -> None:
    cache = wb_cache(clock)
    rows: dict[int, str] = {}
    save = _async_saver(cache, rows, [False])
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    try:
        for i in range(5):
            asyncio.run_coroutine_threadsafe(save(i, f"d{i}"), loop).result(10)
        report = cache.close(timeout=10)
        assert rows == {i: f"d{i}" for i in range(5)} and report.pending == 0
        # The stopped flusher ends on its loop before the loop does.
        asyncio.run_coroutine_threadsafe(cache._queues[0].join_async(5), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()


async def test_sync_close_on_the_writers_own_loop_says_what_is_lost(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """It cannot drain without blocking the loop the writes need: they are reported pending
    and logged, never dropped in silence."""
    cache = wb_cache(clock)
    blocked = [True]
    save = _async_saver(cache, {}, blocked)
    for i in range(3):
        await save(i, f"d{i}")
    report = cache.close(timeout=1)
    assert report.pending == 3 and report.errors
    assert "3 write-behind writes" in caplog.text and "lost" in caplog.text
    blocked[0] = False  # let the flusher task end before its loop does
    queue = cache._queues[0]
    await asyncio.wait_for(asyncio.shield(queue._task), 5)  # type: ignore[arg-type]


def test_interpreter_exit_drains_an_async_writers_queue(tmp_path: Any) -> None:
    out = tmp_path / "rows"
    script = tmp_path / "writer.py"
    script.write_text(
        "import asyncio, sys\n"
        "from cachewise import Cache\n"
        "cache = Cache(write_behind_interval=0.01)\n"
        "@cache.cached(ttl=60)\n"
        "async def get_row(k): return None\n"
        "@cache.write_behind(get_row, args=lambda k, v: (k,), value=lambda k, v: v)\n"
        "async def save(k, v):\n"
        "    await asyncio.sleep(0.01)\n"
        f"    with open({str(out)!r}, 'a') as f: f.write(f'{{k}}={{v}}\\n')\n"
        "async def main():\n"
        "    for i in range(5): await save(i, i)\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert set(out.read_text().split()) == {f"{i}={i}" for i in range(5)}
