"""Versioned tags fail safe: tag state deleted, evicted or flushed makes a tagged entry a miss,
and ``invalidate_tags`` takes effect whatever happened to the tag's state before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from cachewise import Cache
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import RedisServer

from .conftest import caches


class Origin:
    def __init__(self) -> None:
        self.version = 1
        self.loads = 0

    def __call__(self, team: int) -> str:
        self.loads += 1
        return f"team{team}-v{self.version}"


def tagged(cache: Cache, origin: Origin) -> Callable[[int], str]:
    @cache.cached(ttl=60, tags=lambda team: [f"team:{team}"])
    def members(team: int) -> str:
        return origin(team)

    return members


def lose(client: redis.Redis, namespace: str, how: str) -> None:
    if how == "deleted":
        tags = list(client.scan_iter(f"{namespace}:tagv:*"))
        assert tags, "the entry's tag has a version key"
        client.delete(*tags)
    else:
        client.flushdb()


@pytest.mark.parametrize("how", ["deleted", "flushdb"])
def test_invalidate_tags_takes_effect_after_the_tag_state_was_lost(
    redis_server: Any, namespace: str, how: str
) -> None:
    origin = Origin()
    with caches(redis_server.url, namespace=namespace) as make:
        a, b = make(), make()
        fa, fb = tagged(a, origin), tagged(b, origin)
        assert fa(9) == fb(9) == "team9-v1"
        lose(redis_server.client(), namespace, how)
        origin.version = 2
        a.invalidate_tags("team:9")
        fresh = tagged(make(l1_maxsize=0), origin)
        assert fresh(9) == "team9-v2"
        assert fb(9) == "team9-v2"  # b's L1 copy went with the event
        assert fa(9) == "team9-v2"


def test_a_tagged_entry_whose_tag_version_is_gone_is_a_miss(
    redis_server: Any, namespace: str
) -> None:
    origin = Origin()
    with caches(redis_server.url, namespace=namespace, l1_maxsize=0) as make:
        f = tagged(make(), origin)
        assert f(9) == "team9-v1" and origin.loads == 1
        assert f(9) == "team9-v1" and origin.loads == 1  # a shared hit, versions current
        lose(redis_server.client(), namespace, "deleted")
        origin.version = 2
        reader = make()
        assert tagged(reader, origin)(9) == "team9-v2"  # a miss: loaded again
        assert reader.stats()["tag_misses"] == 1
        assert f(9) == "team9-v2"  # and the new entry carries the tag's new version


def test_a_fill_whose_tag_moved_during_the_load_is_refused(
    redis_server: Any, namespace: str
) -> None:
    """A write of a tagged entry records the versions it read first; a tag invalidation in
    between makes Redis refuse it (a set cannot bring back what the invalidation dropped)."""
    with caches(redis_server.url, namespace=namespace, l1_maxsize=0) as make:
        cache = make()
        engine = cache._engine
        target = engine.explicit_target("k")
        target = type(target)(target.table, "k", target.full_key, "k", lambda: ("t",))
        from cachewise._drivers import run_sync

        run_sync(engine._ensure_backend())
        versions = run_sync(engine._tag_versions(("t",)))
        cache.invalidate_tags("t")
        entry = engine._entry(target, _policy(), "old", 0.0, ("t",))
        assert run_sync(engine._script(*engine._store_call(entry, "", target, versions))) == 0
        assert redis_server.client().get(target.full_key) is None


def _policy() -> Any:
    from cachewise.engine import Policy

    return Policy(ttl=60, stale_ttl=0, fail_closed=False)


def test_evicted_tag_versions_make_their_entries_misses(namespace: str) -> None:
    """On a Redis that evicts at random, every entry whose tag version was evicted is a miss."""
    with RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-random") as server:
        client = server.client()
        origin = Origin()
        with caches(server.url, namespace=namespace, l1_maxsize=0) as make:
            f = tagged(make(), origin)
            teams = range(300)
            for team in teams:
                f(team)
            filler = b"x" * 2000
            pipe = client.pipeline(transaction=False)
            for i in range(4000):  # about 8 MB: about half of everything is evicted
                pipe.set(f"filler:{i}", filler)
            pipe.execute()
            orphans = [
                team
                for team in teams
                if client.exists(f.key(team))
                and not client.exists(KeySpace(namespace).tag(f"team:{team}"))
            ]
            assert orphans, "random eviction left some entries without their tag's version"
            origin.version = 2
            reader = tagged(make(), origin)
            for team in orphans:
                assert reader(team) == f"team{team}-v2"
