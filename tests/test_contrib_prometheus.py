"""Prometheus metrics (``cachewise.contrib.prometheus``): a real registry scraped and its text
format parsed back; in-process and with Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cachewise import Cache, ConfigTypeError
from cachewise.contrib.prometheus import instrument

from .conftest import Driver


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels, from the text format."""
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_counters_gauges_and_histograms(where: Callable[..., Cache]) -> None:
    cache = where()
    registry = CollectorRegistry()
    assert instrument(cache, registry) is instrument(cache, registry)  # twice: no change
    ns = cache.namespace

    @cache.cached(ttl=60)
    def square(x: int) -> int:
        return x * x

    @cache.cached(ttl=60)
    def broken(x: int) -> int:
        raise ValueError(x)

    for _ in range(3):
        square(2)
    square(3)
    with pytest.raises(ValueError):
        broken(1)
    cache.set("k", 1, ttl=60)
    cache.get("k")
    samples = scrape(registry)
    fn, bad = (f"{g.__module__}.{g.__qualname__}" for g in (square, broken))
    assert value(samples, "cachewise_l1_hits_total", namespace=ns, function=fn) == 2
    assert value(samples, "cachewise_l1_hits_total", namespace=ns, function="explicit keys") == 1
    assert value(samples, "cachewise_loads_total", namespace=ns) == 2
    assert value(samples, "cachewise_load_errors_total", namespace=ns) == 1
    assert value(samples, "cachewise_misses_total", namespace=ns) == 3
    assert value(samples, "cachewise_l1_entries", namespace=ns) == 3
    assert value(samples, "cachewise_l1_max_entries", namespace=ns) == 10_000
    assert value(samples, "cachewise_write_behind_pending", namespace=ns) == 0
    loads = value(samples, "cachewise_load_seconds_count", namespace=ns, function=fn,
                  outcome="ok")  # fmt: skip
    assert loads == 2
    assert value(samples, "cachewise_load_seconds_count", namespace=ns, function=bad,
                 outcome="error") == 1  # fmt: skip
    assert value(samples, "cachewise_load_seconds_bucket", namespace=ns, function=fn,
                 outcome="ok", le="+Inf") == 2  # fmt: skip
    gets = value(samples, "cachewise_get_seconds_count", namespace=ns, function=fn, tier="load",
                 role="leader")  # fmt: skip
    assert gets == 2
    if cache._engine.backend is not None:
        closed = {"cachewise_breaker_state": "closed"}
        assert value(samples, "cachewise_breaker_state", namespace=ns, **closed) == 1
        assert value(samples, "cachewise_breaker_opens_total", namespace=ns) == 0
        assert value(samples, "cachewise_redis_errors_total", namespace=ns) == 0
        other = where()  # another process reads square(2) from Redis: an l2 read
        instrument(other, registry)

        @other.cached(ttl=60)
        def square(x: int) -> int:
            return x * x

        square(2)
        samples = scrape(registry)
        l2_reads = sum(
            v
            for (name, labels), v in samples.items()
            if name == "cachewise_get_seconds_count"
            and ("tier", "l2") in labels
            and ("function", fn) in labels
        )  # the lone caller's read, or a leader's that found it in Redis
        assert l2_reads == 1


def test_hits_are_counted_as_they_happen_once_exported(
    drive: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hits before instrumenting are the base; after it, a scrape never walks L1 (so it costs
    the same whatever the cache holds) and never takes the cache's lock."""
    cache = Cache(l1_maxsize=2)
    loads: list[int] = []

    def f(x: int) -> int:
        loads.append(x)
        return x

    g = cache.cached(ttl=60)(drive.function(f))
    for x in (1, 1, 1, 2, 3):  # the hit entry is evicted: its hits stay counted
        drive.run(g, x)
    cache.set("k", 1, ttl=60)
    cache.get("k")
    registry = CollectorRegistry()
    instrument(cache, registry)

    @cache.cached(ttl=60)
    def later(x: int) -> int:  # decorated after: counts too
        return x

    def no_walk(*args: Any) -> int:
        raise AssertionError("a scrape walked L1")

    monkeypatch.setattr(type(cache._engine.l1), "hits_of", no_walk)
    for x in (3, 3, 3):
        drive.run(g, x)
    later(1)
    later(1)
    cache.get("k")
    name = f"{g.__module__}.{g.__qualname__}"
    with cache._engine.lock:  # held by another thread, it would not be waited for
        samples = scrape(registry)
    assert value(samples, "cachewise_l1_hits_total", namespace="cachewise", function=name) == 5
    later_name = f"{later.__module__}.{later.__qualname__}"
    assert value(samples, "cachewise_l1_hits_total", namespace="cachewise",
                 function=later_name) == 1  # fmt: skip
    assert value(samples, "cachewise_l1_hits_total", namespace="cachewise",
                 function="explicit keys") == 2  # fmt: skip
    assert cache.stats()["l1_hits"] == 8 and len(loads) == 3


def test_bad_input() -> None:
    with pytest.raises(ConfigTypeError, match="needs a cachewise"):
        instrument(object())  # type: ignore[arg-type]
