"""L1 on its own: the entry's storage (compiled and pure Python alike) and the CLOCK eviction
that keeps it bounded (``_l1._ClockCache``)."""

from __future__ import annotations

import gc
import math
import weakref
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachewise import core
from cachewise._compiled import speedups
from cachewise._l1 import L1, Table
from cachewise.core import Entry


class PureEntry(core._Fields):
    """The entry as the package builds it without the C extension."""

    __slots__ = ()
    full_key = core.Entry.full_key


KINDS = [PureEntry] if speedups is None else [Entry, PureEntry]
FIELDS = [
    "value", "fresh_until", "stale_until", "early_at", "load_time", "key_hash", "l1_key",
    "tags", "refresh_at", "hits", "seen", "slot", "table",
]  # fmt: skip

deadline = st.floats(allow_nan=False, min_value=-1e12, max_value=1e12)


@given(
    value=st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers())),
    times=st.tuples(deadline, deadline, deadline, deadline),
    key=st.text(),
    tags=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    refresh_at=st.one_of(st.none(), deadline),
)
@settings(max_examples=200, deadline=None)
def test_the_compiled_entry_holds_what_the_pure_python_one_does(
    value: Any,
    times: tuple[float, float, float, float],
    key: str,
    tags: tuple[str, ...],
    refresh_at: float | None,
) -> None:
    made = [
        kind(value, *times, full_key=key, l1_key=key, tags=tags, refresh_at=refresh_at)
        for kind in KINDS
    ]
    for field in FIELDS:
        assert [getattr(e, field) for e in made] == [getattr(made[0], field)] * len(made)


def test_a_compiled_entry_refuses_a_deadline_that_is_not_a_number() -> None:
    if speedups is None:
        pytest.skip("CACHEWISE_PURE_PYTHON=1")
    with pytest.raises(TypeError):
        Entry("v", "soon", 2.0, 1.0, 0.1, full_key="k", l1_key="k")  # type: ignore[arg-type]
    e = Entry("v", 1.0, 2.0, 1.0, 0.1, full_key="k", l1_key="k")
    with pytest.raises(TypeError):
        e.fresh_until = None
    e.fresh_until = 5  # an int is a number
    assert e.fresh_until == 5.0


def test_a_compiled_entry_is_collected_with_a_cycle_through_its_value() -> None:
    if speedups is None:
        pytest.skip("CACHEWISE_PURE_PYTHON=1")

    class Box:
        entry: Any = None

    box = Box()
    e = Entry(box, 1.0, 2.0, 1.0, 0.1, full_key="k", l1_key="k")
    box.entry = e
    gone = weakref.ref(box)
    del box, e
    gc.collect()
    assert gone() is None


def make(kind: type[Any], key: str, value: Any = "v") -> Any:
    return kind(value, math.inf, math.inf, math.inf, 0.0, full_key=key, l1_key=key)


def check(l1: L1) -> None:
    """What L1 must hold after every step: each held entry in its table and at its ring slot,
    every other ring slot free, the bound kept."""
    bounded = l1._bounded
    held = l1.entries()
    assert len(held) <= l1.maxsize
    for e in held:
        assert bounded._ring[e.slot] is e
        assert e.table[e.l1_key] is e
    assert sum(slot is not None for slot in bounded._ring) == len(held)
    assert all(bounded._ring[i] is None for i in bounded._free)
    assert len(set(bounded._free)) == len(bounded._free)


@pytest.mark.parametrize("kind", KINDS)
def test_an_entry_hit_since_the_hand_passed_gets_a_second_chance(kind: type[Any]) -> None:
    l1, table = L1(3), Table(str)
    a, b, c = (make(kind, k) for k in "abc")
    for e in (a, b, c):
        l1.put(table, e)
    l1.hit(table, a)
    l1.put(table, make(kind, "d"))  # the hand passes a (hit: kept), evicts b
    assert set(table) == {"a", "c", "d"}
    assert (l1.evictions, b.slot) == (1, -1)
    l1.put(table, make(kind, "e"))  # then c, never hit
    assert set(table) == {"a", "d", "e"}
    l1.put(table, make(kind, "f"))  # a's chance was spent: it goes now
    assert set(table) == {"d", "e", "f"}
    check(l1)


@pytest.mark.parametrize("kind", KINDS)
def test_when_every_entry_was_hit_the_hand_turns_once_and_evicts(kind: type[Any]) -> None:
    l1, table = L1(2), Table(str)
    a, b = make(kind, "a"), make(kind, "b")
    l1.put(table, a)
    l1.put(table, b)
    a.hits = b.hits = 2**40 + 3  # beyond the 32 bits the second-chance mark keeps
    l1.put(table, make(kind, "c"))
    assert set(table) == {"b", "c"}
    assert b.seen == 3
    check(l1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_dropped_entry_frees_its_slot_and_its_value(kind: type[Any]) -> None:
    class Value:
        pass

    l1, table = L1(10), Table(str)
    value = Value()
    gone = weakref.ref(value)
    l1.put(table, make(kind, "a", value))
    l1.put(table, make(kind, "b"))
    slot = l1.held("a").slot  # type: ignore[union-attr]
    dropped = l1.drop("a")
    assert dropped is not None and dropped.slot == -1 and "a" not in table
    del value, dropped
    gc.collect()
    assert gone() is None  # the ring does not keep it alive
    l1.put(table, make(kind, "c"))
    assert l1.held("c").slot == slot  # type: ignore[union-attr]
    check(l1)


@pytest.mark.parametrize("kind", KINDS)
def test_replacing_and_clearing_keep_the_ring_consistent(kind: type[Any]) -> None:
    l1, table = L1(2), Table(str)
    old = make(kind, "a")
    l1.put(table, old)
    l1.put(table, make(kind, "a", "new"))
    assert old.slot == -1 and table["a"].value == "new" and len(l1) == 1
    check(l1)
    l1.clear()
    assert (len(l1), table) == (0, {})
    l1.put(table, make(kind, "b"))
    check(l1)
    with pytest.raises(KeyError):
        L1(1)._bounded.popitem()


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["put", "hit", "drop"]), st.integers(0, 11)), max_size=120
    ),
    maxsize=st.integers(1, 6),
    pure=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_any_sequence_of_puts_hits_and_drops_keeps_l1_bounded_and_consistent(
    steps: list[tuple[str, int]], maxsize: int, pure: bool
) -> None:
    kind = PureEntry if pure else KINDS[0]
    l1, table = L1(maxsize), Table(str)
    last_put = None
    for op, n in steps:
        key = f"k{n}"
        if op == "put":
            l1.put(table, make(kind, key))
            last_put = key
        elif op == "hit" and key in table:
            l1.hit(table, table[key])
        elif op == "drop":
            l1.drop(key)
            if key == last_put:
                last_put = None
        check(l1)
        if last_put is not None:
            assert last_put in table  # what was just stored is never the one evicted


class _SameHash(str):
    """A name whose hash is another name's (``"a"``'s): a collision L1 must tell apart by the
    name. Spelled ``"!"``, a name whose hash raises."""

    __slots__ = ()

    def __hash__(self) -> int:
        if self == "!":
            raise ValueError("no hash")
        return hash("a")


@pytest.mark.parametrize("kind", KINDS)
def test_an_entry_stands_for_its_full_key_without_keeping_its_text(kind: type[Any]) -> None:
    table = Table(lambda key: f"ns:{{{key}}}")
    e = kind("v", 1.0, 2.0, 1.0, 0.1, full_key="ns:{a}", l1_key="a", table=table)
    assert hash(e) == hash("ns:{a}") and e == "ns:{a}"
    assert "ns:{a}" == e  # noqa: SIM300 (str declines, the entry answers)
    assert e != "ns:{b}" and e != 1 and e != _SameHash("ns:{a}x")
    newer = kind("w", 1.0, 2.0, 1.0, 0.1, full_key="ns:{a}", l1_key="a", table=table)
    elsewhere = kind("v", 1.0, 2.0, 1.0, 0.1, full_key="ns:{a}", l1_key="x",
                     table=Table(lambda key: "ns:{a}"))  # fmt: skip
    other = kind("v", 1.0, 2.0, 1.0, 0.1, full_key="ns:{b}", l1_key="b", table=table)
    assert e == newer == elsewhere and e != other
    assert "ns:{a}" not in gc.get_referents(e)  # its table names it when asked
    with pytest.raises(ValueError, match="no hash"):
        _ = e == _SameHash("!")  # the name's own error, not a wrong answer


@pytest.mark.parametrize("kind", KINDS)
def test_a_name_sharing_an_entrys_hash_does_not_find_it(kind: type[Any]) -> None:
    l1, table = L1(4), Table(str)
    l1.put(table, make(kind, "a"))
    collision = _SameHash("b")
    assert hash(collision) == hash("a")
    assert l1.held(collision) is None and l1.drop(collision) is None
    assert l1.held("a") is table["a"] and len(l1) == 1
    check(l1)


@pytest.mark.parametrize("kind", KINDS)
def test_two_tables_naming_one_key_hold_one_entry_of_it(kind: type[Any]) -> None:
    """Two functions of one name in one cache write one Redis key: L1 holds its last entry."""
    l1, first, second = L1(4), Table(str), Table(str)
    l1.put(first, make(kind, "a"))
    l1.put(second, make(kind, "a", "new"))
    assert "a" not in first and second["a"].value == "new" and len(l1) == 1
    check(l1)


@given(
    calls=st.lists(
        st.tuples(
            st.one_of(
                st.integers(),
                st.text(max_size=300),
                st.floats(allow_nan=False),
                st.tuples(st.integers(), st.text(max_size=3)),
                st.none(),
            ),
            st.one_of(st.none(), st.text(max_size=3)),
        ),
        max_size=8,
    ),
    explicit=st.lists(st.text(min_size=1, max_size=40), max_size=4),
)
@settings(max_examples=60, deadline=None)
def test_every_held_entry_is_found_by_the_key_its_function_names(
    calls: list[tuple[Any, Any]], explicit: list[str]
) -> None:
    """A table names an entry's key as the function's ``key`` does (one argument, several,
    by keyword, shortened when long), and an event finds the entry by that name."""
    from cachewise import Cache

    cache = Cache(namespace="n", l1_maxsize=100)

    @cache.cached(ttl=60)
    def one(x: Any) -> None:
        return None

    @cache.cached(ttl=60)
    def two(x: Any, y: Any = None) -> None:
        return None

    named = []
    for x, y in calls:
        one(x)
        two(x, y=y)
        named += [one.key(x), two.key(x, y=y), two.key(x, y)]
    for key in explicit:
        cache.set(key, 1, ttl=60)
        named.append(cache._target(key).full_key)
    l1 = cache._engine.l1
    for name in named:
        entry = l1.held(name)
        assert entry is not None and entry.full_key == name and entry == name
    assert {e.full_key for e in l1.entries()} == set(named)


@pytest.mark.parametrize("kind", KINDS)
def test_tagged_entries_come_by_name_and_drop_by_entry(kind: type[Any]) -> None:
    l1, table = L1(8), Table(str)
    for key, tags in [("a", ("t",)), ("b", ("t", "u")), ("c", ("u",)), ("d", ())]:
        entry = kind("v", math.inf, math.inf, math.inf, 0.0, full_key=key, l1_key=key, tags=tags)
        l1.put(table, entry)
    tagged = l1.tagged(["t"])
    assert tagged == {"a": table["a"], "b": table["b"]}
    assert all(tagged[name] is table[name] for name in tagged)
    assert l1.drop(tagged["b"]) is tagged["b"] and "b" not in table
    assert l1.tagged(["t", "u"]) == {"a": table["a"], "c": table["c"]}
    check(l1)
