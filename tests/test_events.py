"""The events processes send each other (``cachewise.events``): typed values, one wire form."""

from __future__ import annotations

import msgpack
import pytest

from cachewise.events import Fill, Invalidated, Released, Reset, decode, encode
from cachewise.redis.keyspace import KeySpace


@pytest.mark.parametrize(
    "event",
    [
        Fill("o1", "ns:k", b"\x97envelope"),
        Fill("o1", "ns:k"),
        Released("o2", "ns:k"),
        Invalidated("o3", ("ns:a", "ns:b"), ("team:9",)),
        Invalidated("o3", ("ns:a",)),
        Reset("o4"),
    ],
)
def test_every_event_round_trips(event: object) -> None:
    assert decode(encode(event)) == event  # type: ignore[arg-type]


def test_the_wire_form_is_the_one_earlier_releases_send() -> None:
    """Processes of this release and of the one before understand each other."""
    assert msgpack.unpackb(encode(Fill("o", "ns:k", b"v"))) == ["f", "o", "ns:k", b"v"]
    assert msgpack.unpackb(encode(Invalidated("o", ("ns:k",), ("t",)))) == [
        "i", "o", ["ns:k"], ["t"],
    ]  # fmt: skip
    assert decode(msgpack.packb(["r", "o"])) == Reset("o")  # two items only: still an event


@pytest.mark.parametrize(
    "raw",
    [b"\xc1", msgpack.packb("text"), msgpack.packb(["f"]), msgpack.packb(["x", "o", "k"]),
     msgpack.packb(["i", "o", "notalist", []]), msgpack.packb(["f", 5, "k"])],
)  # fmt: skip
def test_what_is_not_an_event_decodes_to_none(raw: bytes) -> None:
    assert decode(raw) is None


def test_a_reset_from_another_process_empties_this_process_l1(
    redis_server: object, namespace: str
) -> None:
    """A process whose outage backlog overflowed tells every other one to empty its L1 (a
    two-item event, which the listener used to drop as too short)."""
    from cachewise import Cache

    from .test_concurrency import wait_until

    cache = Cache(redis_server.url, namespace=namespace)  # type: ignore[attr-defined]
    try:
        cache.set("k", "v", ttl=60)
        assert cache.stats()["l1_size"] == 1
        wait_until(lambda: cache._engine.backend.listener.heard)  # type: ignore[union-attr]
        client = redis_server.client()  # type: ignore[attr-defined]
        client.publish(KeySpace(namespace).channel, encode(Reset("another-process")))
        wait_until(lambda: cache.stats()["l1_size"] == 0)
        assert cache.stats()["l1_flushes"] >= 1
    finally:
        cache.close(timeout=5)
