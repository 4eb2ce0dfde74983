"""A model-based test: the cache against a dict with expiry times, driven by the fake clock."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cachewise import Cache
from cachewise.testing import FakeClock

KEYS = st.sampled_from(["a", "b", "c", "user:1"])
INTS = st.integers(-(2**63), 2**64 - 1)  # what msgpack encodes (others: SerializationError)
VALUES = st.one_of(st.none(), INTS, st.text(max_size=3), st.lists(INTS, max_size=2))
TTLS = st.floats(min_value=0.5, max_value=20)


class CacheModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cache = Cache(clock=self.clock, ttl_jitter=0, early_refresh_beta=0, l1_maxsize=100)
        self.model: dict[str, tuple[Any, float]] = {}
        self.loads = 0

    def _live(self, key: str) -> bool:
        return key in self.model and self.clock() < self.model[key][1]

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key: str, value: Any, ttl: float) -> None:
        self.cache.set(key, value, ttl=ttl)
        self.model[key] = (value, self.clock() + ttl)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        expected = self.model[key][0] if self._live(key) else "<miss>"
        assert self.cache.get(key, default="<miss>") == expected

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def get_or_load(self, key: str, value: Any, ttl: float) -> None:
        live = self._live(key)
        expected = self.model[key][0] if live else value

        def load() -> Any:
            self.loads += 1
            return value

        before = self.loads
        assert self.cache.get_or_load(key, load, ttl=ttl) == expected
        assert self.loads == before + (0 if live else 1)
        if not live:
            self.model[key] = (value, self.clock() + ttl)

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        assert self.cache.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(keys=st.lists(KEYS, max_size=3))
    def invalidate(self, keys: list[str]) -> None:
        self.cache.invalidate(*keys)
        for key in keys:
            self.model.pop(key, None)

    @rule(keys=st.lists(KEYS, max_size=4, unique=True))
    def get_many(self, keys: list[str]) -> None:
        expected = {k: self.model[k][0] for k in keys if self._live(k)}
        assert self.cache.get_many(keys) == expected

    @rule(seconds=st.floats(min_value=0, max_value=15))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def bounded(self) -> None:
        assert self.cache.stats()["l1_size"] <= 100


CacheModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestCacheModel = CacheModel.TestCase
