"""Write scenarios, run from ``run.py`` against its redis-server: what a write-behind call costs the
caller, and what flushing many writes costs the store, next to write-through of the same writes.

The "store" is a Redis hash written through a client of its own (one round trip per store call)
plus ``STORE_LATENCY`` of simulated database time, for both strategies; its calls are counted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
import redis.connection

from _method import interleaved, ratio, summarize
from cachewise import Cache

_store: dict[str, Any] = {"calls": 0, "latency": 0.0}
STORE_LATENCY = 0.0005  # what a database write adds to its round trip, in the flush scenario


def store_row(row: int, value: int) -> None:
    """The store write (module level: the durable queue names writers by module and name)."""
    _store["calls"] += 1
    if _store["latency"]:
        time.sleep(_store["latency"])
    _store["client"].hset(_store["key"], str(row), value)


def _round_trips(fn: Any, number: int) -> float:
    """Commands this thread sends to Redis per call of ``fn`` (pipelines and scripts are one)."""
    me = threading.get_ident()
    sent = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == me:
            sent[0] += 1
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        for _ in range(number):
            fn()
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
    return sent[0] / number


def _caches(url: str, ns: str, **options: Any) -> tuple[Cache, Any, Any]:
    cache = Cache(url, namespace=ns, **options)

    @cache.cached(ttl=3600)
    def get_row(row: int) -> Any:
        return None

    through = cache.write_through(get_row, args=lambda r, v: r, value=lambda r, v: v)(store_row)
    behind = cache.write_behind(get_row, args=lambda r, v: r, value=lambda r, v: v)(store_row)
    return cache, through, behind


def _enqueue_command(cache: Cache, call: Any) -> tuple[Any, ...]:
    """The arguments of the EVALSHA that ``call()`` sends on ``cache``'s sync client."""
    client = cache._engine.backend.sync_client()
    sent: list[tuple[Any, ...]] = []
    original = client.evalsha

    def recording(*args: Any) -> Any:
        sent.append(args)
        return original(*args)

    client.evalsha = recording
    try:
        call()
    finally:
        del client.evalsha  # the class's method again
    (args,) = sent
    return args


def call_cost(url: str, rounds: int, number: int) -> dict[str, Any]:
    """The caller's path of one write-behind call, as a multiple of one PING round trip.

    The flusher is stopped while this runs, so the figure is the caller's path alone (the
    queued writes are deleted afterwards).
    """
    raw = redis.Redis.from_url(url)
    _store.update(client=raw, key="bench-call-store")
    cache, through, behind = _caches(url, "bench-wb-call")
    for queue in cache._queues:  # measure the enqueue, not the flusher competing for the CPU
        queue.stop()
        queue.join_sync(5)
    counter = iter(range(10**9))

    def timed(fn: Any) -> float:
        started = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - started) / number

    behind(0, 1)
    # The floor of issue 20's row: a raw XADD of the entry one write-behind call queues (its
    # fields as the queue holds them), to a stream of its own.
    stream = next(raw.scan_iter(match="bench-wb-call*", _type="stream"))
    [(_, fields)] = raw.xrevrange(stream, count=1)
    # And the same XADD from a script: what running any script costs on top of the command.
    only_xadd = raw.register_script("return redis.call('XADD', KEYS[1], '*', unpack(ARGV))")
    flat = [part for pair in fields.items() for part in pair]
    # The floor of a call that keeps the durability contract: the very EVALSHA one call sends
    # (the queue, the pending record and the cache write in one atomic script), its arguments
    # taken from a call and sent again through redis-py, with none of cachewise's Python.
    enqueue = _enqueue_command(cache, lambda: behind(1, 1))
    variants = {
        "PING": raw.ping,
        "XADD of the same entry": lambda: raw.xadd("bench-call-xadd", fields),
        "a script that only XADDs it": lambda: only_xadd(keys=["bench-call-xadd"], args=flat),
        "the call's enqueue script alone": lambda: raw.evalsha(*enqueue),
        "write_behind call": lambda: behind(next(counter) % 1000, 1),
        "write_through call": lambda: through(next(counter) % 1000, 1),
    }
    per_round = interleaved(variants, rounds, timed)
    trips = _round_trips(variants["write_behind call"], 200)
    cache.close(timeout=1)  # before its queue is deleted, which it would report as lost
    raw.delete(*raw.keys("bench-wb-call*"), "bench-call-store", "bench-call-xadd")
    return {
        "rounds": rounds,
        "calls": number,
        "round_trips_per_write_behind_call": trips,
        "ratios": {
            "write_behind / PING": ratio(per_round, "write_behind call", "PING"),
            "write_behind / XADD": ratio(per_round, "write_behind call", "XADD of the same entry"),
            "XADD / PING": ratio(per_round, "XADD of the same entry", "PING"),
            "script XADD / XADD": ratio(
                per_round, "a script that only XADDs it", "XADD of the same entry"
            ),
            "enqueue script / XADD": ratio(
                per_round, "the call's enqueue script alone", "XADD of the same entry"
            ),
            "enqueue script / PING": ratio(per_round, "the call's enqueue script alone", "PING"),
            "write_behind / enqueue script": ratio(
                per_round, "write_behind call", "the call's enqueue script alone"
            ),
            "write_through / PING": ratio(per_round, "write_through call", "PING"),
        },
    }


def flush_throughput(
    url: str, rounds: int, writes: int = 10_000, keys: int = 1_000
) -> dict[str, Any]:
    """``writes`` writes to ``keys`` keys: write-through, and write-behind until flushed."""
    raw = redis.Redis.from_url(url)
    runs: dict[str, list[dict[str, float]]] = {"write_through": [], "write_behind": []}
    for n in range(rounds):
        for strategy in (["write_through", "write_behind"] if n % 2 else
                         ["write_behind", "write_through"]):  # fmt: skip
            ns = f"bench-wb-flush-{n}-{strategy}"
            _store.update(client=raw, key=f"{ns}-store", calls=0, latency=STORE_LATENCY)
            cache, through, behind = _caches(url, ns, write_behind_batch_size=500)
            fn = through if strategy == "write_through" else behind
            started = time.perf_counter()
            for i in range(writes):
                fn(i % keys, i)
            called = time.perf_counter() - started
            cache.flush(timeout=120)
            total = time.perf_counter() - started
            last = {int(k): int(v) for k, v in raw.hgetall(f"{ns}-store").items()}
            assert last == {k: writes - keys + k for k in range(keys)}, "a last value is missing"
            runs[strategy].append(
                {"store_calls": _store["calls"], "callers_s": called, "until_stored_s": total}
            )
            cache.close(timeout=5)
            raw.delete(*raw.keys(f"{ns}*"))
    through_s = [r["until_stored_s"] for r in runs["write_through"]]
    behind_s = [r["until_stored_s"] for r in runs["write_behind"]]
    _store["latency"] = 0.0
    return {
        "rounds": rounds,
        "store_latency_s": STORE_LATENCY,
        "writes": writes,
        "keys": keys,
        "store_calls": {k: summarize([r["store_calls"] for r in v]) for k, v in runs.items()},
        "callers_s": {k: summarize([r["callers_s"] for r in v]) for k, v in runs.items()},
        "until_stored_s": {k: summarize([r["until_stored_s"] for r in v]) for k, v in runs.items()},
        "behind_over_through_until_stored": summarize(
            [b / t for b, t in zip(behind_s, through_s, strict=True)]
        ),
    }
