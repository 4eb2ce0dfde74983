"""Prometheus metrics of caches (``pip install 'cachewise[prometheus]'``).

::

    from prometheus_client import start_http_server
    from cachewise.contrib.prometheus import instrument

    instrument(cache)            # the default registry; instrument(cache, registry=...) else
    start_http_server(9100)

Every counter of ``stats()`` is exported as ``cachewise_<name>_total`` (L1 hits also per cached
function), the L1's size and bound, write-behind writes pending and the circuit breaker's state
as gauges, and two histograms in seconds: ``cachewise_load_seconds`` (each load, by function and
outcome) and ``cachewise_get_seconds`` (each read L1 did not answer, by function, tier and
single-flight role). Labels: ``namespace``, and ``function`` where the figure is per function.

A scrape costs the same whatever the cache holds, and never takes the cache's lock: a cache
counts its L1 hits per function as they happen (``cachewise._hits``: from the start where the C
extension is built; in pure Python once instrumented, a cost on each hit only exported caches
pay) instead of summing its entries'. Counters
exported only ever grow (a figure a concurrent change makes momentarily lower is held).
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from .. import _hits
from ..cache import Cache
from ..errors import ConfigTypeError

__all__ = ["PrometheusExporter", "instrument"]

#: ``stats()`` figures that are gauges (what is, not what happened); every other number counts.
_GAUGES = {
    "l1_size": ("cachewise_l1_entries", "Entries held in L1 now."),
    "l1_maxsize": ("cachewise_l1_max_entries", "The L1's bound (l1_maxsize)."),
    "write_behind_pending": (
        "cachewise_write_behind_pending",
        "Write-behind writes queued by this process and not yet in the store.",
    ),
}
_NOT_EXPORTED = {"l1_hits", "load_latency", "miss_latency", "breaker_state", "breaker_opens"}
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Histogram:
    """Bucket counts and a sum, for ``HistogramMetricFamily`` (one per label set)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class _Observer:
    """One cache's loads and reads, recorded into its exporter's histograms."""

    def __init__(self, exporter: PrometheusExporter, namespace: str) -> None:
        self.exporter = exporter
        self.namespace = namespace

    def around_load(
        self, where: str, key: str, reason: str, loader: Callable[[], Any]
    ) -> Callable[[], Any]:
        return loader

    def loaded(self, where: str, seconds: float, error: BaseException | None) -> None:
        outcome = "ok" if error is None else "error"
        self.exporter.observe("load", (self.namespace, where, outcome), seconds)

    def read(self, where: str, seconds: float, tier: str, role: str) -> None:
        self.exporter.observe("get", (self.namespace, where, tier, role), seconds)


class PrometheusExporter(Collector):
    """The metrics of every cache instrumented into one registry."""

    def __init__(self) -> None:
        self._caches: weakref.WeakSet[Cache] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {"load": {}, "get": {}}
        self._high: dict[tuple[str, ...], float] = {}

    def add(self, cache: Cache) -> None:
        engine = cache._engine
        if any(isinstance(o, _Observer) and o.exporter is self for o in engine.observers):
            return
        engine.observers = (*engine.observers, _Observer(self, cache.namespace))
        _hits.start(engine)  # L1 hits counted as they happen: a scrape never walks L1
        self._caches.add(cache)

    def observe(self, kind: str, labels: tuple[str, ...], seconds: float) -> None:
        with self._lock:
            histogram = self._histograms[kind].get(labels)
            if histogram is None:
                histogram = self._histograms[kind][labels] = _Histogram()
            histogram.observe(seconds)

    def _grown(self, key: tuple[str, ...], value: float) -> float:
        """``value``, or the last one exported if that was higher (counters never go down)."""
        value = max(value, self._high.get(key, 0))
        self._high[key] = value
        return value

    def collect(self) -> Iterator[Any]:
        counters: dict[str, CounterMetricFamily] = {}
        gauges = {
            name: GaugeMetricFamily(metric, text, labels=["namespace"])
            for name, (metric, text) in _GAUGES.items()
        }
        hits = CounterMetricFamily(
            "cachewise_l1_hits", "Reads answered by L1.", labels=["namespace", "function"]
        )
        breaker = StateSetMetricFamily(
            "cachewise_breaker_state", "The circuit breaker's state.", labels=["namespace"]
        )
        for cache in list(self._caches):
            ns = cache.namespace
            stats = cache.stats()
            for where, count in cache._engine.function_hits().items():
                hits.add_metric([ns, where], self._grown(("l1_hits", ns, where), count))
            for name, value in stats.items():
                if name in _NOT_EXPORTED or not isinstance(value, int | float):
                    continue
                if name in gauges:
                    gauges[name].add_metric([ns], value)
                    continue
                family = counters.get(name)
                if family is None:
                    family = counters[name] = CounterMetricFamily(
                        f"cachewise_{name}", f"cachewise stats() {name}.", labels=["namespace"]
                    )
                family.add_metric([ns], self._grown((name, ns), value))
            if "breaker_state" in stats:
                state = stats["breaker_state"]
                breaker.add_metric([ns], {s: s == state for s in ("closed", "half-open", "open")})
                opens = counters.get("breaker_opens")
                if opens is None:
                    opens = counters["breaker_opens"] = CounterMetricFamily(
                        "cachewise_breaker_opens", "Times the circuit breaker opened.",
                        labels=["namespace"],
                    )  # fmt: skip
                opens.add_metric([ns], self._grown(("breaker_opens", ns), stats["breaker_opens"]))
        yield hits
        yield from counters.values()
        yield from gauges.values()
        if breaker.samples:
            yield breaker
        yield from self._histogram_families()

    def _histogram_families(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            loads = {k: (h.buckets(), h.total) for k, h in self._histograms["load"].items()}
            gets = {k: (h.buckets(), h.total) for k, h in self._histograms["get"].items()}
        load = HistogramMetricFamily(
            "cachewise_load_seconds", "Loads (the loader's run), by function and outcome.",
            labels=["namespace", "function", "outcome"],
        )  # fmt: skip
        for labels, (buckets, total) in loads.items():
            load.add_metric(list(labels), buckets, total)
        get = HistogramMetricFamily(
            "cachewise_get_seconds",
            "Reads L1 did not answer, by function, tier (l2, load) and role (leader, waiter, "
            "alone).",
            labels=["namespace", "function", "tier", "role"],
        )
        for labels, (buckets, total) in gets.items():
            get.add_metric(list(labels), buckets, total)
        yield load
        yield get


_EXPORTERS: weakref.WeakKeyDictionary[CollectorRegistry, PrometheusExporter] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def instrument(cache: Cache, registry: CollectorRegistry = REGISTRY) -> PrometheusExporter:
    """Export ``cache``'s metrics through ``registry`` (one exporter per registry serves every
    cache instrumented into it; instrumenting twice changes nothing)."""
    if not isinstance(cache, Cache):
        raise ConfigTypeError(f"instrument() needs a cachewise.Cache, got {cache!r}")
    with _LOCK:
        exporter = _EXPORTERS.get(registry)
        if exporter is None:
            exporter = _EXPORTERS[registry] = PrometheusExporter()
            registry.register(exporter)
        exporter.add(cache)
    return exporter
