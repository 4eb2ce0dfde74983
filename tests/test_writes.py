"""Writer decorators in-process: invalidates and write-through (the in-memory write-behind is
in ``test_writebehind_memory.py``)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cachewise import Cache, WriterArgumentError


class Store:
    """A fake database: records every write, can be told to fail."""

    def __init__(self) -> None:
        self.rows: dict[int, Any] = {}
        self.writes: list[tuple[int, Any]] = []
        self.fail_times = 0
        self.fail_keys: set[int] = set()
        self.lock = threading.Lock()

    def save(self, user_id: int, data: Any) -> None:
        with self.lock:
            if user_id in self.fail_keys:
                raise ConnectionError(f"cannot write {user_id}")
            if self.fail_times:
                self.fail_times -= 1
                raise ConnectionError("transient")
            self.writes.append((user_id, data))
            self.rows[user_id] = data


def make(cache: Cache, store: Store) -> Any:
    @cache.cached(ttl=60)
    def get_user(user_id: int) -> Any:
        return store.rows.get(user_id)

    return get_user


def test_invalidates_drops_after_success(cache: Cache) -> None:
    store = Store()
    get_user = make(cache, store)

    @cache.invalidates(get_user, args=lambda user_id, data: (user_id,))
    def rename(user_id: int, data: str) -> str:
        store.rows[user_id] = data
        return "ok"

    store.rows[1] = "old"
    assert get_user(1) == "old"
    assert rename(1, "new") == "ok"
    assert get_user(1) == "new"


def test_write_through_sets_cache_after_store(cache: Cache) -> None:
    store = Store()
    get_user = make(cache, store)
    seen_during_write: list[Any] = []

    @cache.write_through(get_user, args=lambda user_id, data: user_id, value=lambda u, d: d)
    def save(user_id: int, data: Any) -> None:
        seen_during_write.append(get_user(user_id))  # the cache is updated only after this
        store.save(user_id, data)

    store.rows[1] = "old"
    get_user(1)
    save(1, {"name": "new"})
    assert seen_during_write == ["old"]
    assert get_user(1) == {"name": "new"}
    assert cache.stats()["loads"] == 1  # the write filled the entry: no reload


def test_write_through_failure_drops_entry_and_reraises(cache: Cache) -> None:
    store = Store()
    get_user = make(cache, store)
    store.rows[1] = "old"
    get_user(1)

    @cache.write_through(get_user, args=lambda user_id, data: user_id, value=lambda u, d: d)
    def save(user_id: int, data: Any) -> None:
        store.save(user_id, data)

    store.fail_keys.add(1)
    with pytest.raises(ConnectionError, match="cannot write 1"):
        save(1, "new")
    assert cache.stats()["l1_size"] == 0  # no half-updated entry


def test_write_through_caches_return_value_without_value_mapper(cache: Cache) -> None:
    store = Store()
    get_user = make(cache, store)

    @cache.write_through(get_user, args=lambda user_id, data: user_id)
    def save(user_id: int, data: str) -> str:
        store.save(user_id, data)
        return data.upper()

    save(2, "x")
    assert get_user(2) == "X"


def test_write_through_wins_over_a_slow_load(cache: Cache) -> None:
    store = Store()
    started, release = threading.Event(), threading.Event()

    @cache.cached(ttl=60)
    def get_user(user_id: int) -> Any:
        value = store.rows.get(user_id)
        started.set()
        assert release.wait(10)
        return value

    @cache.write_through(get_user, args=lambda user_id, data: user_id, value=lambda u, d: d)
    def save(user_id: int, data: Any) -> None:
        store.save(user_id, data)

    store.rows[1] = "old"
    reader = threading.Thread(target=get_user, args=(1,))
    reader.start()
    assert started.wait(10)
    save(1, "new")
    release.set()
    reader.join(10)
    assert get_user(1) == "new"


def test_args_mapper_error_says_nothing_was_written(cache: Cache) -> None:
    store = Store()
    get_user = make(cache, store)

    @cache.write_through(get_user, args=lambda user_id, data: data["missing"])
    def save(user_id: int, data: dict[str, Any]) -> None:
        store.save(user_id, data)

    with pytest.raises(WriterArgumentError, match="nothing was written"):
        save(1, {})
    assert store.writes == []


async def test_async_write_through(cache: Cache) -> None:
    rows: dict[int, str] = {}

    @cache.cached(ttl=60)
    async def get_user(user_id: int) -> str | None:
        return rows.get(user_id)

    @cache.write_through(get_user, args=lambda user_id, data: user_id, value=lambda u, d: d)
    async def save(user_id: int, data: str) -> None:
        rows[user_id] = data

    await save(1, "a")
    rows.clear()
    assert await get_user(1) == "a"
