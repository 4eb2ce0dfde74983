"""Keys: canonical across processes and runs; equal calls share a key; others never do."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import subprocess
import sys
import uuid
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewise import Cache, KeyBuildError
from cachewise.keys import MAX_ARGS_CHARS, canonical, encode, explicit


def text(value: Any) -> str:
    return encode(canonical(value))


def test_positional_keyword_and_defaults_are_one_key(cache: Cache) -> None:
    @cache.cached(ttl=10)
    def f(a: int, b: int = 0, *, c: str = "x") -> int:
        return a

    assert f.key(1) == f.key(a=1) == f.key(1, b=0) == f.key(b=0, a=1) == f.key(1, c="x")
    assert f.key(1) != f.key(1, b=1) != f.key(1, c="y")


def test_kwargs_order_does_not_matter(cache: Cache) -> None:
    @cache.cached(ttl=10)
    def f(**kw: Any) -> None: ...

    assert f.key(a=1, b=2) == f.key(b=2, a=1)
    assert f.key(a=1, b=2) != f.key(a=2, b=1)


def test_key_starts_with_namespace_module_and_qualname(cache: Cache) -> None:
    @cache.cached(ttl=10)
    def f(x: int) -> int:
        return x

    assert (
        f.key(42)
        == f"t:{{{__name__}:test_key_starts_with_namespace_module_and_qualname.<locals>.f:[42]}}"
    )


@pytest.mark.parametrize(
    "a, b",
    [(1, True), (1, 1.0), (1, "1"), ([1], (1,)), (0, False), (None, "None"), (b"a", "a"),
     ({1: 2}, {"1": 2}), (frozenset([1]), [1]), (decimal.Decimal("1"), 1)],
)  # fmt: skip
def test_values_that_python_confuses_get_different_keys(a: Any, b: Any) -> None:
    assert text(a) != text(b)


@given(st.lists(st.sampled_from([1, True, 1.0, "1", 0, False, "a", (1,), None]), max_size=30))
def test_calls_in_any_order_read_each_value_under_its_own_key(calls: list[Any]) -> None:
    """Keys a dict would confuse stay apart whatever the order of the calls, though the last
    key built is kept for the next call (``Spec._last``)."""
    cache = Cache(namespace="order")
    loads: list[Any] = []

    @cache.cached(ttl=60)
    def f(x: Any) -> str:
        loads.append(x)
        return repr(x)

    seen: dict[str, str] = {}
    for x in calls:
        assert f(x) == repr(x)
        assert seen.setdefault(repr(x), f.key(x)) == f.key(x)
    assert sorted(map(repr, loads)) == sorted(set(map(repr, calls)))
    assert len(set(seen.values())) == len(seen)


def test_dicts_and_sets_are_order_independent() -> None:
    assert text({"a": 1, "b": 2}) == text({"b": 2, "a": 1})
    assert text({3, 1, 2}) == text({2, 3, 1})


def test_supported_types() -> None:
    Point = namedtuple("Point", "x y")

    @dataclasses.dataclass
    class D:
        x: int

    class Color(enum.Enum):
        RED = 1

    for value in (
        datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2, 3, 4), decimal.Decimal("1.5"),
        uuid.UUID(int=5), Point(1, 2), D(1), Color.RED, Path("/tmp/x"), float("nan"), 1e300,
        bytearray(b"x"), ("nested", [1, {"a": (2,)}]),
    ):  # fmt: skip
        assert text(value) == text(value)


def test_unkeyable_argument_names_function_and_argument(cache: Cache) -> None:
    class Opaque:
        pass

    @cache.cached(ttl=10)
    def f(conn: Any, user_id: int) -> int:
        return user_id

    with pytest.raises(KeyBuildError) as err:
        f(Opaque(), 1)
    message = str(err.value)
    assert "'conn'" in message and "f" in message and "key=" in message
    assert isinstance(err.value, TypeError)
    assert cache.stats()["loads"] == 0


def test_cache_key_hook_makes_objects_keyable(cache: Cache) -> None:
    class Tenant:
        def __init__(self, name: str) -> None:
            self.name = name

        def __cache_key__(self) -> str:
            return self.name

    @cache.cached(ttl=10)
    def f(t: Tenant) -> str:
        return t.name

    assert f.key(Tenant("a")) == f.key(Tenant("a")) != f.key(Tenant("b"))


def test_lists_and_dicts_are_fine_arguments(cache: Cache) -> None:
    calls = []

    @cache.cached(ttl=10)
    def f(items: list[int], opts: dict[str, int]) -> int:
        calls.append(1)
        return sum(items)

    assert f([1, 2], {"a": 1}) == 3
    assert f([1, 2], {"a": 1}) == 3
    assert len(calls) == 1


def test_long_arguments_are_hashed(cache: Cache) -> None:
    @cache.cached(ttl=10)
    def f(s: str) -> str:
        return s

    long_key = f.key("x" * 10_000)
    assert len(long_key) < 200 and f.key("x" * 10_000) == long_key != f.key("x" * 9_999)
    assert len(f.key("x" * (MAX_ARGS_CHARS - 10))) > MAX_ARGS_CHARS - 10


def test_awkward_strings_do_not_collide(cache: Cache) -> None:
    @cache.cached(ttl=10)
    def f(a: str, b: str = "") -> str:
        return a + b

    keys = {f.key(a, b) for a, b in [("a:b", ""), ("a", ":b"), ("a\nb", ""), ("*", ""), ('"', ""),
                                     ("ü", ""), ("a", "b"), ("ab", ""), ("[", "]")]}  # fmt: skip
    assert len(keys) == 9


SCRIPT = """
import sys
from cachewise import Cache
c = Cache(namespace="x")
@c.cached(ttl=10)
def f(*args, **kwargs): ...
f.__module__ = "m"
print(f.key("héllo", {"b": 1, "a": {2, 1}}, frozenset({"x", "y", "z"}), k=(1, 2.5, None)))
"""


def test_keys_are_the_same_in_every_process() -> None:
    outputs = set()
    for seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )  # fmt: skip
        outputs.add(out.stdout)
    assert len(outputs) == 1


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
keyable = st.recursive(
    scalars | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _strict(value: Any) -> Any:
    """An equality that also tells types apart (what a key must respect)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_strict(v) for v in value))
    if isinstance(value, dict):
        return ("dict", frozenset((k, _strict(v)) for k, v in value.items()))
    if isinstance(value, float) and value == 0:
        return ("float", str(value))
    return (type(value).__name__, value)


@given(keyable, keyable)
def test_canonical_text_is_injective(a: Any, b: Any) -> None:
    assert (text(a) == text(b)) == (_strict(a) == _strict(b))


@given(st.lists(st.integers() | st.text(), max_size=5))
def test_plain_fast_text_equals_the_general_encoding(values: list[Any]) -> None:
    from cachewise.keys import _plain_text, _shorten

    assert _plain_text(tuple(values)) == _shorten(encode([canonical(v) for v in values]))


@given(
    st.lists(
        st.text(min_size=1, max_size=12)
        | st.sampled_from(["{a}", "#x", "a\0b", "\0", "x" * 600, "é{", "}"]),
        min_size=1,
        max_size=8,
    )
)
def test_a_bulk_reads_names_are_each_keys_own_name(keys: list[str]) -> None:
    """``get_many`` builds its keys' Redis names for all keys at once when it can; they are
    the names each key has alone, whatever the keys hold."""
    engine = Cache(namespace="names")._engine
    expected = [engine.space.entry(explicit(k)) for k in keys]
    assert engine._names(keys) == expected


@given(
    st.one_of(
        st.integers(),
        st.integers(min_value=10**600, max_value=10**700),  # long enough to be hashed
        st.text(),
        st.text(min_size=MAX_ARGS_CHARS - 3, max_size=MAX_ARGS_CHARS + 3),
    )
)
def test_the_text_of_one_int_or_str_argument_is_the_encoders(value: Any) -> None:
    """``args_text`` spells one int or str argument by hand (a miss pays for it): the same
    text as the canonical encoder's, hashed past the same length."""
    from cachewise.keys import ArgKeyer

    def f(x: Any) -> Any:
        return x

    keyer = ArgKeyer(f, "f")
    text = encode([canonical(value)])
    expected = (
        text
        if len(text) <= MAX_ARGS_CHARS
        else "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    )
    assert keyer.args_text(keyer.l1_key((value,))) == expected
