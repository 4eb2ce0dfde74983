"""``Cache``: the public face. Every method is one line that hands a plan to a driver."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from . import _validate, serializers
from ._clock import Clock, monotonic
from ._compiled import speedups
from ._decorating import Decorating
from ._drivers import Plan, run_async, run_sync
from ._lifecycle import _OPEN, Lifecycle
from .engine import Engine, InvalidationEvent, Policy, Target
from .engine.values import _UNREAD
from .errors import ConfigTypeError, ConfigValueError
from .options import Connection, Freshness, Leases, WriteBehind, group_options
from .redis import RedisBackend
from .writebehind import (
    WriteBehindQueue,
)

log = logging.getLogger("cachewise")

T = TypeVar("T")

_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class Cache(Decorating, Lifecycle):
    """A two-tier cache: in-process LRU (L1) in front of Redis (L2).

    ``redis=`` is None (in-process only), a URL, a ``redis.Redis``, a ``redis.asyncio.Redis``,
    or a ``(redis.Redis, redis.asyncio.Redis)`` pair. Every value has a TTL; reads are single-flight
    per key across threads and asyncio tasks; ``stale_ttl`` serves stale values while one
    background refresh runs. ``clock`` is the time entries live on and ``timer`` the time
    deadlines of waits are kept on (both ``time.monotonic`` unless a test passes its own).
    """

    def __init__(
        self,
        redis: Any = None,
        *,
        namespace: str = "cachewise",
        l1_maxsize: int = 10_000,
        clock: Clock | None = None,
        timer: Clock | None = None,
        fail_closed: bool = False,
        serializer: Any = None,
        freshness: Freshness | None = None,
        leases: Leases | None = None,
        connection: Connection | None = None,
        write_behind: WriteBehind | None = None,
        **flat: Any,
    ) -> None:
        """``redis``, ``namespace`` and ``l1_maxsize`` as DESIGN's public face says; the rest in
        option groups (``cachewise.options``). The flat keywords of earlier releases
        (``ttl_jitter=``, ``lease_ttl=``, ``socket_timeout=``, ``write_behind_retries=``…) are
        accepted too, each filling its group's field."""
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ConfigValueError(
                "namespace must be 1-64 characters from A-Z a-z 0-9 _ . - (so that no "
                f"namespace's keys can collide with another's), got {namespace!r}"
            )
        if clock is not None:
            _validate.callable_(clock, "clock")
        if timer is not None:
            _validate.callable_(timer, "timer")
        timer = timer or monotonic
        given = {"freshness": freshness, "leases": leases, "connection": connection,
                 "write_behind": write_behind}  # fmt: skip
        groups = group_options(given, flat)
        fresh: Freshness = groups["freshness"]
        lease: Leases = groups["leases"]
        conn: Connection = groups["connection"]
        writes: WriteBehind = groups["write_behind"]
        backend = queue_backend = None
        if redis is not None:
            backend = self._backend(redis, namespace, conn, timer)
        if writes.redis is not None:
            if backend is None:
                raise ConfigValueError(
                    "write_behind_redis= gives write-behind queues a Redis of their own beside "
                    "the cache's; without redis= the cache is in-process and its queue in memory"
                )
            queue_backend = self._backend(writes.redis, namespace, conn, timer)
        if not isinstance(fail_closed, bool):
            raise ConfigTypeError(f"fail_closed must be a bool, not {type(fail_closed).__name__}")
        self._fail_closed = fail_closed
        self.namespace = namespace
        self._engine = Engine(
            namespace=namespace,
            l1_maxsize=_validate.non_negative_int(l1_maxsize, "l1_maxsize"),
            clock=clock or monotonic,
            timer=timer,
            ttl_jitter=fresh.ttl_jitter,
            early_refresh_beta=fresh.early_refresh_beta,
            wait_timeout=fresh.wait_timeout,
            backend=backend,
            queue_backend=queue_backend,
            lease_ttl=lease.ttl,
            lease_wait_timeout=lease.wait_timeout,
            max_value_bytes=conn.max_value_bytes,
        )
        self._engine.serializer = serializers.resolve(serializer, "Cache")
        self._groups = groups  # the option groups this cache runs on
        self._write_options = writes
        self._queues: list[WriteBehindQueue] = []
        self._policies: dict[tuple[Any, ...], Policy] = {}
        self._closed = False
        _OPEN.add(self)

    @staticmethod
    def _backend(redis: Any, namespace: str, conn: Connection, timer: Clock) -> RedisBackend:
        return RedisBackend(
            redis,
            namespace,
            socket_timeout=conn.socket_timeout,
            connect_timeout=conn.connect_timeout,
            breaker_threshold=conn.breaker_threshold,
            breaker_reset=conn.breaker_reset,
            replica_wait=conn.replica_wait,
            timer=timer,
        )

    def __repr__(self) -> str:
        tier = "redis" if self._engine.backend is not None else "in-process"
        return f"Cache({tier}, namespace={self.namespace!r})"

    # -- argument checks, then plans ------------------------------------------------------------

    def _target(self, key: Any) -> Target:
        if type(key) is not str or not key:  # the common case without a call
            _validate.cache_key(key)  # raises the error that names it
        return self._engine.explicit_target(key)

    def _policy(self, ttl: Any, stale_ttl: Any, key: str) -> Policy:
        # Checked TTL pairs are remembered: a call site passes the same ttl= every time, and
        # checking it again would be most of the cost of an explicit-key hit.
        try:
            return self._policies[(type(ttl), ttl, type(stale_ttl), stale_ttl)]
        except (KeyError, TypeError):
            return self._new_policy(ttl, stale_ttl, key)

    def _new_policy(self, ttl: Any, stale_ttl: Any, key: str) -> Policy:
        """A TTL pair not remembered yet: checked (naming ``key`` in the error), remembered."""
        where = f"key {key!r}"
        policy = Policy(
            _validate.ttl_seconds(ttl, where),
            _validate.stale_seconds(stale_ttl, where),
            self._fail_closed,
        )
        if len(self._policies) > 256:
            self._policies.clear()
        self._policies[(type(ttl), ttl, type(stale_ttl), stale_ttl)] = policy
        return policy

    def _read_args(
        self, key: str, loader: Callable[[], Any], ttl: Any, stale_ttl: Any
    ) -> tuple[Target, Callable[[], Any], Policy]:
        # ``_target`` and the remembered answers of ``explicit_target`` and ``_policy``,
        # inlined: three Python frames less around a shared-tier hit.
        if type(key) is not str or not key:
            _validate.cache_key(key)
        engine = self._engine
        target = engine._targets.get(key)
        if target is None or target.serializer is not engine.serializer:
            target = engine.explicit_target(key)
        if not callable(loader):  # the message is built only when it is needed
            _validate.callable_(loader, f"loader for key {key!r}")
        try:
            policy = self._policies[(type(ttl), ttl, type(stale_ttl), stale_ttl)]
        except (KeyError, TypeError):
            policy = self._new_policy(ttl, stale_ttl, key)
        return target, loader, policy

    def _keys(self, keys: Iterable[str]) -> list[str]:
        if isinstance(keys, str):
            raise ConfigTypeError("keys must be an iterable of str, not a single str")
        keys = list(keys)
        try:
            "".join(keys)  # C-speed checks for the common case: all str, none empty
            good = "" not in keys
        except TypeError:
            good = False
        if not good:
            for key in keys:
                _validate.cache_key(key)  # raises the error that names the bad one
        return keys

    def _targets(self, keys: Iterable[str]) -> dict[str, Target]:
        make = self._engine.explicit_target
        return {key: make(key) for key in self._keys(keys)}

    def _get_or_load_many(
        self, keys: Iterable[str], load_many: Callable[[list[str]], Any], ttl: Any, stale_ttl: Any
    ) -> Plan[dict[str, Any]]:
        targets = self._targets(keys)
        _validate.callable_(load_many, "load_many")
        return self._engine.read_many(targets, load_many, self._policy(ttl, stale_ttl, "*"))

    def _set(self, key: str, value: Any, ttl: Any) -> Plan[None]:
        return self._engine.set(self._target(key), value, self._policy(ttl, None, key))

    def _invalidate(self, keys: Iterable[str], tags: Iterable[str] = ()) -> Plan[int]:
        full = [self._target(key).full_key for key in keys]
        return self._engine.invalidate(full, [_validate.cache_key(t, "tag") for t in tags])

    # -- cache-aside ----------------------------------------------------------------------------

    def get_or_load(
        self, key: str, loader: Callable[[], T], *, ttl: Any, stale_ttl: Any = None
    ) -> T:
        """Return the value of ``key``, loading it with ``loader()`` (once per key) on a miss."""
        value, read = self._held_or_read(key, loader, ttl, stale_ttl)
        return value if read is None else self._engine.read_sync(*read)  # type: ignore[no-any-return]

    async def aget_or_load(
        self, key: str, loader: Callable[[], Any], *, ttl: Any, stale_ttl: Any = None
    ) -> Any:
        """``get_or_load`` for asyncio: ``loader()`` may return an awaitable."""
        value, read = self._held_or_read(key, loader, ttl, stale_ttl)
        return value if read is None else await self._engine.read_async(*read)

    def _held_or_read(
        self, key: str, loader: Callable[[], Any], ttl: Any, stale_ttl: Any
    ) -> tuple[Any, tuple[Target, Callable[[], Any], Policy] | None]:
        """(L1's value, None) for an L1 hit, which needs no plan (``served_now``); else
        (None, the arguments of the read)."""
        read = self._read_args(key, loader, ttl, stale_ttl)
        value = self._engine.served_now(read[0])
        return (None, read) if value is _UNREAD else (value, None)

    def get_or_load_many(
        self,
        keys: Iterable[str],
        load_many: Callable[[list[str]], Mapping[str, Any]],
        *,
        ttl: Any,
        stale_ttl: Any = None,
    ) -> dict[str, Any]:
        """``{key: value}`` for every key; ``load_many(missing)`` gets only the missing keys."""
        return run_sync(self._get_or_load_many(keys, load_many, ttl, stale_ttl))

    async def aget_or_load_many(
        self,
        keys: Iterable[str],
        load_many: Callable[[list[str]], Any],
        *,
        ttl: Any,
        stale_ttl: Any = None,
    ) -> dict[str, Any]:
        """``get_or_load_many`` for asyncio: ``load_many`` may return an awaitable."""
        return await run_async(self._get_or_load_many(keys, load_many, ttl, stale_ttl))

    # -- plain reads and writes -----------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The fresh value of ``key``, or ``default``."""
        engine = self._engine
        value = engine.held(_validate.cache_key(key))  # an L1 hit: no plan to carry out
        if value is _UNREAD:
            return engine.get_many_sync([key]).get(key, default)
        return value

    async def aget(self, key: str, default: Any = None) -> Any:
        engine = self._engine
        value = engine.held(_validate.cache_key(key))
        if value is _UNREAD:
            found = await engine.get_many_async([key])
            return found.get(key, default)
        return value

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` of the keys that hold a fresh value."""
        return self._engine.get_many_sync(self._keys(keys))

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return await self._engine.get_many_async(self._keys(keys))

    def set(self, key: str, value: Any, *, ttl: Any) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (mandatory)."""
        run_sync(self._set(key, value, ttl))

    async def aset(self, key: str, value: Any, *, ttl: Any) -> None:
        await run_async(self._set(key, value, ttl))

    def delete(self, key: str) -> bool:
        """Drop ``key``; True if a value was held."""
        return run_sync(self._invalidate([key])) > 0

    async def adelete(self, key: str) -> bool:
        return await run_async(self._invalidate([key])) > 0

    # -- invalidation ---------------------------------------------------------------------------

    def invalidate(self, *keys: str) -> int:
        """Drop explicit keys everywhere; returns how many entries this process held."""
        return run_sync(self._invalidate(keys))

    async def ainvalidate(self, *keys: str) -> int:
        return await run_async(self._invalidate(keys))

    def invalidate_tags(self, *tags: str) -> int:
        """Drop every entry stored with any of ``tags``."""
        return run_sync(self._invalidate((), tags))

    async def ainvalidate_tags(self, *tags: str) -> int:
        return await run_async(self._invalidate((), tags))

    def on_invalidate(
        self, listener: Callable[[InvalidationEvent], None]
    ) -> Callable[[InvalidationEvent], None]:
        """Call ``listener(event)`` on every invalidation; usable as a decorator."""
        _validate.callable_(listener, "on_invalidate listener")
        self._engine.listeners.append(listener)
        return listener


#: ``get_or_load`` in Python, whether or not a compiled one replaced it (the tests compare them).
PYTHON_GET_OR_LOAD = Cache.get_or_load
if speedups is not None:  # ``_speedups_front.c``: the same read, without two Python frames
    Cache.get_or_load = speedups.bind_front(Cache, Cache.get_or_load)  # type: ignore[method-assign]
