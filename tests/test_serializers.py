"""Values of the types people return, and ``serializer=``: every type comes back from Redis as
what it was (read by another cache, as another process would); a value the serializer refuses
is the same ``SerializationError`` with and without Redis, and nothing is cached."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import pytest

from cachewise import (
    Cache,
    ConfigTypeError,
    ConfigValueError,
    SerializationError,
    Serializer,
    register_type,
    valuetypes,
)

from .conftest import Driver


class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    LARGE = 3


@dataclasses.dataclass
class Point:
    x: int
    y: int


class User(pydantic.BaseModel):
    id: int
    name: str
    joined: datetime.datetime
    tags: set[str] = set()


class Opaque:
    """A class no serializer but pickle knows."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
VALUES: dict[str, Any] = {
    "pydantic": User(id=1, name="ann", joined=datetime.datetime(2026, 1, 2, tzinfo=BERLIN),
                     tags={"a"}),
    "dataclass": Point(1, 2),
    "datetime in a zone": datetime.datetime(2026, 3, 29, 2, 30, fold=0, tzinfo=BERLIN),
    "datetime utc": datetime.datetime(2026, 1, 1, 12, 0, 0, 5, tzinfo=datetime.UTC),
    "date": datetime.date(2026, 12, 4),
    "time with zone": datetime.time(9, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    "uuid": uuid.UUID(int=7),
    "decimal": decimal.Decimal("10.005"),
    "enum": Colour.RED,
    "int enum": Size.LARGE,
    "set": {1, 2},
    "frozenset": frozenset({"x"}),
    "tuple": (1, "a", (2,)),
    "bytes": b"\x00\xff",
    "nested": {"points": [Point(0, 0)], "when": datetime.date(2026, 1, 1),
               "colours": (Colour.RED,)},
}  # fmt: skip


@pytest.fixture(params=["in-process", "redis"])
def two(
    request: pytest.FixtureRequest, redis_server: Any, namespace: str
) -> Iterator[Callable[..., tuple[Cache, Cache]]]:
    """Two caches on one namespace (two processes): what one stores, the other reads."""
    made: list[Cache] = []

    def make(**options: Any) -> tuple[Cache, Cache]:
        url = redis_server.url if request.param == "redis" else None
        pair = (Cache(url, namespace=namespace, **options), Cache(url, namespace=namespace,
                                                                 **options))  # fmt: skip
        made.extend(pair)
        return pair

    yield make
    for cache in made:
        cache.close(timeout=5)


def _reader(cache: Cache, drive: Driver, value: Any, **options: Any) -> Callable[..., Any]:
    """The same function on ``cache``: it returns ``value``, counting its loads."""
    loads: list[str] = []

    def load(name: str) -> Any:
        loads.append(name)
        return value

    load.__qualname__ = "load"  # one key for both caches
    f = cache.cached(ttl=60, **options)(drive.function(load))
    f.loads = loads  # type: ignore[attr-defined]
    return f


@pytest.mark.parametrize("name", list(VALUES))
def test_the_types_people_return_come_back_as_they_were(
    two: Callable[..., tuple[Cache, Cache]], drive: Driver, name: str
) -> None:
    writer, reader = two()
    value = VALUES[name]
    first = _reader(writer, drive, value)
    assert drive.run(first, name) == value
    second = _reader(reader, drive, None)
    got = drive.run(second, name)
    if reader._engine.backend is not None:
        assert second.loads == []  # type: ignore[attr-defined]  # read from Redis
        assert got == value and type(got) is type(value)
        if isinstance(value, datetime.datetime):
            assert got.tzinfo == value.tzinfo and got.fold == value.fold


@pytest.mark.parametrize(
    "serializer", ["json", json, Serializer("upper-json", json.dumps, json.loads)]
)
def test_json_and_a_pair_of_ones_own(
    two: Callable[..., tuple[Cache, Cache]], drive: Driver, serializer: Any
) -> None:
    writer, reader = two(serializer=serializer)
    value = {"id": 1, "names": ["a", "b"], "ok": True, "none": None}
    assert drive.run(_reader(writer, drive, value), "k") == value
    second = _reader(reader, drive, None)
    got = drive.run(second, "k")
    if reader._engine.backend is not None:
        assert got == value and second.loads == []  # type: ignore[attr-defined]
        raw = reader._engine.backend.sync_client().get(second.key("k"))
        assert b'{"id":1' in raw.replace(b" ", b"")  # JSON inside the envelope


def test_json_writes_typed_values_as_their_json_form(
    two: Callable[..., tuple[Cache, Cache]], drive: Driver
) -> None:
    writer, reader = two()
    first = _reader(writer, drive, VALUES["pydantic"], serializer="json")
    drive.run(first, "k")
    second = _reader(reader, drive, None, serializer="json")
    got = drive.run(second, "k")
    if reader._engine.backend is not None:
        assert got == {"id": 1, "name": "ann", "joined": "2026-01-02T00:00:00+01:00",
                       "tags": ["a"]}  # fmt: skip


def test_pickle_only_when_named(two: Callable[..., tuple[Cache, Cache]], drive: Driver) -> None:
    writer, _ = two()
    with pytest.raises(SerializationError, match="Opaque"):
        drive.run(_reader(writer, drive, Opaque(1)), "k")
    writer2, reader2 = two(serializer="pickle")
    assert drive.run(_reader(writer2, drive, Opaque(2)), "k") == Opaque(2)
    second = _reader(reader2, drive, None)
    got = drive.run(second, "k")
    if reader2._engine.backend is not None:
        assert got == Opaque(2) and second.loads == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [object(), {"a": [1, {2: Opaque(3)}]}, 2**70])
def test_a_value_the_serializer_refuses_is_the_same_error_everywhere(
    two: Callable[..., tuple[Cache, Cache]], drive: Driver, value: Any
) -> None:
    """With or without Redis: named function, key and culprit; nothing cached."""
    cache, _ = two()
    f = _reader(cache, drive, value)
    for _ in range(2):
        with pytest.raises(SerializationError) as caught:
            drive.run(f, "k")
        message = str(caught.value)
        assert "load" in message and "key" in message
        assert "Opaque" in message or "object" in message or "integer outside" in message
    assert f.loads == ["k", "k"]  # type: ignore[attr-defined]  # nothing was cached
    with pytest.raises(SerializationError):
        drive(cache, "set", "plain", value, ttl=60)
    assert drive(cache, "get", "plain") is None


def test_a_serializer_that_refuses_names_itself(
    two: Callable[..., tuple[Cache, Cache]], drive: Driver
) -> None:
    cache, _ = two(serializer="json")
    with pytest.raises(SerializationError, match=r"json serializer refused .*bytes"):
        drive.run(_reader(cache, drive, b"raw"), "k")


def test_bad_serializers_are_refused_when_configured() -> None:
    class DumpsOnly:
        def dumps(self, value: Any) -> bytes:
            return b""

    with pytest.raises(ConfigTypeError, match=r"lacks loads\(\)"):
        Cache(serializer=DumpsOnly())
    with pytest.raises(ConfigValueError, match="'yaml'"):
        Cache().cached(ttl=1, serializer="yaml")(lambda: 1)
    with pytest.raises(ConfigTypeError, match=r"lacks dumps\(\) and loads\(\)"):
        Cache().cached(ttl=1, serializer=42)(lambda: 1)
    Cache(serializer=Serializer("twice", json.dumps, json.loads))
    Cache(serializer=Serializer("twice", json.dumps, json.loads))
    with pytest.raises(ConfigValueError, match="another serializer named 'twice'"):
        Cache(serializer=Serializer("twice", repr, eval))


def test_a_return_annotation_registers_what_a_reader_decodes(redis_server: Any,
                                                             namespace: str) -> None:  # fmt: skip
    """A process that never built a value of the class still decodes it: the cached
    function's return annotation named it (no import by name from the bytes)."""

    @dataclasses.dataclass
    class Fresh:
        n: int

    name = f"{Fresh.__module__}.{Fresh.__qualname__}"
    writer = Cache(redis_server.url, namespace=namespace)
    reader = Cache(redis_server.url, namespace=namespace)
    try:
        loads: list[int] = []

        def get(n: int) -> list[Fresh] | None:
            loads.append(n)
            return [Fresh(n)]

        get.__annotations__["return"] = list[Fresh] | None
        writer.cached(ttl=60)(get)(1)
        valuetypes.REGISTERED.pop(name)  # the reader's process never met Fresh
        read = reader.cached(ttl=60)(get)  # its annotation registers Fresh again
        assert name in valuetypes.REGISTERED
        assert read(1) == [Fresh(1)] and loads == [1]
        with pytest.raises(TypeError, match="register_type"):
            register_type(int)
    finally:
        writer.close(timeout=5)
        reader.close(timeout=5)
