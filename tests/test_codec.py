"""The envelope: round trips, and no byte string makes the decoder raise."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewise.codec import FORMAT, Envelope, SerializationError, pack, unpack

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip


@given(values, st.integers(0, 2**50), st.integers(0, 2**20), st.lists(st.text(), max_size=3))
def test_round_trip(value: Any, fresh: int, load_ms: int, tags: list[str]) -> None:
    env = Envelope(value, fresh, fresh + 5, load_ms, tuple(tags))
    back = unpack(pack(env, "k"))
    assert back is not None
    assert back.fresh_until_ms == fresh and back.tags == tuple(tags)
    assert msgpack.packb(back.value) == msgpack.packb(value)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_miss(raw: bytes) -> None:
    result = unpack(raw)
    assert result is None or isinstance(result, Envelope)


@given(values)
def test_truncated_envelopes_are_misses(value: Any) -> None:
    raw = pack(Envelope(value, 1, 2, 3, ("t",)), "k")
    for cut in range(len(raw)):
        assert unpack(raw[:cut]) is None


def test_other_versions_are_misses() -> None:
    assert unpack(msgpack.packb([FORMAT + 1, "v", 1, 2, 3, []])) is None
    assert unpack(msgpack.packb([FORMAT, "v", 1, 2, 3, []])) is not None


def test_unsupported_values_name_their_type() -> None:
    class Thing:
        pass

    with pytest.raises(SerializationError, match="Thing"):
        pack(Envelope({"x": [Thing()]}, 1, 2, 3, ()), "user:1")


def test_other_shapes_are_misses() -> None:
    for body in ({1: "v", 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}, "abcdef", [FORMAT, "v", 1, 2, 3],
                 [FORMAT, "v", 1.5, 2, 3, []], [FORMAT, "v", 1, 2, 3, [1]]):  # fmt: skip
        assert unpack(msgpack.packb(body)) is None
