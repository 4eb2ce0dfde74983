"""What the engine, the write-behind queues and the Redis operations may ask of a Redis tier:
the seam a standalone, Sentinel or Cluster backend fills (in the manner of dogpile.cache's
``api.py``). ``RedisBackend`` is the standalone one; nothing above this package names it but
``Cache``, which builds it."""

from __future__ import annotations

import concurrent.futures
import threading
import weakref
from typing import Any, Protocol

from .._clock import Clock
from .breaker import Breaker
from .keyspace import KeySpace


class EventSource(Protocol):
    """The subscription to the namespace's events, as the engine sees it: whether it is up, and
    the wake-ups of callers waiting for another process' fill."""

    ready: threading.Event
    heard: bool
    gave_up: bool

    @property
    def first_due(self) -> bool: ...

    def first_subscription(self) -> concurrent.futures.Future[Any]: ...

    def wait_for(self, key: str) -> concurrent.futures.Future[Any]: ...

    def forget(self, key: str, future: concurrent.futures.Future[Any]) -> None: ...

    def wake(self, key: str, payload: Any) -> None: ...

    def stop(self) -> None: ...


class Backend(Protocol):
    """One ``Cache``'s Redis tier: its clients (per flavour, and per event loop), scripts, key
    names, the estimate of the server's clock, the circuit breaker and the event listener."""

    #: Every key and channel name of the namespace.
    keys: KeySpace
    #: Tells this cache's own events from others'.
    origin: str
    breaker: Breaker
    listener: EventSource | None
    #: The longest a blocking read may wait within the socket timeout.
    block_limit: float
    #: Server clock: server_ms ~= monotonic() * 1000 + offset_ms, within uncertainty_ms.
    offset_ms: float | None
    uncertainty_ms: float
    #: What the breaker's reset and the listener's renewals are measured on.
    timer: Clock
    #: Clients whose connection has every script loaded already.
    preloaded: weakref.WeakSet[Any]
    #: How long an invalidation waits for a replica to have it, and how many replicas there are.
    replica_wait: float
    replicas: int

    def breaker_for(self, key: str) -> Breaker: ...

    def breakers(self) -> list[Breaker]: ...

    def breaker_opens(self) -> int: ...

    def unreachable(self) -> None: ...

    def refresh_topology(self) -> None: ...

    @property
    def inbox(self) -> str: ...

    @property
    def sender(self) -> str: ...

    @property
    def everyone(self) -> str: ...

    @property
    def cluster(self) -> bool: ...

    def sync_client(self) -> Any: ...

    def async_client(self) -> Any: ...

    def sync_script(self, name: str) -> Any: ...

    def async_script(self, name: str) -> Any: ...

    def wait_ms(self, seconds: float) -> int: ...

    def server_now_ms(self) -> float: ...

    def clock_due(self) -> bool: ...

    def setup_due(self) -> bool: ...

    def record_time(self, before: float, reply: tuple[int, int], after: float) -> None: ...

    def reset_after_fork(self) -> None: ...

    def close(self) -> None: ...
