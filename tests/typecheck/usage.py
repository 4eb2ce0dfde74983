"""Type-checked by tests/test_typing.py: decorated functions keep their signatures."""

from __future__ import annotations

from typing_extensions import assert_type

from cachewise import Cache

cache = Cache()


@cache.cached(ttl=60)
def get_user(user_id: int, verbose: bool = False) -> dict[str, int]:
    return {"id": user_id}


@cache.cached(ttl=60, stale_ttl=300, unless=lambda feed: not feed)
async def get_feed(user_id: int) -> list[str]:
    return []


async def main() -> None:
    assert_type(get_user(1), dict[str, int])
    assert_type(get_user.key(1, verbose=True), str)
    assert_type(get_user.invalidate(1), int)
    assert_type(await get_feed(7), list[str])
    assert_type(get_feed.key(7), str)
    assert_type(await get_feed.invalidate(7), int)
    assert_type(get_user.refresh(1), dict[str, int])
    assert_type(get_user.uncached(1, verbose=True), dict[str, int])
    assert_type(await get_feed.refresh(7), list[str])
    assert_type(await get_feed.uncached(7), list[str])
    assert_type(cache.get_or_load("k", lambda: 3, ttl=5), int)
