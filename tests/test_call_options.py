"""What users ask of ``cached`` beyond a fixed TTL: ``unless=`` (results kept out), a TTL from the
result, and per call ``refresh``, ``peek`` and ``uncached``; sync and async, in-process and with
Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cachewise import MISSING, Cache, CacheError
from cachewise.testing import FakeClock

from .conftest import Driver
from .test_concurrency import wait_until


def test_unless_keeps_a_result_out_of_the_cache(where: Callable[..., Cache], drive: Driver) -> None:
    cache = where()
    loads: list[int] = []
    rows = {1: "one"}

    def find(x: int) -> str | None:
        loads.append(x)
        return rows.get(x)

    f = cache.cached(ttl=60, unless=lambda result: result is None)(drive.function(find))
    assert drive.run(f, 2) is None and drive.run(f, 2) is None
    assert loads == [2, 2]  # None was not cached
    assert drive.run(f, 1) == "one" and drive.run(f, 1) == "one"
    assert loads == [2, 2, 1]
    if cache._engine.backend is not None:
        assert cache._engine.backend.sync_client().exists(f.key(2)) == 0


def test_a_ttl_from_the_result(drive: Driver) -> None:
    clock = FakeClock()
    cache = Cache(namespace="t", clock=clock, ttl_jitter=0, early_refresh_beta=0)
    loads: list[int] = []

    def token(x: int) -> dict[str, int]:
        loads.append(x)
        return {"expires_in": 10 * x}

    f = cache.cached(ttl=lambda t: t["expires_in"])(drive.function(token))
    drive.run(f, 1), drive.run(f, 3)
    clock.advance(15)  # past token 1's 10 s, within token 3's 30 s
    drive.run(f, 1), drive.run(f, 3)
    assert loads == [1, 3, 1]
    cache.close()


@pytest.mark.parametrize(
    ("ttl", "error"),
    [(lambda r: "10", TypeError), (lambda r: -1, ValueError), (lambda r: 1 / 0, ValueError)],
)
def test_a_bad_ttl_from_a_result_is_a_clear_error_and_nothing_is_cached(
    where: Callable[..., Cache], ttl: Callable[[Any], Any], error: type[Exception]
) -> None:
    cache = where()

    @cache.cached(ttl=ttl)
    def expiring(x: int) -> int:
        return x

    with pytest.raises(error, match="expiring") as raised:
        expiring(1)
    assert isinstance(raised.value, CacheError)
    assert expiring.peek(1) is MISSING


def test_an_unless_that_raises_names_the_function(where: Callable[..., Cache]) -> None:
    cache = where()

    @cache.cached(ttl=60, unless=lambda r: r["missing"])
    def picky(x: int) -> dict[str, int]:
        return {}

    with pytest.raises(CacheError, match="picky"):
        picky(1)
    assert picky.peek(1) is MISSING


def test_peek_refresh_and_uncached(where: Callable[..., Cache], drive: Driver) -> None:
    a, b = where(), where()
    version = [1]
    loads: list[int] = []

    def current(x: int) -> int:
        loads.append(x)
        return version[0]

    fa = a.cached(ttl=60)(drive.function(current))
    fb = b.cached(ttl=60)(drive.function(current))
    assert drive.run(fa.peek, 7) is MISSING and loads == []  # peek never loads
    assert drive.run(fa, 7) == 1
    assert drive.run(fa.peek, 7) == 1
    version[0] = 2
    assert drive.run(fa.uncached, 7) == 2  # straight through: nothing read or kept
    assert drive.run(fa, 7) == 1 and loads == [7, 7]
    assert drive.run(fa.refresh, 7) == 2 and loads == [7, 7, 7]
    assert drive.run(fa, 7) == 2
    if a._engine.backend is not None:  # another process learns the refreshed value
        wait_until(lambda: drive.run(fb.peek, 7) == 2)
        assert drive.run(fb, 7) == 2 and loads == [7, 7, 7]


def test_a_function_given_positionally_is_still_the_bare_decorator_error() -> None:
    cache = Cache(namespace="t")
    with pytest.raises(TypeError, match="without arguments"):
        cache.cached(lambda r: 10)
    assert cache.cached(60)(lambda: 1)() == 1  # a number positionally is the TTL
    with pytest.raises(TypeError, match="once"):
        cache.cached(60, ttl=60)
    cache.close()


class Session:
    """An argument with no stable key of its own (its repr is its address)."""


def test_ignore_leaves_arguments_out_of_the_key(where: Callable[..., Cache], drive: Driver) -> None:
    cache = where()
    loads: list[tuple[int, str]] = []

    def profile(user_id: int, session: Session, *, lang: str = "en") -> str:
        loads.append((user_id, lang))
        return f"{user_id}/{lang}"

    f = cache.cached(ttl=60, ignore=("session",))(drive.function(profile))
    assert drive.run(f, 1, Session()) == "1/en"
    assert drive.run(f, 1, Session()) == "1/en"  # another session: the same entry (L1 hit)
    assert drive.run(f, 1, session=Session(), lang="fr") == "1/fr"
    assert loads == [(1, "en"), (1, "fr")]
    assert f.key(1, Session()) == f.key(1, None)
    g = cache.cached(ttl=60, ignore="session")(drive.function(profile))
    assert g.key(2, Session()) == g.key(2, "anything")

    store: dict[int, str] = {}

    def save(user_id: int, text: str) -> None:
        store[user_id] = text

    # A writer may leave the ignored argument out of args= too.
    cache.write_through(f, args=lambda uid, text: uid, value=lambda uid, text: text)(save)(1, "new")
    assert drive.run(f, 1, Session()) == "new" and len(loads) == 2


def test_bad_ignore_is_refused_at_decoration() -> None:
    cache = Cache(namespace="t")

    def f(a: int, b: int) -> int:
        return a

    class Repo:
        def get(self, a: int) -> int:
            return a

    with pytest.raises(CacheError, match=r"'c', which is not one of its parameters \(a, b\)"):
        cache.cached(ttl=1, ignore=["c"])(f)
    with pytest.raises(CacheError, match="receiver"):
        cache.cached(ttl=1, ignore=["self"])(Repo.get)
    with pytest.raises(CacheError, match="must name parameters"):
        cache.cached(ttl=1, ignore=[1])(f)  # type: ignore[list-item]
    with pytest.raises(CacheError, match="key="):
        cache.cached(ttl=1, ignore=["a"], key=lambda a, b: str(a))
    cache.close()


def test_when_caches_only_the_calls_it_holds_of(where: Callable[..., Cache], drive: Driver) -> None:
    cache = where()
    loads: list[int] = []

    def report(day: int, live: bool = False) -> int:
        loads.append(day)
        return day

    f = cache.cached(ttl=60, when=lambda day, live=False: not live)(drive.function(report))
    assert drive.run(f, 1) == 1 and drive.run(f, 1) == 1 and loads == [1]
    assert drive.run(f, 1, live=True) == 1 and drive.run(f, 1, True) == 1
    assert loads == [1, 1, 1]  # live calls went through, and kept nothing
    assert drive.run(f.peek, 2, True) is MISSING
    assert drive.run(f, 1) == 1 and loads == [1, 1, 1]  # the cached entry stayed

    def broken(day: int, live: bool = False) -> bool:
        raise RuntimeError("no")

    g = cache.cached(ttl=60, when=broken)(drive.function(report))
    with pytest.raises(CacheError, match=r"when= of .*report raised RuntimeError\('no'\)"):
        drive.run(g, 3)
    assert 3 not in loads
    with pytest.raises(CacheError, match="when="):
        cache.cached(ttl=60, when=42)  # type: ignore[arg-type]
