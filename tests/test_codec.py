"""The envelope: round trips, and no byte string makes the decoder raise."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import decimal
import enum
import math
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewise import codec, valuetypes
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
    versions = tuple(f"v{i}" for i in range(len(tags)))
    env = Envelope(value, fresh, fresh + 5, load_ms, tuple(tags), versions)
    back = unpack(pack(env, "k"))
    assert back is not None
    assert back.fresh_until_ms == fresh and back.tags == tuple(tags)
    assert back.versions == versions
    assert msgpack.packb(back.value) == msgpack.packb(value)


def test_tags_without_their_versions_are_a_miss() -> None:
    """An entry must record one version per tag: one that does not could never be checked."""
    assert unpack(pack(Envelope(1, 1, 2, 3, ("t",), ()), "k")) is None
    assert unpack(pack(Envelope(1, 1, 2, 3, (), ("v",)), "k")) is None
    assert unpack(pack(Envelope(1, 1, 2, 3, ("t",), ("v",)), "k")) is not None


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
    assert unpack(msgpack.packb([FORMAT + 1, 1, 2, 3, [], [], "v"])) is None
    assert unpack(msgpack.packb([FORMAT, 1, 2, 3, [], [], "v"])) is not None
    assert unpack(msgpack.packb([2, "v", 1, 2, 3, [], []])) is None  # the value first
    assert unpack(msgpack.packb([1, "v", 1, 2, 3, []])) is None  # the format before versions


def test_unsupported_values_name_their_type() -> None:
    class Thing:
        pass

    with pytest.raises(SerializationError, match="Thing"):
        pack(Envelope({"x": [Thing()]}, 1, 2, 3, ()), "user:1")


def test_other_shapes_are_misses() -> None:
    for body in ({1: "v", 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}, "abcdefg", [FORMAT, 1, 2, 3, "v"],
                 [FORMAT, 1.5, 2, 3, [], [], "v"], [FORMAT, 1, 2, 3, [1], ["v"], "v"],
                 [FORMAT, 1, 2, 3, ["t"], [1], "v"],
                 [FORMAT, 1, 2, 3, [], ["v"], "v"]):  # fmt: skip
        assert unpack(msgpack.packb(body)) is None


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: tuple[int, ...]


@dataclasses.dataclass
class NotRegisteredAnywhere:
    name: str


ints = st.integers(-(2**63), 2**64 - 1)
hashables = st.none() | st.booleans() | ints | st.text(max_size=5) | st.uuids()
rich = st.recursive(
    values
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.dates() | st.times() | st.timedeltas()
    | st.decimals(allow_nan=False) | st.uuids()
    | st.builds(Point, ints, st.tuples(ints)),
    lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=3)
    | st.frozensets(hashables, max_size=3) | st.sets(hashables, max_size=3)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


@given(rich)
def test_supported_types_come_back_as_themselves(value: Any) -> None:
    back = unpack(pack(Envelope(value, 1, 2, 3, ()), "k"))
    assert back is not None
    assert _same(back.value, value)
    assert _types(back.value) == _types(value)


def _same(a: Any, b: Any) -> bool:
    """Equality in which NaN equals NaN (msgpack keeps a NaN a NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and type(a) is type(b):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _types(value: Any) -> Any:
    """The type tree of a value, to tell a tuple from a list, a set from a frozenset."""
    if isinstance(value, (list, tuple)):
        return (type(value), [_types(v) for v in value])
    if isinstance(value, dict):
        return (dict, sorted((repr(k), repr(_types(v))) for k, v in value.items()))
    return type(value)


def test_time_zones_and_precision_survive() -> None:
    when = datetime.datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    money = decimal.Decimal("10.005")
    back = unpack(pack(Envelope([when, money], 1, 2, 3, ()), "k"))
    assert back is not None and back.value == [when, money]
    assert back.value[0].tzinfo == datetime.timezone.utc and str(back.value[1]) == "10.005"


class Level(enum.IntEnum):
    HIGH = 3


def test_subclasses_of_builtins_come_back_as_the_builtin_and_enums_as_members() -> None:
    value = {"level": Level.HIGH, "order": collections.OrderedDict(a=1)}
    raw = pack(Envelope(value, 1, 2, 3, ()), "k")
    back = unpack(raw)
    assert back is not None and back.value == {"level": Level.HIGH, "order": {"a": 1}}
    assert back.value["level"] is Level.HIGH and type(back.value["order"]) is dict
    valuetypes.REGISTERED.pop(f"{__name__}.Level")
    assert unpack(raw) is None  # a process that never met the class: a miss, never an int
    valuetypes.register_type(Level)
    assert unpack(raw) is not None


def test_a_dataclass_this_process_does_not_know_is_a_miss() -> None:
    raw = pack(Envelope(NotRegisteredAnywhere("x"), 1, 2, 3, ()), "k")
    assert unpack(raw) is not None  # encoding registered it here
    codec._DATACLASSES.pop(f"{__name__}.NotRegisteredAnywhere")
    assert unpack(raw) is None  # another process, which never imported it: a miss
    codec.register_dataclass(NotRegisteredAnywhere)
    assert unpack(raw) == Envelope(NotRegisteredAnywhere("x"), 1, 2, 3, ())
    with pytest.raises(TypeError, match="takes a dataclass"):
        codec.register_dataclass(int)


@given(st.binary(max_size=60), st.integers(0, 127))
def test_any_extension_bytes_decode_or_miss(data: bytes, code: int) -> None:
    raw = msgpack.packb([FORMAT, 1, 2, 3, [], [], msgpack.ExtType(code, data)])
    result = unpack(raw)
    assert result is None or isinstance(result, Envelope)


def test_huge_integers_are_a_clear_error() -> None:
    with pytest.raises(SerializationError, match="integer outside"):
        pack(Envelope({"n": 2**70}, 1, 2, 3, ()), "k")


# -- bulk decoding: one pass over an MGET reply, equal to decoding each value alone -----------

envelopes = st.builds(
    lambda value, fresh, tags: pack(
        Envelope(value, fresh, fresh + 5, 7, tuple(tags), tuple("v" for _ in tags)), "k"
    ),
    values,
    st.integers(0, 2**50),
    st.lists(st.text(max_size=3), max_size=2),
)
#: Envelopes whose fields before the value are written in every width msgpack allows (and some
#: it does not write: signed forms, a longer array), which the compiled loop reads by hand.
_UINT = {
    0: lambda n: bytes([n]) if n < 128 else None,
    1: lambda n: b"\xcc" + n.to_bytes(1, "big"),
    2: lambda n: b"\xcd" + n.to_bytes(2, "big"),
    4: lambda n: b"\xce" + n.to_bytes(4, "big"),
    8: lambda n: b"\xcf" + n.to_bytes(8, "big"),
    -8: lambda n: b"\xd3" + n.to_bytes(8, "big"),
}


def _field(n: int, width: int) -> bytes:
    if width > 0 and n >= 1 << (8 * width):
        width = 8
    return _UINT[width](n) or _UINT[8](n)


headers = st.builds(
    lambda times, widths, value, arrays, tail: (
        b"\x97"
        + b"".join(_field(n, w) for n, w in zip((FORMAT, *times), widths, strict=True))
        + arrays
        + codec._packb(value)
        + tail
    ),
    st.tuples(st.integers(0, 2**60), st.integers(0, 2**60), st.integers(0, 2**20)),
    st.tuples(*[st.sampled_from([0, 1, 2, 4, 8, -8])] * 4),
    values,
    st.sampled_from([b"\x90\x90", b"\x91\xa1t\x91\xa1v", b"\x90", b"\x90\x91\xa1v"]),
    st.sampled_from([b"", b"\x00"]),
)
#: Values on both sides of the size up to which the compiled loop decodes a copy of a value's
#: bytes (beyond it, a view of them), whole or cut short.
large = st.builds(
    lambda size, fresh: pack(Envelope("a" * size, fresh, fresh + 5, 1, ()), "k"),
    st.integers(4_080, 4_110),
    st.integers(0, 2**40),
).flatmap(lambda raw: st.sampled_from([raw, raw[:-1], raw + b"\x00"]))
replies = st.lists(
    st.none()
    | large
    | envelopes
    | st.binary(max_size=40)
    | envelopes.flatmap(lambda raw: st.integers(0, len(raw)).map(lambda cut: raw[:cut]))
    | st.builds(lambda v: msgpack.packb([FORMAT, 1, 2, 3, [1], ["v"], v]), values)
    | st.builds(lambda v: codec._packb((FORMAT, 1, 2, 3, [], [], v)), values)  # a tuple
    | headers,
    max_size=12,
)
#: Bulk decoding's loop: compiled (``_speedups.fresh_values``, where built) and in Python.
LOOPS = ["python"] if codec._compiled_values is None else ["compiled", "python"]


@contextlib.contextmanager
def bulk_loop(which: str) -> Iterator[None]:
    saved = codec._compiled_values
    codec._compiled_values = saved if which == "compiled" else None
    try:
        yield
    finally:
        codec._compiled_values = saved


@pytest.mark.parametrize("loop", LOOPS)
@given(
    raws=replies,
    now_ms=st.integers(-1, 2**50)
    | st.floats(allow_nan=True)
    | st.integers(2**53 - 2, 2**64)
    | st.sampled_from([2**53, 2**53 + 1, float(2**53)]),
)
def test_bulk_decoding_equals_decoding_each_value_alone(
    loop: str, raws: list[bytes | None], now_ms: float
) -> None:
    keys = [f"k{i}" for i in range(len(raws))]
    found: dict[str, Any] = {}
    kept: list[tuple[str, list[Any]]] = []
    with bulk_loop(loop):
        bad = codec.fresh_values(keys, raws, now_ms, found, kept)
    expected = {key: unpack(raw) for key, raw in zip(keys, raws, strict=True)}
    absent = [k for k, raw in zip(keys, raws, strict=True) if raw is None]
    assert bad == [k for k in keys if expected[k] is None and k not in absent]
    fresh = {k: env for k, env in expected.items() if env and now_ms < env.fresh_until_ms}
    assert list(found) == list(fresh) == [key for key, _ in kept]
    for key, body in kept:
        env = codec.envelope(body)
        assert env[1:] == fresh[key][1:]
        assert msgpack.packb(found[key]) == msgpack.packb(fresh[key].value)
    for raw, env in zip(raws, expected.values(), strict=True):
        single = codec.body(raw) if raw is not None else None
        assert (single is None) == (env is None), raw


@pytest.mark.parametrize("loop", LOOPS)
def test_a_malformed_value_cannot_swallow_its_neighbour(loop: str) -> None:
    """Two values written by someone else, around a victim's: the first one's bytes run on into
    the victim's (a bin header longer than the value), and the second carries what the victim's
    slot would then decode. Read from one buffer without checks, the victim's key would get the
    forged value; every value must end where its own bytes end."""
    victim = pack(Envelope("victim's value", 10, 20, 1, ()), "k")
    forged = pack(Envelope("forged", 10, 20, 1, ()), "k")
    # An envelope whose value (a bin) claims the victim's bytes and one more.
    header = b"\x97" + msgpack.packb([FORMAT, 10, 20, 1, [], []])[1:]
    first = header + b"\xc5" + (len(victim) + 1).to_bytes(2, "big")
    second = b"\x00" + forged + pack(Envelope("x", 10, 20, 1, ()), "k")
    naive = msgpack.Unpacker()
    naive.feed(b"".join([first, victim, second]))
    assert list(naive)[1][6] == "forged"  # the attack works on a decoder without the check
    found: dict[str, Any] = {}
    with bulk_loop(loop):
        bad = codec.fresh_values(["a", "victim", "b"], [first, victim, second], 0, found)
    assert found == {"victim": "victim's value"}
    assert bad == ["a", "b"]


def test_the_compiled_bulk_loop_falls_back_on_what_it_cannot_decide() -> None:
    """A comparison that raises (a value of the user's own type as the format) is no verdict
    for the compiled loop: it says so (None) and the Python loop decides, as for any surprise;
    an interrupt goes through."""
    compiled = codec._compiled_values
    if compiled is None:
        pytest.skip("the C extension is not built")

    class Odd:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no")

    def odd_unpackb(raw: bytes) -> Any:
        return [Odd(), 1, 2, 3, [], [], "v"]

    found: dict[str, Any] = {}
    rest = ((), (), FORMAT, codec._checked)  # no keyword arguments for unpackb
    assert compiled(["k"], [b"x"], 0, found, None, odd_unpackb, *rest) is None

    def interrupted(raw: bytes) -> Any:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compiled(["k"], [b"x"], 0, found, None, interrupted, *rest)
    with pytest.raises(TypeError):
        compiled(["k"], [b"x"], 0, found)


def test_datetimes_in_a_named_zone_keep_it_in_gaps_and_folds() -> None:
    """A zoneinfo datetime comes back in its zone with its fold: as a fixed offset, one in a
    DST gap or fold would compare unequal to itself (PEP 495)."""
    import zoneinfo

    knox, new_york = (
        zoneinfo.ZoneInfo("America/Indiana/Knox"),
        zoneinfo.ZoneInfo("America/New_York"),
    )
    for value in (
        datetime.datetime(1973, 4, 29, 2, 0, tzinfo=knox),  # in the spring-forward gap
        datetime.datetime(2021, 11, 7, 1, 30, tzinfo=new_york, fold=1),  # second 1:30
    ):
        back = unpack(pack(Envelope(value, 1, 2, 3, ()), "k"))
        assert back is not None and back.value == value
        assert back.value.tzinfo is value.tzinfo and back.value.fold == value.fold
    escape = codec._packb(["2020-01-01T00:00:00", 0, "../../etc/passwd"])
    assert unpack(msgpack.packb([FORMAT, 1, 2, 3, [], [], msgpack.ExtType(11, escape)])) is None
