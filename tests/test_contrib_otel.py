"""OpenTelemetry (``cachewise.contrib.otel``) through the SDK's in-memory span exporter and
metric reader: a span per load (current while the loader runs) and per read L1 did not answer,
none per hit, metrics through the metrics API; sync and async, in-process and with Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from cachewise import Cache, ConfigTypeError
from cachewise.contrib.otel import instrument
from cachewise.testing import FakeClock

from .conftest import Driver


@pytest.fixture
def otel() -> Iterator[tuple[TracerProvider, InMemorySpanExporter, MeterProvider, Any]]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield tracer_provider, spans, meter_provider, reader
    meter_provider.shutdown()


def test_spans_per_load_and_miss_never_per_hit(
    where: Callable[..., Cache], drive: Driver, otel: Any
) -> None:
    tracer_provider, spans, meter_provider, reader = otel
    cache = where()
    instrument(cache, tracer_provider=tracer_provider, meter_provider=meter_provider)
    instrument(cache, tracer_provider=tracer_provider, meter_provider=meter_provider)  # no-op
    tracer = tracer_provider.get_tracer("test")
    inner: list[Any] = []

    def load(x: int) -> int:
        with tracer.start_as_current_span("db.query") as span:  # the loader's own span
            inner.append(span.get_span_context())
        if x < 0:
            raise ValueError("negative")
        return x

    f = cache.cached(ttl=60)(drive.function(load))
    assert drive.run(f, 1) == 1
    assert drive.run(f, 1) == 1  # an L1 hit: no span
    with pytest.raises(ValueError):
        drive.run(f, -1)
    finished = spans.get_finished_spans()
    names = [s.name for s in finished]
    assert names.count("cachewise.load") == 2 and names.count("cachewise.get") == 1
    assert names.count("db.query") == 2
    load_span = next(s for s in finished if s.name == "cachewise.load")
    db = next(s for s in finished if s.name == "db.query")
    assert db.parent is not None and db.parent.span_id == load_span.context.span_id
    where_name = f"{f.__module__}.{f.__qualname__}"
    assert load_span.attributes["cachewise.function"] == where_name
    assert load_span.attributes["cachewise.key"] == f.key(1)
    failed = [s for s in finished if s.name == "cachewise.load"][1]
    assert failed.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in failed.events)
    get = next(s for s in finished if s.name == "cachewise.get")
    assert (
        get.attributes["cachewise.tier"] == "load" and get.attributes["cachewise.role"] == "leader"
    )
    assert get.end_time >= get.start_time

    metrics = {
        m.name: m
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    loads = metrics["cachewise.load.duration"].data.data_points
    assert sum(p.count for p in loads) == 2
    assert {p.attributes["cachewise.outcome"] for p in loads} == {"ok", "error"}
    [hits] = metrics["cachewise.l1_hits"].data.data_points
    assert hits.value == 1 and hits.attributes["cachewise.namespace"] == cache.namespace
    [misses] = metrics["cachewise.misses"].data.data_points
    assert misses.value == 2


def test_an_async_loader_span_is_current_while_it_is_awaited(
    where: Callable[..., Cache], otel: Any
) -> None:
    tracer_provider, spans, meter_provider, _ = otel
    cache = where()
    instrument(cache, tracer_provider=tracer_provider, meter_provider=meter_provider)
    seen: list[Any] = []

    @cache.cached(ttl=60)
    async def load(x: int) -> int:
        await asyncio.sleep(0.01)
        seen.append(trace.get_current_span().get_span_context().span_id)
        return x

    assert asyncio.run(load(3)) == 3
    load_span = next(s for s in spans.get_finished_spans() if s.name == "cachewise.load")
    assert seen == [load_span.context.span_id]


def test_nothing_is_observed_unless_instrumented() -> None:
    cache = Cache()
    assert cache._engine.observers == ()
    with pytest.raises(ConfigTypeError, match="needs a cachewise"):
        instrument(object())  # type: ignore[arg-type]


def test_a_refresh_says_the_stale_entry_was_served(otel: Any) -> None:
    tracer_provider, spans, meter_provider, _ = otel
    clock = FakeClock()
    cache = Cache(clock=clock, ttl_jitter=0, early_refresh_beta=0)
    instrument(cache, tracer_provider=tracer_provider, meter_provider=meter_provider)
    version = [1]

    @cache.cached(ttl=10, stale_ttl=60)
    def current(x: int) -> int:
        return version[0]

    assert current(1) == 1
    clock.advance(11)
    version[0] = 2
    assert current(1) == 1  # served stale; the refresh runs beside
    for _ in range(200):
        if len([s for s in spans.get_finished_spans() if s.name == "cachewise.load"]) == 2:
            break
        time.sleep(0.01)  # the refresh runs in the background
    first, refresh = [s for s in spans.get_finished_spans() if s.name == "cachewise.load"]
    assert first.attributes["cachewise.reason"] == "miss"
    assert refresh.attributes["cachewise.reason"] == "stale"
    assert refresh.attributes["cachewise.stale_served"] is True
