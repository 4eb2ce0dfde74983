"""OpenTelemetry traces and metrics of caches (``pip install 'cachewise[otel]'``).

::

    from cachewise.contrib.otel import instrument

    instrument(cache)     # the global tracer and meter providers; or tracer_provider=...

Traces: a span ``cachewise.load`` around each loader run, current while it runs (the loader's
own spans, a database query, nest under it), with the function and key, why it loads
(``cachewise.reason``: ``miss``, ``stale``: a refresh while callers are served the stale entry,
so ``cachewise.stale_served`` is true, or ``early``: a refresh before expiry), and the error if
it raised; a span ``cachewise.get`` for each read L1 did not answer, with the function, the tier
that answered (``l2``: Redis; ``load``: a loader, this caller's or the one it waited for) and
the single-flight role (``leader``, ``waiter``, ``alone``). L1 hits make no span: that would
cost more than the hit.

Metrics, through the OpenTelemetry metrics API for those who do not run Prometheus: histograms
``cachewise.load.duration`` and ``cachewise.get.duration`` (seconds), and the counters of
``stats()`` as observable counters ``cachewise.<name>``, read when the SDK collects.

Only the API is imported; with no SDK configured, its tracer and meter do nothing. A cache that
was never instrumented pays nothing at all (no observer: one truth test per load or miss).
"""

from __future__ import annotations

import inspect
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Status, StatusCode

from .. import _hits
from ..cache import Cache
from ..errors import ConfigTypeError

__all__ = ["instrument"]

_SCOPE = "cachewise"
#: ``stats()`` counters exported as observable counters (the rest are gauges or summaries).
_COUNTERS = (
    "l1_hits", "l2_hits", "misses", "loads", "load_errors", "refreshes", "refresh_errors",
    "stale_served", "coalesced_waits", "lease_waits", "lease_wait_timeouts", "redis_errors",
    "invalidations", "invalidations_received", "l1_flushes", "evictions",
    "write_behind_dead_lettered", "write_behind_requeued", "write_behind_retried",
    "write_behind_lost",
)  # fmt: skip


class _Observer:
    """One cache's loads and reads, as spans and histogram records."""

    def __init__(self, namespace: str, tracer: trace.Tracer, meter: metrics.Meter) -> None:
        self.namespace = namespace
        self.tracer = tracer
        self.load_duration = meter.create_histogram(
            "cachewise.load.duration", unit="s", description="Loader runs."
        )
        self.get_duration = meter.create_histogram(
            "cachewise.get.duration", unit="s", description="Reads L1 did not answer."
        )

    def around_load(
        self, where: str, key: str, reason: str, loader: Callable[[], Any]
    ) -> Callable[[], Any]:
        attributes: dict[str, str | bool] = {
            "cachewise.namespace": self.namespace, "cachewise.function": where,
            "cachewise.key": key, "cachewise.reason": reason,
            "cachewise.stale_served": reason == "stale", "cachewise.role": "leader",
        }  # fmt: skip
        tracer = self.tracer

        def traced() -> Any:
            # The span is current while the loader runs, and for an async loader while it is
            # awaited (its context is the task's, which the span was made current in).
            span = tracer.start_span("cachewise.load", attributes=attributes)
            token = trace.use_span(span, end_on_exit=False)
            token.__enter__()
            try:
                result = loader()
            except BaseException as exc:
                _failed(span, exc)
                token.__exit__(None, None, None)
                raise
            if inspect.isawaitable(result):
                token.__exit__(None, None, None)
                return _awaited(span, result)
            span.end()
            token.__exit__(None, None, None)
            return result

        return traced

    def loaded(self, where: str, seconds: float, error: BaseException | None) -> None:
        self.load_duration.record(seconds, {
            "cachewise.namespace": self.namespace, "cachewise.function": where,
            "cachewise.outcome": "ok" if error is None else "error",
        })  # fmt: skip

    def read(self, where: str, seconds: float, tier: str, role: str) -> None:
        attributes = {
            "cachewise.namespace": self.namespace, "cachewise.function": where,
            "cachewise.tier": tier, "cachewise.role": role,
        }  # fmt: skip
        self.get_duration.record(seconds, attributes)
        end = time.time_ns()
        span = self.tracer.start_span(
            "cachewise.get", attributes=attributes, start_time=end - int(seconds * 1e9)
        )
        span.end(end_time=end)


async def _awaited(span: trace.Span, result: Any) -> Any:
    with trace.use_span(span, end_on_exit=False):
        try:
            value = await result
        except BaseException as exc:
            _failed(span, exc)
            raise
    span.end()
    return value


def _failed(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    span.end()


_INSTRUMENTED: weakref.WeakSet[Cache] = weakref.WeakSet()


def instrument(
    cache: Cache,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> None:
    """Trace ``cache``'s loads and misses and export its metrics through OpenTelemetry (the
    global providers unless given); instrumenting twice changes nothing."""
    if not isinstance(cache, Cache):
        raise ConfigTypeError(f"instrument() needs a cachewise.Cache, got {cache!r}")
    if cache in _INSTRUMENTED:
        return
    tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
    meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
    engine = cache._engine
    engine.observers = (*engine.observers, _Observer(cache.namespace, tracer, meter))
    _hits.start(engine)  # stats() then counts L1 hits per function, never walking L1
    ref = weakref.ref(cache)
    taken: list[Any] = [0.0, {}]  # one stats() per collection, not one per counter

    def reader(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            alive = ref()
            if alive is None:
                return []
            if time.monotonic() - taken[0] > 0.5:
                taken[:] = [time.monotonic(), alive.stats()]
            return [Observation(taken[1][name], {"cachewise.namespace": alive.namespace})]

        return observe

    for name in _COUNTERS:
        meter.create_observable_counter(f"cachewise.{name}", callbacks=[reader(name)])
    _INSTRUMENTED.add(cache)
