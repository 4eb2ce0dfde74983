"""The values the engine works with: targets, policies, events, script calls, and the lease
renewal of a load."""

from __future__ import annotations

import enum
import inspect
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .. import _validate
from .._drivers import (
    Plan,
)
from .._l1 import Table
from ..errors import ConfigValueError
from ..redis import (
    Backend,
    RunPipeline,
    RunScript,
    ScriptCall,
)
from ..serializers import Serializer

log = logging.getLogger("cachewise")

#: A script call: its name in ``redis.scripts``, its keys, its arguments.
#: The script call that stores (or, too large, drops) an entry.
StoreCall = ScriptCall


def stored_bytes(store: StoreCall) -> bytes | None:
    """The packed entry a STORE call writes (what waiters of its fill are handed); None for
    the INVALIDATE that stands in for a value too large to share."""
    return store.args[1] if store.script == "store" else None


#: Values up to this size travel with their fill event; larger ones are read from Redis.
EVENT_VALUE_LIMIT = 64 * 1024

_UNREAD: Any = object()  # Redis not read yet
_NO_REDIS: Any = object()  # Redis failed: go on without it
_RETRY: Any = object()  # a flight's result telling its callers to start over


class Count(str, enum.Enum):
    """Every counter ``stats()`` reports, by name: the one list of them. A member is its name
    (``Count.LOADS == "loads"``), so the counter table and ``stats()`` agree by construction."""

    MISSES = "misses"
    LOADS = "loads"
    LOAD_ERRORS = "load_errors"
    REFRESHES = "refreshes"
    EARLY_REFRESHES = "early_refreshes"
    REFRESH_ERRORS = "refresh_errors"
    STALE_SERVED = "stale_served"
    COALESCED_WAITS = "coalesced_waits"
    WAIT_TIMEOUTS = "wait_timeouts"
    SYNC_LOADS_ON_LOOP = "sync_loads_on_loop"
    SETS = "sets"
    INVALIDATIONS = "invalidations"
    L2_HITS = "l2_hits"
    LEASE_WAITS = "lease_waits"
    LEASE_WAIT_TIMEOUTS = "lease_wait_timeouts"
    FILLS_REFUSED = "fills_refused"
    REDIS_ERRORS = "redis_errors"
    DECODE_ERRORS = "decode_errors"
    INVALIDATIONS_RECEIVED = "invalidations_received"
    L1_FLUSHES = "l1_flushes"
    PENDING_WRITES_READ = "pending_writes_read"
    LOADS_WITHOUT_REDIS = "loads_without_redis"
    OUTAGE_INVALIDATIONS_SENT = "outage_invalidations_sent"
    INVALIDATIONS_UNREPLICATED = "invalidations_unreplicated"
    OVERSIZE_VALUES = "oversize_values"
    TAG_MISSES = "tag_misses"


@dataclass(frozen=True)
class InvalidationEvent:
    """What ``on_invalidate`` listeners receive: which full keys and tags were dropped, and where
    the invalidation came from (``"local"``, or ``"remote"`` for another process)."""

    keys: tuple[str, ...]
    tags: tuple[str, ...]
    origin: Literal["local", "remote"] = "local"


class _Missing:
    """The type of ``MISSING``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "cachewise.MISSING"

    def __bool__(self) -> bool:
        return False


#: What ``peek`` returns when nothing fresh is cached (``None`` may be a cached value).
MISSING = _Missing()


@dataclass(frozen=True)
class Policy:
    """How entries of one function or one call live."""

    ttl: float
    stale_ttl: float = 0.0
    #: Raise ``RedisUnavailable`` rather than load without the shared lease when Redis fails.
    fail_closed: bool = False
    #: ``ttl=`` and ``stale_ttl=`` given as functions of the result (then ``ttl`` above is
    #: unused, and so is ``stale_ttl`` when ``stale_of`` is set).
    ttl_of: Callable[[Any], Any] | None = None
    stale_of: Callable[[Any], Any] | None = None
    #: ``unless=``: a result it holds true of is returned to the callers, never cached.
    unless: Callable[[Any], Any] | None = None

    def keeps(self, value: Any, where: str) -> bool:
        """Whether ``value`` may be cached (``unless=``). A predicate that raises is a clear
        error naming the function: the value is not cached."""
        if self.unless is None:
            return True
        try:
            return not self.unless(value)
        except Exception as exc:
            raise ConfigValueError(
                f"unless= of {where} raised {exc!r} on a result: the result was not cached"
            ) from exc

    def lifetimes(self, value: Any, where: str) -> tuple[float, float]:
        """The TTL and the stale TTL of an entry holding ``value``: the fixed ones, or what the
        functions give for it, checked as a fixed one is (a bad one raises, naming the
        function, and nothing is cached)."""
        ttl, stale = self.ttl, self.stale_ttl
        if self.ttl_of is not None:
            ttl = _validate.ttl_seconds(_of(self.ttl_of, value, "ttl", where), where)
        if self.stale_of is not None:
            given = _of(self.stale_of, value, "stale_ttl", where)
            stale = _validate.stale_seconds(given, where)
        return ttl, stale


def _of(fn: Callable[[Any], Any], value: Any, name: str, where: str) -> Any:
    try:
        return fn(value)
    except Exception as exc:
        raise ConfigValueError(
            f"{name}= of {where} raised {exc!r} on a result: the result was not cached"
        ) from exc


@dataclass(slots=True)
class Target:
    """Where one entry lives: its L1 table and key, its full (namespaced) key, its tags."""

    table: Table
    l1_key: Hashable
    full_key: str
    where: str
    tags: Callable[[], Iterable[str]] | None = None
    #: How its value goes to Redis (None: msgpack); ``serializers``.
    serializer: Serializer | None = None
    #: This call is not cached (``when=`` said so): its loader runs, nothing is read or kept.
    through: bool = False

    def described(self) -> str:
        """The function and the key, for an error about this entry's value."""
        return f"{self.where} (key {self.full_key!r})"


class _Latency:
    """A bounded reservoir of recent durations, summarised as percentiles."""

    def __init__(self, size: int = 2048) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        #: Record a duration in seconds: the deque's own ``append`` (a Python method wrapping
        #: it was a frame on every miss).
        self.add: Callable[[float], None] = self._samples.append

    def summary(self) -> dict[str, float]:
        data = sorted(self._samples)
        if not data:
            return {"count": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0}

        def pct(p: float) -> float:
            return data[min(len(data) - 1, int(p * len(data)))]

        return {"count": len(data), "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99)}


class _Renewal:
    """The lease renewal of one load (RENEW script calls), run every third of the lease's life
    while the load runs. The sync loads of a process renew from one thread, which merges the
    renewals of one Redis that are due together into one pipeline."""

    __slots__ = ("backend", "calls")

    def __init__(self, backend: Backend, calls: list[ScriptCall]):
        self.backend = backend
        self.calls = calls

    @property
    def group(self) -> Backend:
        return self.backend

    def __call__(self) -> Plan[Any]:
        return self.merged([self])

    def merged(self, renewals: list[_Renewal]) -> Plan[Any]:
        return _run_calls(self.backend, [call for renewal in renewals for call in renewal.calls])


def _run_calls(backend: Backend, calls: list[ScriptCall]) -> Plan[Any]:
    """Script calls in one round trip: one ``EVALSHA``, or a pipeline of them."""
    if len(calls) == 1:
        return (yield RunScript(backend, *calls[0]))
    return (yield RunPipeline(backend, calls))


def _same(value: Any) -> Any:
    return value


def _one_of(load_many: Callable[[list[str]], Any], key: str) -> Any:
    """Load one key through a bulk loader (a key whose lease another process held)."""
    result = load_many([key])
    if inspect.isawaitable(result):
        return _one_of_async(result, key)
    return result[key]


async def _one_of_async(result: Any, key: str) -> Any:
    return (await result)[key]
