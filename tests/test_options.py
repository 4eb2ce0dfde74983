"""The option groups of ``Cache`` (``cachewise.options``) and the flat keywords they replace."""

from __future__ import annotations

from typing import Any

import pytest

from cachewise import Cache, Connection, Freshness, Leases, WriteBehind
from cachewise.options import FLAT


def test_groups_reach_the_engine_and_the_queues() -> None:
    cache = Cache(
        freshness=Freshness(ttl_jitter=0.2, early_refresh_beta=0, wait_timeout=3),
        leases=Leases(ttl=4, wait_timeout=7),
        connection=Connection(max_value_bytes=1234),
        write_behind=WriteBehind(retries=9, when_full="raise"),
    )
    engine = cache._engine
    assert (engine.jitter, engine.beta, engine.wait_timeout) == (0.2, 0.0, 3.0)
    assert (engine.lease_ttl, engine.lease_wait_timeout) == (4.0, 7.0)
    assert engine.max_value_bytes == 1234
    assert cache._write_options.retries == 9 and cache._write_options.when_full == "raise"


@pytest.mark.parametrize("keyword", sorted(FLAT))
def test_every_flat_keyword_of_earlier_releases_fills_its_group_field(keyword: str) -> None:
    group, field = FLAT[keyword]
    default = getattr(Cache(namespace="t")._groups[group], field)
    value: Any = {
        bool: True, int: 3, float: 0.3, str: "raise", type(None): 2.5,
    }[type(default)]  # fmt: skip
    if keyword == "write_behind_retention":
        value = 3600.0
    if keyword == "write_behind_redis":
        pytest.skip("needs a cache Redis; covered by the durability tests")
    groups = Cache(namespace="t", **{keyword: value})._groups
    assert getattr(groups[group], field) == value


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl_jitter": 0, "freshness": Freshness()}, "ttl_jitter= and freshness="),
        ({"bogus": 1}, "unexpected keyword argument 'bogus'"),
        ({"leases": 5}, "takes a Leases, not int"),
    ],
)
def test_bad_groups_are_type_errors_that_name_what_was_wrong(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        Cache(**options)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: Freshness(ttl_jitter=0.9), "ttl_jitter"),
        (lambda: Leases(ttl=0), "lease_ttl"),
        (lambda: Connection(socket_timeout=-1), "socket_timeout"),
        (lambda: WriteBehind(when_full="drop"), "when_full"),
        (lambda: WriteBehind(interval=float("nan")), "interval"),
    ],
)
def test_a_group_is_validated_where_it_is_built(build: Any, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        build()
