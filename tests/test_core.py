"""The decision core, with plain values: no clock, no threads, no loop."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewise.core import (
    XFETCH_HORIZON,
    Decision,
    Shared,
    decide,
    is_fresh,
    make_entry,
    serves_at_once,
    use_shared,
)


def entry(
    now: float = 0.0, ttl: float = 10.0, stale: float = 0.0, load_time: float = 0.0, beta=1.0
):
    return make_entry(
        "v", now=now, ttl=ttl, stale_ttl=stale, load_time=load_time, jitter=0.0,
        jitter_draw=0.5, beta=beta, full_key="k", l1_key="k",
    )  # fmt: skip


def test_missing_loads_or_waits() -> None:
    assert decide(None, 0.0, loading=False, beta=1, draw=0.5) is Decision.LOAD
    assert decide(None, 0.0, loading=True, beta=1, draw=0.5) is Decision.WAIT


def test_fresh_is_served() -> None:
    e = entry()
    assert decide(e, 5.0, loading=False, beta=0, draw=0.5) is Decision.SERVE
    assert is_fresh(e, 9.99) and not is_fresh(e, 10.0)


def test_expired_without_stale_window_is_gone() -> None:
    e = entry(ttl=10)
    assert decide(e, 10.0, loading=False, beta=0, draw=0.5) is Decision.LOAD
    assert decide(e, 10.0, loading=True, beta=0, draw=0.5) is Decision.WAIT


def test_stale_window_serves_and_refreshes_once() -> None:
    e = entry(ttl=10, stale=5)
    assert decide(e, 12.0, loading=False, beta=0, draw=0.5) is Decision.REFRESH
    assert decide(e, 12.0, loading=True, beta=0, draw=0.5) is Decision.SERVE_STALE
    assert decide(e, 15.0, loading=False, beta=0, draw=0.5) is Decision.LOAD


def test_jitter_only_shortens() -> None:
    for draw in (0.0, 0.5, 1.0):
        e = make_entry("v", now=0, ttl=100, stale_ttl=0, load_time=0, jitter=0.1,
                       jitter_draw=draw, beta=0, full_key="k", l1_key="k")  # fmt: skip
        assert 90.0 <= e.fresh_until <= 100.0
    spread = {
        make_entry("v", now=0, ttl=100, stale_ttl=0, load_time=0, jitter=0.1, jitter_draw=d,
                   beta=0, full_key="k", l1_key="k").fresh_until
        for d in (0.1, 0.9)
    }  # fmt: skip
    assert len(spread) == 2


@given(
    now=st.floats(0, 10, exclude_max=True),
    draw=st.floats(1e-12, 1.0),
    load_time=st.floats(0, 5),
    beta=st.floats(0.1, 3),
)
def test_xfetch_matches_the_formula(now: float, draw: float, load_time: float, beta: float) -> None:
    e = entry(ttl=10, load_time=load_time, beta=beta)
    got = decide(e, now, loading=False, beta=beta, draw=draw)
    expected = now - load_time * beta * math.log(draw) >= e.fresh_until
    if now < e.early_at:
        # Before the zone: the first half of the fresh life, or a refresh chance below
        # exp(-HORIZON), treated as zero.
        assert got is Decision.SERVE
        assert not expected or -math.log(draw) >= XFETCH_HORIZON or now < e.fresh_until / 2
    else:
        assert got is (Decision.REFRESH if expected else Decision.SERVE)


def test_xfetch_never_refreshes_while_a_load_runs() -> None:
    e = entry(ttl=10, load_time=5, beta=1)
    assert decide(e, 9.9, loading=True, beta=1, draw=1e-9) is Decision.SERVE


def test_xfetch_more_likely_the_longer_the_load() -> None:
    draws = [i / 1000 for i in range(1, 1001)]

    def share(load_time: float) -> float:
        e = entry(ttl=10, load_time=load_time, beta=1)
        return sum(decide(e, 9.0, loading=False, beta=1, draw=d) is Decision.REFRESH for d in draws)

    assert share(0.1) < share(1.0) < share(5.0)
    # exp(-1/1) of the draws refresh with a 1 s load one second before expiry.
    assert share(1.0) == pytest.approx(1000 * math.exp(-1), abs=2)


def test_no_early_refresh_in_the_first_half_of_the_fresh_life() -> None:
    e = entry(now=0, ttl=10, load_time=5, beta=3)  # the formula alone would draw from the start
    assert e.early_at == 5.0
    assert decide(e, 4.9, loading=False, beta=3, draw=1e-12) is Decision.SERVE
    assert decide(e, 5.0, loading=False, beta=3, draw=1e-12) is Decision.REFRESH


# -- the ACQUIRE reply, decoded once ----------------------------------------------------------


def test_lease_replies_decode_into_what_they_mean() -> None:
    from cachewise.core import Busy, Filled, Won, lease_reply

    assert lease_reply([1, b"env"]) == Filled(b"env")
    assert lease_reply([2, b"", b"", []]) == Won(None, None, ())
    assert lease_reply([2, b"old", b"pending", [b"v1", "v2"]]) == Won(
        b"old", b"pending", ("v1", "v2")
    )
    assert lease_reply([3, b"1500"]) == Busy(1500)
    with pytest.raises(ValueError, match="status 7"):
        lease_reply([7])


@given(
    now=st.floats(-5, 30),
    ttl=st.floats(0.01, 20),
    stale=st.floats(0, 20),
    load_time=st.floats(0, 10),
    beta=st.floats(0, 3),
    draw=st.floats(1e-12, 1.0),
    loading=st.booleans(),
)
def test_the_inlined_hit_test_only_serves_what_decide_serves(
    now: float, ttl: float, stale: float, load_time: float, beta: float, draw: float,
    loading: bool,
) -> None:  # fmt: skip
    """The generated wrapper serves an L1 entry on ``serves_at_once`` alone: ``decide`` must
    agree in every case it does."""
    e = entry(ttl=ttl, stale=stale, load_time=load_time, beta=beta)
    if serves_at_once(e, now):
        assert decide(e, now, loading=loading, beta=beta, draw=draw) is Decision.SERVE


def test_what_a_leader_does_with_the_shared_entry() -> None:
    fresh, stale = 1_000.0, 6_000.0

    def use(now: float, replacing: float | None = None) -> Shared:
        return use_shared(fresh, stale, now, replacing_ms=replacing, uncertainty_ms=1.0)

    assert use(999) is Shared.FRESH
    assert use(1_000) is Shared.STALE and use(5_999) is Shared.STALE
    assert use(6_000) is Shared.UNUSABLE
    # A refresh: the entry it replaces (fresh until 1000) is not taken as a new value; one
    # refreshed by someone else (fresh until well after it) is; stale is never served.
    assert use(500, replacing=1_000) is Shared.UNUSABLE
    assert use(500, replacing=995) is Shared.UNUSABLE  # within the clocks' margin
    assert use(500, replacing=900) is Shared.FRESH
    assert use(2_000, replacing=500) is Shared.UNUSABLE


def test_what_another_process_event_does_to_l1() -> None:
    from cachewise.core import L1Effect, l1_effect
    from cachewise.events import Fill, Invalidated, Released, Reset

    assert l1_effect(Fill("me", "k", b"v"), "me") is L1Effect.NOTHING  # its own event
    assert l1_effect(Fill("other", "k", b"v"), "me") is L1Effect.REPLACE
    assert l1_effect(Fill("other", "k"), "me") is L1Effect.DROP  # too large to travel
    assert l1_effect(Invalidated("other", ("k",)), "me") is L1Effect.DROP_NAMED
    assert l1_effect(Reset("other"), "me") is L1Effect.FLUSH
    assert l1_effect(Released("other", "k"), "me") is L1Effect.NOTHING


def test_a_stale_copy_waits_for_its_loaders_refresh_until_refresh_at() -> None:
    """An entry taken from another process' load is served stale until ``refresh_at`` before
    this process refreshes it; an entry of its own load refreshes at once."""
    own = entry(ttl=10, stale=60)
    assert decide(own, 10.5, loading=False, beta=0, draw=0.5) is Decision.REFRESH
    copy = entry(ttl=10, stale=60)
    copy.refresh_at = 12.0
    assert decide(copy, 10.5, loading=False, beta=0, draw=0.5) is Decision.SERVE_STALE
    assert decide(copy, 12.0, loading=False, beta=0, draw=0.5) is Decision.REFRESH
    assert decide(copy, 70.0, loading=False, beta=0, draw=0.5) is Decision.LOAD
