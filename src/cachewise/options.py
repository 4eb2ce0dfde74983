"""The option groups of ``Cache``: frozen values, each validated where it is built, so that a
mistake is reported at the line that made it and names the option.

``Cache("redis://…", namespace="shop")`` stays the one-line common case; the groups are for the
rest::

    Cache(url, freshness=Freshness(ttl_jitter=0), leases=Leases(ttl=5),
          connection=Connection(socket_timeout=0.2), write_behind=WriteBehind(retries=10))

The flat keywords of earlier releases (``ttl_jitter=``, ``lease_ttl=``, ``socket_timeout=``,
``write_behind_retries=``…) are still accepted: ``FLAT`` says which group and field each one
fills.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from . import _validate
from .errors import ConfigTypeError, ConfigValueError

__all__ = ["FLAT", "Connection", "Freshness", "Leases", "WriteBehind", "group_options"]


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # a frozen dataclass normalizing its own fields


@dataclass(frozen=True)
class Freshness:
    """How entries age: TTL jitter (a fraction of the TTL taken off at random, up to 0.5), XFetch's
    ``early_refresh_beta`` (0 turns early refresh off), and how long a caller waits for a load
    of its key before loading by itself (None: as long as it takes)."""

    ttl_jitter: float = 0.1
    early_refresh_beta: float = 1.0
    wait_timeout: float | None = None

    def __post_init__(self) -> None:
        _set(self, "ttl_jitter", _validate.fraction(self.ttl_jitter, "ttl_jitter", upper=0.5))
        beta = _validate.fraction(self.early_refresh_beta, "early_refresh_beta", upper=100.0)
        _set(self, "early_refresh_beta", beta)
        if self.wait_timeout is not None:
            wait = _validate.ttl_seconds(self.wait_timeout, "Cache", name="wait_timeout")
            _set(self, "wait_timeout", wait)


@dataclass(frozen=True)
class Leases:
    """The shared lease of a load: its life (renewed every third of it while the load runs) and
    how long a caller waits for another process' load before loading by itself."""

    ttl: float = 2.0
    wait_timeout: float = 10.0

    def __post_init__(self) -> None:
        _set(self, "ttl", _validate.ttl_seconds(self.ttl, "Cache", name="lease_ttl"))
        wait = _validate.ttl_seconds(self.wait_timeout, "Cache", name="lease_wait_timeout")
        _set(self, "wait_timeout", wait)


@dataclass(frozen=True)
class Connection:
    """The Redis connection: timeouts, the circuit breaker (opens after ``breaker_threshold``
    outage errors in a row, tries again after ``breaker_reset`` seconds), and the largest value
    shared through Redis (larger ones stay in this process)."""

    socket_timeout: float = 0.5
    connect_timeout: float = 0.5
    breaker_threshold: int = 5
    breaker_reset: float = 1.0
    max_value_bytes: int = 1_000_000
    #: With replicas, how long an invalidation waits for one of them to have it (``WAIT``)
    #: before it returns, so that a failover does not bring the dropped value back; 0 returns
    #: at once. A wait that runs out is counted (``invalidations_unreplicated``) and logged.
    replica_wait: float = 0.1

    def __post_init__(self) -> None:
        _validate.replica_wait(self.replica_wait, "replica_wait")
        for name in ("socket_timeout", "connect_timeout", "breaker_reset"):
            _set(self, name, _validate.ttl_seconds(getattr(self, name), "Cache", name=name))
        threshold = _validate.non_negative_int(self.breaker_threshold, "breaker_threshold")
        _set(self, "breaker_threshold", max(1, threshold))
        size = _validate.non_negative_int(self.max_value_bytes, "max_value_bytes")
        _set(self, "max_value_bytes", max(1, size))


@dataclass(frozen=True)
class WriteBehind:
    """Write-behind queues: their bound and what a full one does, batches, the flusher's pace,
    retries and backoff, how long a dead flusher's writes wait before another claims them, how
    long dead letters are kept; and the durability contract's options (see the concepts page):
    a Redis of their own (``redis``), accepting an evicting one, the wait for a replica."""

    maxsize: int = 10_000
    when_full: Literal["block", "raise"] = "block"
    batch_size: int = 100
    interval: float = 0.05
    retries: int = 5
    backoff: float = 0.1
    claim_idle: float = 5.0
    retention: float = 7 * 24 * 3600.0
    #: Queue writes on a Redis whose eviction policy may evict them (``allkeys-*``): refused
    #: unless this says the user accepts that a write may then be lost (and reported lost).
    allow_eviction: bool = False
    #: With replicas, how long an enqueue waits for one of them to have the write (``WAIT``); 0
    #: returns at once (faster; a failover may then lose writes acknowledged just before it).
    replica_wait: float = 0.2
    #: A Redis of the queues' own (a URL or a client), beside the cache's: None shares it.
    redis: Any = None
    #: How many streams a writer's Redis queue is split into, each key's writes in one of them
    #: (by a hash of the key, so they stay in order), each with its own hash tag, flusher lease,
    #: claims and dead letters: on a cluster, a busy writer's queue spread over the masters.
    partitions: int = 1

    def __post_init__(self) -> None:
        if self.when_full not in ("block", "raise"):
            raise ConfigValueError(
                f"write_behind_when_full must be 'block' or 'raise', got {self.when_full!r}"
            )
        if type(self.partitions) is not int or not 1 <= self.partitions <= 64:
            raise ConfigValueError(
                f"write_behind_partitions must be an int from 1 to 64, got {self.partitions!r}"
            )
        for name in ("maxsize", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigValueError(f"write_behind {name} must be >= 1")
        for name in ("interval", "backoff", "claim_idle", "retention"):
            value = _validate.ttl_seconds(getattr(self, name), "Cache", name=f"write_behind_{name}")
            _set(self, name, value)
        if not isinstance(self.allow_eviction, bool):
            raise ConfigValueError(
                f"write_behind_allow_eviction must be a bool, got {self.allow_eviction!r}"
            )
        _validate.replica_wait(self.replica_wait, "write_behind_replica_wait")
        if self.retention < self.claim_idle * 10:
            raise ConfigValueError(
                "write_behind_retention must be at least ten times write_behind_claim_idle"
            )


_CONNECTION = [f.name for f in dataclasses.fields(Connection)]

#: Each flat keyword of earlier releases: the group (a keyword of ``Cache``) and the field it fills.
FLAT: dict[str, tuple[str, str]] = {
    "ttl_jitter": ("freshness", "ttl_jitter"),
    "early_refresh_beta": ("freshness", "early_refresh_beta"),
    "wait_timeout": ("freshness", "wait_timeout"),
    "lease_ttl": ("leases", "ttl"),
    "lease_wait_timeout": ("leases", "wait_timeout"),
    **{name: ("connection", name) for name in _CONNECTION},
    **{f"write_behind_{f.name}": ("write_behind", f.name) for f in dataclasses.fields(WriteBehind)},
}

_GROUPS: dict[str, type[Any]] = {
    "freshness": Freshness,
    "leases": Leases,
    "connection": Connection,
    "write_behind": WriteBehind,
}


def group_options(given: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """The four groups ``Cache`` runs on, from the groups it was ``given`` (None where not) and
    the flat keywords (``flat``) of earlier releases; a flat keyword beside its own group, or
    one ``Cache`` does not know, is a ``TypeError`` naming it."""
    fields: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
    for keyword, value in flat.items():
        if keyword not in FLAT:
            raise ConfigTypeError(f"Cache() got an unexpected keyword argument {keyword!r}")
        group, field = FLAT[keyword]
        if given.get(group) is not None:
            raise ConfigTypeError(
                f"Cache(): {keyword}= and {group}= both set it; pass {field}= inside "
                f"{_GROUPS[group].__name__}(...) instead"
            )
        fields[group][field] = value
    built: dict[str, Any] = {}
    for group, cls in _GROUPS.items():
        value = given.get(group)
        if value is None:
            value = cls(**fields[group])
        elif not isinstance(value, cls):
            raise ConfigTypeError(
                f"Cache({group}=...) takes a {cls.__name__}, not {type(value).__name__}"
            )
        built[group] = value
    return built
