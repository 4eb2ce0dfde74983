"""The bounded load test with faults (``tests/soak.py``): 60 s, invariants on every call."""

from __future__ import annotations

from . import soak


def test_sixty_seconds_of_mixed_load_with_faults_keeps_every_invariant() -> None:
    figures = soak.run(seconds=60.0, processes=3, threads=4)
    assert figures["exitcodes"] == [0, 0, 0]
    assert figures["errors"] == 0, figures["error_samples"]
    assert figures["stale_reads"] == 0, figures["stale_samples"]
    assert len(figures["faults"]) >= 8 and figures["breaker_opens"] >= 1
    assert figures["max_l1_size"] <= figures["l1_maxsize"]
    assert figures["max_rss_growth_mb"] < 50
    # Every call returns within a few Redis timeouts (0.25 s), whatever Redis is doing: a call
    # of 2 s (the lease_ttl) waited out a lease whose fill or release it was never told of.
    assert figures["latency_max_ms"] < 2000
    assert figures["operations"] > 10_000


def test_the_checker_finds_a_value_served_after_its_invalidation_settled() -> None:
    """The invariant check itself: one read returns version 0 after version 1 settled."""
    result = {
        "reads": [[1, 0, 10.0], [1, 1, 10.0], [1, 0, 9.0]],
        "writes": [[1, 1, 9.2]],
        "counts": {"read": 3, "write": 1, "set": 0, "get_many": 0, "errors": 0},
        "errors": [],
        "latencies": [0.001],
        "max_l1": 1,
        "rss_growth_kb": 1,
        "stats": {},
    }
    figures = soak._check([result], [], [0], 1, 1, 1)
    assert figures["stale_reads"] == 1 and figures["stale_samples"] == [(1, 0, 1, 10.0)]
    delayed = soak._check([result], [{"fault": "x", "start": 9.0, "end": 9.5}], [0], 1, 1, 1)
    assert delayed["stale_reads"] == 0  # an invalidation a fault delayed settles later
