"""One ``Cache``'s Redis tier: its clients (built from what ``redis=`` was given), scripts,
key names and the server clock.

``redis=`` accepts a URL, a ``redis.Redis``, a ``redis.asyncio.Redis``, or a pair of both. Given
a single client, the other kind is built from its connection settings (host, port, db,
credentials, TLS), so sync and async code share one configuration. Async clients are kept per
event loop, because a redis.asyncio connection belongs to the loop that opened it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import weakref
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from redis.commands.core import AsyncScript, Script

from .._clock import Clock, monotonic
from ..errors import ConfigTypeError, ConfigValueError
from .breaker import Breaker
from .keyspace import KeySpace
from .scripts import SCRIPTS as _SCRIPTS

if TYPE_CHECKING:
    from .api import EventSource

log = logging.getLogger("cachewise")


#: Connection settings carried from a given client to the twin cachewise builds for it.
_CARRIED = (
    "host", "port", "db", "username", "password", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "client_name", "path",
)  # fmt: skip


def _settings(client: Any) -> dict[str, Any]:
    pool = client.connection_pool
    if "Sentinel" in type(pool).__name__:
        # Its connections find the master through the sentinels: there is no host to copy,
        # and a twin built without one would quietly talk to localhost.
        raise ConfigTypeError(
            "redis=: a Sentinel client cannot be copied into its sync/async twin; pass both, "
            "as redis=(sentinel.master_for(...), asyncio_sentinel.master_for(...))"
        )
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in _CARRIED}
    if "SSL" in pool.connection_class.__name__:
        kwargs["ssl"] = True
    return kwargs


class RedisBackend:
    """Clients, scripts, key names and the server clock of one ``Cache``'s Redis tier."""

    def __init__(
        self,
        spec: Any,
        namespace: str,
        *,
        socket_timeout: float,
        connect_timeout: float,
        breaker_threshold: int = 5,
        breaker_reset: float = 1.0,
        timer: Clock = monotonic,
    ) -> None:
        self.namespace = namespace
        #: What the breaker's reset and the listener's renewals are measured on.
        self.timer = timer
        #: ``on_recover`` is set by the engine: L1 cannot be trusted after an outage.
        self.breaker = Breaker(breaker_threshold, breaker_reset, lambda: None, timer)
        #: Every key and channel name of the namespace.
        self.keys = KeySpace(namespace)
        self.origin = secrets.token_hex(8)  # tells this Cache's own events from others'
        #: The longest a blocking read (XREADGROUP BLOCK) may wait within the socket timeout.
        self.block_limit = socket_timeout / 2
        self._url: str | None = None
        self._settings: dict[str, Any] = {}
        self._sync: redis.Redis | None = None
        self._given_async: redis.asyncio.Redis | None = None
        timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
        if isinstance(spec, str):
            try:
                redis.connection.parse_url(spec)  # type: ignore[no-untyped-call]
            except ValueError as exc:
                raise ConfigValueError(f"redis= is not a usable Redis URL: {exc}") from None
            self._url = spec
            self._settings = timeouts
        elif isinstance(spec, tuple) and len(spec) == 2:
            self._sync, self._given_async = spec
        elif isinstance(spec, redis.asyncio.Redis):
            self._given_async = spec
            self._settings = _settings(spec)
        elif isinstance(spec, redis.Redis):
            self._sync = spec
            self._settings = _settings(spec)
        elif "Cluster" in type(spec).__name__:
            raise ConfigTypeError(
                "redis=: Redis Cluster clients are not supported yet (the lease and invalidation "
                "scripts build keys a cluster would refuse); use a standalone or Sentinel Redis"
            )
        else:
            raise ConfigTypeError(
                "redis= must be a URL, a redis.Redis, a redis.asyncio.Redis or a "
                f"(redis.Redis, redis.asyncio.Redis) pair, not {type(spec).__name__}"
            )
        if self._sync is not None and not isinstance(self._sync, redis.Redis):
            raise ConfigTypeError("the first client of redis=(sync, async) must be a redis.Redis")
        if self._given_async is not None and not isinstance(self._given_async, redis.asyncio.Redis):
            raise ConfigTypeError("the second client of redis=(sync, async) must be async")
        self._lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._sync_scripts: dict[str, Script] = {}
        self._async_scripts: weakref.WeakKeyDictionary[Any, dict[str, AsyncScript]] = (
            weakref.WeakKeyDictionary()
        )
        # Server clock: server_ms ~= monotonic() * 1000 + offset_ms, within uncertainty_ms.
        self.offset_ms: float | None = None
        self.uncertainty_ms = 0.0
        self.clock_checked = 0.0
        self.listener: EventSource | None = None
        #: Clients whose connection has every script loaded already.
        self.preloaded: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- clients ----------------------------------------------------------------------------

    def sync_client(self) -> redis.Redis:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = (
                        redis.Redis.from_url(self._url, **self._settings)
                        if self._url is not None
                        else redis.Redis(**self._settings)
                    )
        return self._sync

    def async_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            if self._given_async is not None and not self._async:
                client = self._given_async  # the user's client serves the first loop it meets
            elif self._url is not None:
                client = redis.asyncio.Redis.from_url(self._url, **self._settings)
            else:
                source = self._given_async if self._given_async is not None else self._sync
                client = redis.asyncio.Redis(**_settings(source))
            self._async[loop] = client
        return client

    def sync_script(self, name: str) -> Script:
        script = self._sync_scripts.get(name)
        if script is None:
            script = self._sync_scripts[name] = self.sync_client().register_script(_SCRIPTS[name])
        return script

    def async_script(self, name: str) -> AsyncScript:
        client = self.async_client()
        scripts = self._async_scripts.setdefault(client, {})
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = client.register_script(_SCRIPTS[name])
        return script

    # -- the server clock -------------------------------------------------------------------

    def clock_due(self) -> bool:
        """Whether the offset to the server clock should be (re)measured (every 60 s)."""
        return self.offset_ms is None or monotonic() - self.clock_checked > 60.0

    def setup_due(self) -> bool:
        """Whether the clock is due, or the client of the calling code (the running loop's, or
        the sync one) has not had its scripts loaded yet."""
        if self.clock_due():
            return True
        loop = asyncio._get_running_loop()  # the public twin raises when no loop runs
        if loop is not None:
            return self._async.get(loop) not in self.preloaded
        return self._sync is None or self._sync not in self.preloaded

    def record_time(self, before: float, reply: tuple[int, int], after: float) -> None:
        server_ms = reply[0] * 1000 + reply[1] / 1000
        self.offset_ms = server_ms - (before + after) * 500  # midpoint of the round trip, in ms
        self.uncertainty_ms = (after - before) * 500
        self.clock_checked = after

    def server_now_ms(self) -> float:
        """The Redis server's clock now, estimated from the local monotonic clock."""
        assert self.offset_ms is not None
        return monotonic() * 1000 + self.offset_ms

    # -- events -----------------------------------------------------------------------------

    @property
    def inbox(self) -> str:
        """This ``Cache``'s own event channel: the events of other processes reach it there."""
        return self.keys.inbox(self.origin)

    def reset_after_fork(self) -> None:
        """In a forked child: no listener thread, no connections or scripts of the parent's."""
        self._lock = threading.Lock()
        self.listener = None
        self.origin = secrets.token_hex(8)
        self._async = weakref.WeakKeyDictionary()
        self._async_scripts = weakref.WeakKeyDictionary()
        if self._url is not None:
            self._sync = None  # redis-py would also reset the pool on the new pid
            self._sync_scripts = {}

    def close(self) -> None:
        """Stop the listener and close the sync client cachewise opened (never the user's)."""
        if self.listener is not None:
            self.listener.stop()
        if self._url is not None and self._sync is not None:
            self._sync.close()
