"""The pure bookkeeping of write-behind loss detection (``cachewise.writebehind.loss``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cachewise.writebehind.loss import Held, HeldWrites, stream_order


def held(key: str, epoch: str = "e1") -> Held:
    return Held(key, b"call-" + key.encode(), b"env", epoch)


def test_stream_ids_sort_as_redis_sorts_them() -> None:
    ids = ["10-2", "9-5", "10-10", "10-0"]
    assert sorted(ids, key=stream_order) == ["9-5", "10-0", "10-2", "10-10"]


def test_settled_writes_are_forgotten_and_a_lost_queue_gives_the_newest_per_key() -> None:
    writes = HeldWrites(limit=100)
    writes.add("1-0", held("a"))
    writes.add("2-0", held("b"))
    writes.add("3-0", held("a"))
    writes.add("4-0", held("c"))
    writes.settled_before("e1", "2-0")  # the queue holds nothing older than 2-0: 1-0 landed
    assert list(writes.items) == ["2-0", "3-0", "4-0"]
    writes.settled(["4-0"])
    again, older, forgotten = writes.lost("e2")
    assert [(i, h.key) for i, h in again] == [("2-0", "b"), ("3-0", "a")]
    assert older == 0 and forgotten == 0 and not writes.items


def test_older_writes_to_a_key_are_stood_for_by_the_newest() -> None:
    writes = HeldWrites(limit=100)
    for n in range(5):
        writes.add(f"{n}-0", held("k"))
    again, older, _ = writes.lost("e2")
    assert [i for i, _ in again] == ["4-0"] and older == 4


def test_writes_forgotten_past_the_limit_are_lost_only_if_the_queue_is() -> None:
    writes = HeldWrites(limit=2)
    for n in range(5):
        writes.add(f"{n}-0", held(f"k{n}"))
    assert list(writes.items) == ["3-0", "4-0"] and writes.forgotten == 3
    writes.settled_before("e1", "3-0")  # the forgotten ones were older: they landed
    assert writes.forgotten == 0
    writes.add("5-0", held("k5"))  # forgets 3-0
    writes.add("6-0", held("k6"))  # forgets 4-0
    again, _, forgotten = writes.lost("e2")
    assert forgotten == 2 and [i for i, _ in again] == ["5-0", "6-0"]
    assert writes.forgotten == 0  # counted once


def test_writes_of_the_current_epoch_are_not_lost() -> None:
    writes = HeldWrites(limit=10)
    writes.add("1-0", held("a", "e1"))
    writes.add("2-0", held("b", "e2"))
    again, _, _ = writes.lost("e2")
    assert [h.key for _, h in again] == ["a"] and list(writes.items) == ["2-0"]


@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "settle", "before", "lost"]), st.integers(0, 30),
                  st.sampled_from(["e1", "e2", "e3"])),
        max_size=60,
    )
)  # fmt: skip
def test_the_epochs_kept_for_every_enqueue_match_the_writes_held(
    ops: list[tuple[str, int, str]],
) -> None:
    """``epochs()`` runs on every enqueue, so it is counted as writes come and go, not computed
    over them: whatever happens, it says what a scan would."""
    writes = HeldWrites(limit=8)
    for op, n, epoch in ops:
        if op == "add":
            writes.add(f"{n}-0", held(f"k{n % 5}", epoch))
        elif op == "settle":
            writes.settled([f"{n}-0"])
        elif op == "before":
            writes.settled_before(epoch, f"{n}-0")
        else:
            writes.lost(epoch)
        assert writes.epochs() == {h.epoch for h in writes.items.values()}
        assert sum(writes.per_epoch.values()) == len(writes.items)
