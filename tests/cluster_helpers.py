"""What the cluster test modules share: a six-node cluster per module (3 masters, 3 replicas on
loopback, started here and stopped by pid), caches on it closed after each test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis.cluster

from cachewise import Cache
from cachewise.testing import LocalCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as started:
        yield started


@pytest.fixture
def caches(cluster: LocalCluster, namespace: str) -> Iterator[list[Cache]]:
    made: list[Cache] = []
    yield made
    for cache in made:
        cache.close(timeout=1)


def on(cluster: LocalCluster, namespace: str, made: list[Cache], node: int = 0, **kw: Any) -> Cache:
    """A cache on the URL of one node (any node: the cluster is detected)."""
    cache = Cache(cluster.nodes[node].url, namespace=namespace, **kw)
    made.append(cache)
    return cache


def admin(cluster: LocalCluster) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster.from_url(cluster.url)
