"""Turning what ``redis=`` was given into clients: the settings of a given client, carried to
the twin of the other flavour; a cluster told apart from a single Redis; a master managed by
Sentinel, named by URL or by a client."""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any, NamedTuple

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.retry
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff

from ..errors import ConfigValueError

log = logging.getLogger("cachewise")

SYNC_CLIENTS = (redis.Redis, redis.cluster.RedisCluster)
ASYNC_CLIENTS = (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)


#: Connection settings carried from a given client to the twin cachewise builds for it.
_CARRIED = (
    "host", "port", "db", "username", "password", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "client_name", "path",
)  # fmt: skip


def _carried(given: dict[str, Any], connection_class: Any, drop: str = "") -> dict[str, Any]:
    """The settings of ``given`` carried to a twin (but ``drop``), and TLS if the connections
    of the client they come from are TLS ones."""
    kwargs = {k: v for k, v in given.items() if k in _CARRIED and k != drop}
    if "SSL" in getattr(connection_class, "__name__", ""):
        kwargs["ssl"] = True
    return kwargs


def cluster_settings(client: Any) -> dict[str, Any]:
    """What a cluster client was built with: one node to start from, and the settings carried
    to the twin (a cluster has one database: no ``db``)."""
    node = client.get_default_node()
    if node is None:  # an asyncio client not connected yet knows its startup nodes only
        node = next(iter(client.nodes_manager.startup_nodes.values()))
    given = getattr(client, "connection_kwargs", None)
    if given is None:  # the sync client keeps them with its nodes
        given = client.nodes_manager.connection_kwargs
    kwargs = _carried(given, given.get("connection_class"), drop="db")
    kwargs.update(host=node.host, port=node.port)
    return kwargs


def cluster_retry(cluster: bool, asynchronous: bool) -> dict[str, Any]:
    """The retry of a cluster client cachewise builds: one retry after 10-100 ms. redis-py's
    default holds each call for seconds while a master is down or the cluster fails over
    (retries with topology refreshes and sleeps); a cache would rather serve without Redis
    (counted, and the master's breaker opens). A client given by the user keeps its own."""
    if not cluster:
        return {}
    kind: Any = redis.asyncio.retry.Retry if asynchronous else redis.retry.Retry
    return {"retry": kind(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 1)}


def detect_cluster(url: str, settings: dict[str, Any]) -> bool:
    """Whether the server a URL names is a node of a Redis Cluster (``INFO cluster``, else
    ``CLUSTER INFO`` for a user refused INFO): it is then served as a cluster, whichever node
    was named. Raises what Redis raises when it cannot be reached."""
    probe = redis.Redis.from_url(url, **settings)
    try:
        try:
            return bool(probe.info("cluster").get("cluster_enabled"))
        except redis.exceptions.ResponseError:
            pass
        try:
            probe.cluster("info")
            return True
        except redis.exceptions.ResponseError as exc:
            if "disabled" not in str(exc):
                log.warning(
                    "cachewise: cannot tell whether %s is a Redis Cluster (INFO and CLUSTER "
                    "INFO refused: %s); serving it as a single Redis", _safe(url), exc,
                )  # fmt: skip
            return False
    finally:
        probe.close()


def _safe(url: str) -> str:
    """A URL without its credentials, for logs."""
    return url.split("@", 1)[-1] if "@" in url else url


def settings_of(client: Any) -> dict[str, Any]:
    """The connection settings of a plain client, carried to the twin cachewise builds."""
    pool = client.connection_pool
    return _carried(pool.connection_kwargs, pool.connection_class)


class SentinelSpec(NamedTuple):
    """A master managed by Sentinel: where the sentinels are, the service's name, and the
    settings of the master's connections and of the sentinels'."""

    sentinels: list[tuple[str, int]]
    service: str
    master: dict[str, Any]
    sentinel: dict[str, Any]


def sentinel_spec(url: str, timeouts: dict[str, Any]) -> SentinelSpec:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` (or
    ``rediss+sentinel://`` for TLS to the master): the credentials are the master's."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    hosts = netloc[-1]
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigValueError(
                f"redis= Sentinel URL {_safe(url)!r}: each sentinel must be host:port"
            )
        sentinels.append((name, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigValueError(
            f"redis= Sentinel URL {_safe(url)!r}: the path must be /<service name>[/<db>]"
        )
    master: dict[str, Any] = {**timeouts, "db": int(path[1]) if len(path) == 2 else 0}
    if len(netloc) == 2:
        user, _, password = netloc[0].partition(":")
        master.update(
            username=urllib.parse.unquote(user) or None,
            password=urllib.parse.unquote(password) or None,
        )
    if parts.scheme.startswith("rediss"):
        master["ssl"] = True
    return SentinelSpec(sentinels, path[0], master, dict(timeouts))


def sentinel_of(client: Any) -> SentinelSpec | None:
    """The ``SentinelSpec`` of a Sentinel-managed client (of either flavour), else None."""
    pool = client.connection_pool
    if not isinstance(
        pool, (redis.sentinel.SentinelConnectionPool, redis.asyncio.sentinel.SentinelConnectionPool)
    ):
        return None
    manager = pool.sentinel_manager
    sentinels = [
        (c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
        for c in manager.sentinels
    ]
    master = _carried(pool.connection_kwargs, getattr(pool, "connection_class", None))
    given = _carried(manager.sentinel_kwargs, None)
    return SentinelSpec(sentinels, pool.service_name, master, given)


def sentinel_master(spec: SentinelSpec, asynchronous: bool) -> Any:
    """A client of the master Sentinel names for ``spec.service`` (found again after a
    failover by redis-py's Sentinel pool)."""
    kind: Any = redis.asyncio.sentinel.Sentinel if asynchronous else redis.sentinel.Sentinel
    timeouts = {k: v for k, v in spec.master.items() if k.startswith("socket_")}
    sentinel = kind(spec.sentinels, sentinel_kwargs=spec.sentinel or None, **timeouts)
    return sentinel.master_for(spec.service, **spec.master)
