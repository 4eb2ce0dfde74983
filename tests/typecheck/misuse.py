"""Must NOT type-check: wrong argument types are caught through the decorator."""

from __future__ import annotations

from cachewise import Cache

cache = Cache()


@cache.cached(ttl=60)
def get_user(user_id: int) -> dict[str, int]:
    return {"id": user_id}


get_user("not an int")
get_user.key(1, 2)
