"""Bad input: a clear error naming what was wrong, raised before anything is cached."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest

from cachewise import Cache, CacheError, ConfigTypeError, ConfigValueError

BAD_TYPE = [None, "10", True, False, [10], object()]
BAD_VALUE = [0, -1, -0.5, math.nan, math.inf, -math.inf, datetime.timedelta(0)]


@pytest.mark.parametrize("ttl", BAD_TYPE)
def test_ttl_of_the_wrong_type_fails_at_decoration(cache: Cache, ttl: Any) -> None:
    with pytest.raises(TypeError) as err:

        @cache.cached(ttl=ttl)
        def get_user(x: int) -> int:
            return x

    assert isinstance(err.value, CacheError) and isinstance(err.value, ConfigTypeError)
    assert "get_user" in str(err.value) and "ttl" in str(err.value)


@pytest.mark.parametrize("ttl", BAD_VALUE)
def test_ttl_out_of_range_fails_at_decoration(cache: Cache, ttl: Any) -> None:
    with pytest.raises(ValueError) as err:

        @cache.cached(ttl=ttl)
        def get_user(x: int) -> int:
            return x

    assert isinstance(err.value, ConfigValueError) and "get_user" in str(err.value)


def test_missing_ttl_fails(cache: Cache) -> None:
    with pytest.raises(TypeError, match="every cached value must expire"):

        @cache.cached()
        def f() -> None: ...

    with pytest.raises(TypeError, match="ttl"):
        cache.set("k", 1)  # type: ignore[call-arg]


def test_bare_decorator_is_a_clear_error(cache: Cache) -> None:
    with pytest.raises(TypeError, match="without arguments"):

        @cache.cached  # type: ignore[arg-type]
        def f() -> None: ...


@pytest.mark.parametrize("ttl", BAD_TYPE[1:] + BAD_VALUE)
def test_bad_ttl_in_calls_names_the_key(cache: Cache, ttl: Any) -> None:
    for call in (
        lambda: cache.set("user:1", 1, ttl=ttl),
        lambda: cache.get_or_load("user:1", lambda: 1, ttl=ttl),
    ):
        with pytest.raises((TypeError, ValueError), match="user:1"):
            call()
    assert cache.get("user:1") is None and cache.stats()["loads"] == 0


@pytest.mark.parametrize("stale", [-1, math.nan, "5", True])
def test_bad_stale_ttl(cache: Cache, stale: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="stale_ttl"):

        @cache.cached(ttl=1, stale_ttl=stale)
        def f() -> None: ...


def test_non_callable_loader(cache: Cache) -> None:
    with pytest.raises(TypeError, match="loader for key 'k'"):
        cache.get_or_load("k", 42, ttl=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="load_many"):
        cache.get_or_load_many(["k"], None, ttl=1)  # type: ignore[arg-type]
    assert cache.get("k") is None


@pytest.mark.parametrize("key", [None, 1, b"k", ""])
def test_bad_explicit_keys(cache: Cache, key: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="key"):
        cache.set(key, 1, ttl=1)
    with pytest.raises((TypeError, ValueError)):
        cache.get_many("abc")


@pytest.mark.parametrize(
    "options, exc",
    [
        ({"l1_maxsize": -1}, ValueError), ({"l1_maxsize": 1.5}, TypeError),
        ({"ttl_jitter": 2}, ValueError), ({"namespace": "a:b"}, ValueError),
        ({"clock": 5}, TypeError), ({"wait_timeout": 0}, ValueError),
        ({"write_behind_when_full": "drop"}, ValueError),
    ],
)  # fmt: skip
def test_bad_cache_options(options: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc) as err:
        Cache(**options)
    assert next(iter(options)).split("_")[-1] in str(err.value)


def test_key_function_must_return_str(cache: Cache) -> None:
    @cache.cached(ttl=1, key=lambda x: x)
    def f(x: Any) -> Any:
        return x

    with pytest.raises(TypeError, match=r"key= function of .*f"):
        f(1)
    assert cache.stats()["loads"] == 0


def test_tags_must_be_strings(cache: Cache) -> None:
    @cache.cached(ttl=1, tags=lambda x: [x])
    def f(x: Any) -> Any:
        return x

    with pytest.raises(TypeError, match="tags="):
        f(1)
    assert cache.stats()["l1_size"] == 0
    with pytest.raises(TypeError, match="tags="):
        cache.cached(ttl=1, tags="team")


def test_writer_decorators_need_a_cached_target(cache: Cache) -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"cache\.cached"):
        cache.invalidates(plain)
    with pytest.raises(TypeError, match=r"cache\.cached"):
        cache.write_through(plain)

    @cache.cached(ttl=1)
    def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="value="):
        cache.write_behind(f, args=lambda x: x)
