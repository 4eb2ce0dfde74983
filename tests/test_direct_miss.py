"""A sync miss of a cache without Redis is carried out without a plan (``Fills.load_alone``):
the same calls must give the same answers and the same counts as through the plan, which an
attached observer keeps every read on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise import Cache
from cachewise.engine.values import _UNREAD
from cachewise.testing import FakeClock

KEYS = st.integers(min_value=0, max_value=5)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), KEYS),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 5.0, 20.0])),
        st.tuples(st.just("invalidate"), KEYS),
        st.tuples(st.just("tag"), st.sampled_from(["even", "odd"])),
    ),
    max_size=40,
)
COUNTS = ["misses", "loads", "load_errors", "l1_hits", "l1_size", "stale_served", "refreshes"]


class Watching:
    """An observer that only watches: attached, it keeps every read on the plan."""

    def __init__(self) -> None:
        self.loads = 0

    def around_load(
        self, where: str, key: str, reason: str, loader: Callable[[], Any]
    ) -> Callable[[], Any]:
        return loader

    def loaded(self, where: str, seconds: float, error: BaseException | None) -> None:
        self.loads += 1

    def read(self, where: str, seconds: float, tier: str, role: str) -> None:
        pass


def _run(ops: list[tuple[str, Any]], observed: bool) -> tuple[list[Any], dict[str, Any], int]:
    clock = FakeClock()
    cache = Cache(namespace="direct", clock=clock, ttl_jitter=0, early_refresh_beta=0)
    engine = cache._engine
    direct = 0
    plain_load_alone = engine.load_alone

    def load_alone(*args: Any) -> Any:
        nonlocal direct
        try:
            value = plain_load_alone(*args)
        except ValueError:
            direct += 1
            raise
        direct += value is not _UNREAD
        return value

    engine.load_alone = load_alone  # type: ignore[method-assign]
    if observed:
        engine.observers = (Watching(),)

    @cache.cached(
        ttl=10,
        unless=lambda v: v == 30,
        tags=lambda k: ["even" if k % 2 == 0 else "odd"],
    )
    def f(k: int) -> int:
        if k == 5:
            raise ValueError(k)
        return k * 10

    answers: list[Any] = []
    for op, arg in ops:
        if op == "call":
            try:
                answers.append(f(arg))
            except ValueError as exc:
                answers.append(("raised", exc.args))
        elif op == "advance":
            clock.advance(arg)
        elif op == "invalidate":
            f.invalidate(arg)
        else:
            cache.invalidate_tags(arg)
    stats = cache.stats()
    cache.close(timeout=5)
    return answers, {name: stats[name] for name in COUNTS}, direct


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_a_miss_without_a_plan_answers_and_counts_as_the_plan(
    ops: list[tuple[str, Any]],
) -> None:
    direct_answers, direct_counts, direct = _run(ops, observed=False)
    plan_answers, plan_counts, planned = _run(ops, observed=True)
    assert direct_answers == plan_answers
    assert direct_counts == plan_counts
    assert planned == 0  # the observer kept every read on the plan
    misses = sum(1 for op, _ in ops if op == "call") - direct_counts["l1_hits"]
    if misses:  # and without it, the misses went without one (none joins a flight here)
        assert direct == misses


def test_an_async_miss_keeps_its_plan() -> None:
    """Only sync reads go without a plan: an async load runs in a task of its own, so that a
    cancelled caller never cancels the load its waiters share."""
    import asyncio

    cache = Cache(namespace="direct-async")
    calls: list[Any] = []
    plain = cache._engine.load_alone
    cache._engine.load_alone = lambda *a: calls.append(a) or plain(*a)  # type: ignore[method-assign]

    @cache.cached(ttl=10)
    async def g(k: int) -> int:
        return k

    assert asyncio.run(g(1)) == 1
    assert calls == []
    cache.close(timeout=5)


def test_a_miss_that_load_alone_leaves_to_the_plan_asks_it_once() -> None:
    """When ``load_alone`` does not apply (an observer is attached), the read goes to the plan
    without asking it again (the compiled ``read_sync`` hands its answer over)."""
    cache = Cache(namespace="direct-once")
    engine = cache._engine
    engine.observers = (Watching(),)
    answers: list[Any] = []
    plain = engine.load_alone

    def load_alone(*args: Any) -> Any:
        answers.append(plain(*args))
        return answers[-1]

    engine.load_alone = load_alone  # type: ignore[method-assign]

    @cache.cached(ttl=10)
    def f(k: int) -> int:
        return k * 10

    assert f(1) == 10
    assert answers == [_UNREAD]
    assert cache.stats()["loads"] == 1
    assert f(1) == 10  # an L1 hit: no read at all
    assert answers == [_UNREAD]
    cache.close(timeout=5)
