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
import re
import secrets
import threading
import weakref
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.commands.core import AsyncScript, Script

from .._clock import Clock, monotonic
from ..errors import ConfigTypeError, ConfigValueError, describe
from .breaker import REDIS_ERRORS, Breaker, NodeBreakers
from .clients import (
    ASYNC_CLIENTS,
    SYNC_CLIENTS,
    SentinelSpec,
    cluster_retry,
    cluster_settings,
    detect_cluster,
    sentinel_master,
    sentinel_of,
    sentinel_spec,
    settings_of,
)
from .keyspace import KeySpace
from .scripts import SCRIPTS as _SCRIPTS

if TYPE_CHECKING:
    from .api import EventSource

log = logging.getLogger("cachewise")


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
        replica_wait: float = 0.0,
        timer: Clock = monotonic,
    ) -> None:
        self.namespace = namespace
        #: What the breaker's reset and the listener's renewals are measured on.
        self.timer = timer
        #: ``on_recover`` is set by the engine: L1 cannot be trusted after an outage.
        self.breaker = Breaker(breaker_threshold, breaker_reset, lambda: None, timer)
        #: On a cluster, each master's breaker (``breaker_for``).
        self.node_breakers = NodeBreakers(self.breaker)
        #: A cluster client made here or given, whose view of the slots ``breaker_for`` uses.
        self._topology: Any = None
        #: A node was unreachable since the slots were last read (see ``refresh_topology``).
        self.topology_stale = False
        #: Every key and channel name of the namespace.
        self.keys = KeySpace(namespace)
        self.origin = secrets.token_hex(8)  # tells this Cache's own events from others'
        #: The longest a blocking read (XREADGROUP BLOCK) may wait within the socket timeout.
        self.block_limit = socket_timeout / 2
        #: How long an invalidation waits for a replica, and how many the master had when
        #: last looked at (with the server clock; none counted on a cluster yet).
        self.replica_wait = replica_wait
        self.replicas = 0
        self._url: str | None = None
        #: Given a Sentinel URL or a Sentinel-managed client: how to reach the master.
        self._sentinel: SentinelSpec | None = None
        self._settings: dict[str, Any] = {}
        self._sync: Any = None
        #: Whether cachewise built the sync client (and so closes it; never the user's).
        self._owns_sync = False
        self._given_async: Any = None
        #: Whether Redis is a cluster; None for a URL not looked at yet (see ``cluster``).
        self._cluster: bool | None = False
        timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
        if isinstance(spec, str) and spec.split(":", 1)[0] in ("redis+sentinel", "rediss+sentinel"):
            self._sentinel = sentinel_spec(spec, timeouts)
        elif isinstance(spec, str):
            try:
                redis.connection.parse_url(spec)  # type: ignore[no-untyped-call]
            except ValueError as exc:
                raise ConfigValueError(
                    f"redis= {redacted(spec)!r} is not a usable Redis URL: {exc}"
                ) from None
            self._url = spec
            self._settings = timeouts
            self._cluster = None
        elif isinstance(spec, tuple) and len(spec) == 2:
            self._sync, self._given_async = spec
            if not isinstance(self._sync, SYNC_CLIENTS):
                raise ConfigTypeError(
                    "the first client of redis=(sync, async) must be a redis.Redis or a "
                    f"redis.cluster.RedisCluster, not {type(self._sync).__name__}"
                )
            if not isinstance(self._given_async, ASYNC_CLIENTS):
                raise ConfigTypeError(
                    "the second client of redis=(sync, async) must be a redis.asyncio.Redis or a "
                    f"redis.asyncio.cluster.RedisCluster, not {type(self._given_async).__name__}"
                )
            self._cluster = isinstance(self._sync, redis.cluster.RedisCluster)
            if self._cluster != isinstance(self._given_async, redis.asyncio.cluster.RedisCluster):
                raise ConfigTypeError(
                    "redis=(sync, async): one client is a cluster client and the other is not"
                )
        elif isinstance(spec, ASYNC_CLIENTS):
            self._given_async = spec
            self._given(spec, isinstance(spec, redis.asyncio.cluster.RedisCluster))
        elif isinstance(spec, SYNC_CLIENTS):
            self._sync = spec
            self._given(spec, isinstance(spec, redis.cluster.RedisCluster))
        else:
            raise ConfigTypeError(
                "redis= must be a URL, a redis.Redis, a redis.asyncio.Redis, a Redis Cluster "
                "client of either kind, or a (sync, async) pair of them, not "
                f"{type(spec).__name__}"
            )
        if self._cluster and self._sync is not None:
            self._topology = self._sync  # a cluster client given
        self._lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        #: The loop ``async_client`` served last and its client, both weakly: a shared-tier hit
        #: asks on every call, and ``WeakKeyDictionary.get`` is a Python call of its own.
        self._last_async: tuple[weakref.ref[Any], weakref.ref[Any]] | None = None
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

    def _given(self, client: Any, cluster: bool) -> None:
        """Learn from the one client given how to build its twin of the other flavour."""
        self._cluster = cluster
        if cluster:
            self._settings = cluster_settings(client)
        else:
            self._sentinel = sentinel_of(client)
            if self._sentinel is None:
                self._settings = settings_of(client)

    def breaker_for(self, key: str) -> Breaker:
        """The breaker a call of ``key`` counts on: on a cluster, that of the master serving
        its slot; else the one breaker."""
        if self._topology is None:
            return self.breaker
        return self.node_breakers.of(self._topology, key)

    def breakers(self) -> list[Breaker]:
        """Every breaker: the ``Cache``'s, then each master's (on a cluster)."""
        return self.node_breakers.all(self._topology)

    def breaker_opens(self) -> int:
        """How many times any breaker opened: a reconnect happened when this moved."""
        return self.node_breakers.opens()

    @property
    def cluster(self) -> bool:
        """Whether Redis is a cluster. For a URL, known once a client was made (every plan
        makes one before it decides anything that depends on this)."""
        return self._cluster is True

    def _detect(self) -> None:
        """For a URL: ask the server whether it is a cluster node, once (a round trip on a
        connection of its own; what Redis raises is raised, and it is asked again next time)."""
        if self._cluster is None:
            assert self._url is not None
            self._cluster = detect_cluster(self._url, self._settings)

    def sync_client(self) -> Any:
        if self._sync is None:
            self._detect()
            with self._lock:
                if self._sync is None:
                    kind: Any = redis.cluster.RedisCluster if self.cluster else redis.Redis
                    settings = {**self._settings, **cluster_retry(self.cluster, False)}
                    if self._sentinel is not None:
                        self._sync = sentinel_master(self._sentinel, asynchronous=False)
                    elif self._url is not None:
                        self._sync = kind.from_url(self._url, **settings)
                    else:
                        self._sync = kind(**settings)
                    self._owns_sync = True
                if self.cluster:
                    self._topology = self._sync
        return self._sync

    def async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        last = self._last_async
        if last is not None and last[0]() is loop:
            client: Any = last[1]()
            if client is not None:
                return client
        client = self._async.get(loop)
        if client is None:
            self._detect()  # blocks the loop for one round trip, once per cache
            kind: Any = redis.asyncio.cluster.RedisCluster if self.cluster else redis.asyncio.Redis
            if self._given_async is not None and not self._async:
                client = self._given_async  # the user's client serves the first loop it meets
            elif self._sentinel is not None:
                client = sentinel_master(self._sentinel, asynchronous=True)
            elif self._url is not None:
                client = kind.from_url(
                    self._url, **self._settings, **cluster_retry(self.cluster, True)
                )
            elif self.cluster:
                client = kind(**self._settings, **cluster_retry(True, True))
            else:
                source = self._given_async if self._given_async is not None else self._sync
                client = kind(**settings_of(source))
            self._async[loop] = client
            if self.cluster and self._topology is None:
                self._topology = client
        self._last_async = (weakref.ref(loop), weakref.ref(client))
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

    def unreachable(self) -> None:
        """A node could not be reached. On a cluster, its slots may have a new master: the
        listener's thread reads the slots again within a second (``refresh_topology``), and an
        asyncio client's with the server clock within half a second, not a minute."""
        if self._topology is not None:
            self.topology_stale = True
            self.clock_checked = min(self.clock_checked, monotonic() - 59.5)

    def refresh_topology(self) -> None:
        """Read the cluster's slots again on the sync client, if a node was unreachable since
        the last time (in the listener's thread: no caller waits for it)."""
        if self.topology_stale and self._sync is not None:
            self.topology_stale = False
            try:
                self._sync.nodes_manager.initialize()
            except REDIS_ERRORS as exc:
                self.topology_stale = True  # no node answered: again next time
                log.debug("cachewise: could not read the cluster's slots: %s", describe(exc))

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

    def wait_ms(self, seconds: float) -> int:
        """The timeout of a ``WAIT`` for a replica of ``seconds``, in milliseconds: at least 1
        (0 would wait for ever) and within the socket timeout (the reply must come before it)."""
        return max(1, int(min(seconds, self.block_limit) * 1000))

    @property
    def inbox(self) -> str:
        """This ``Cache``'s own event channel: the events of other processes reach it there."""
        return self.keys.inbox(self.origin)

    @property
    def sender(self) -> str:
        """What scripts that publish an event are given (``lua._PUBLISH_FN``): this cache's
        inbox, so the registry of listeners spares it its own events; on a cluster, where a
        script may not read the registry (another slot), ``!`` and the shared channel."""
        return self.everyone if self.cluster else self.inbox

    @property
    def everyone(self) -> str:
        """What publishing scripts are given to send an event on the shared channel alone: one
        ``PUBLISH`` whatever the number of listeners; the sender's own listener skips it."""
        return "!" + self.keys.channel

    def reset_after_fork(self) -> None:
        """In a forked child: no listener thread, no connections or scripts of the parent's."""
        self._lock = threading.Lock()
        self.listener = None
        self.origin = secrets.token_hex(8)
        self._async = weakref.WeakKeyDictionary()
        self._last_async = None
        self._async_scripts = weakref.WeakKeyDictionary()
        if self._owns_sync:
            self._sync = None  # redis-py would also reset the pool on the new pid
            self._sync_scripts = {}

    def close(self) -> None:
        """Stop the listener and close the sync client cachewise opened (never the user's)."""
        if self.listener is not None:
            self.listener.stop()
        if self._owns_sync and self._sync is not None:
            self._sync.close()


def redacted(url: str) -> str:
    """``url`` with its user information (user name, password) masked, for an error message;
    by pattern, since a URL that does not parse is just when this is needed."""
    return re.sub(r"//[^/?#]*@", "//***@", url)
