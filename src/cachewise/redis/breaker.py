"""What Redis may raise, and the circuit breaker that stops calling it while it is down."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
from redis.crc import key_slot

from .._clock import Clock, monotonic

log = logging.getLogger("cachewise")


#: What a Redis call may raise when Redis is slow, gone or confused: never the caller's problem.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    # redis-py's cluster errors that are not RedisErrors: no node reachable, a slot no node
    # covers during a failover, and the rest of that family.
    redis.exceptions.RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)

#: Errors that mean Redis cannot be reached in time (as opposed to a reply it refused): what the
#: circuit breaker counts.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.RedisClusterUnreachableError,
    redis.exceptions.ClusterDownError,
    OSError,
    asyncio.TimeoutError,
)


class CircuitOpen(redis.exceptions.ConnectionError):
    """Redis was not called: the circuit breaker is open after repeated failures."""


class Breaker:
    """A circuit breaker (per ``Cache``, and on a cluster per master too): after ``threshold``
    outage errors in a row it opens, and Redis calls fail at once instead of each paying a
    timeout; after ``reset`` seconds one call goes through as a probe (half-open) and closes it
    if it succeeds.

    Hand-written: a few fields on the hot path (closed is one attribute read per call), which
    the breaker libraries on PyPI (pybreaker, aiobreaker) do not offer for sync and async alike.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(
        self,
        threshold: int,
        reset: float,
        on_recover: Callable[[], None],
        timer: Clock = monotonic,
    ) -> None:
        #: What ``reset`` is measured on.
        self.timer = timer
        self.threshold = threshold
        self.reset = reset
        self.on_recover = on_recover
        self.state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.opens = 0
        self.short_circuits = 0
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise ``CircuitOpen`` unless Redis may be called now."""
        if self.state is self.CLOSED:
            return
        with self._lock:
            now = self.timer()
            # One probe per ``reset``: a probe that never reported back does not wedge it.
            if self.state is not self.CLOSED and now - self.opened_at >= self.reset:
                self.state = self.HALF_OPEN
                self.opened_at = now
                return
            if self.state is self.CLOSED:
                return
            self.short_circuits += 1
        raise CircuitOpen("Redis is not called: the circuit breaker is open")

    def passed(self, result: Any) -> Any:
        """Record a call Redis answered; returns ``result``."""
        if self.failures or self.state is not self.CLOSED:
            with self._lock:
                recovered = self.state is not self.CLOSED
                self.state = self.CLOSED
                self.failures = 0
            if recovered:
                log.warning("cachewise: Redis is back; the circuit breaker is closed")
                self.on_recover()
        return result

    def failed(self) -> None:
        """Record a call that could not reach Redis."""
        with self._lock:
            self.failures += 1
            if self.state is self.HALF_OPEN or (
                self.state is self.CLOSED and self.failures >= self.threshold
            ):
                if self.state is self.CLOSED:
                    self.opens += 1
                    log.warning(
                        "cachewise: %d Redis failures in a row; circuit breaker open for %.1f s",
                        self.failures,
                        self.reset,
                    )
                self.state = self.OPEN
                self.opened_at = self.timer()


class NodeBreakers:
    """On a cluster, a breaker per master beside the ``Cache``'s own: a call of one key counts
    on the breaker of the master serving its slot, so a master that stops answering turns off
    the calls of its slots only; calls that span masters (bulk reads, pipelines, events) count
    on the ``Cache``'s. Each master's breaker has the settings of the ``Cache``'s, and its
    recovery empties L1 as that one's does."""

    def __init__(self, main: Breaker) -> None:
        self.main = main
        self.by_node: dict[str, Breaker] = {}
        #: The openings of the breakers of masters forgotten since (``opens`` never goes back).
        self.retired_opens = 0

    def of(self, client: Any, key: str) -> Breaker:
        """The breaker of the master ``client`` last saw serving ``key``'s slot."""
        nodes = client.nodes_manager.slots_cache.get(key_slot(key.encode("utf-8", "surrogatepass")))
        if not nodes:
            return self.main
        breaker = self.by_node.get(nodes[0].name)
        if breaker is None:
            main = self.main
            made = Breaker(main.threshold, main.reset, lambda: main.on_recover(), main.timer)
            breaker = self.by_node.setdefault(nodes[0].name, made)
        return breaker

    def all(self, client: Any) -> list[Breaker]:
        """The ``Cache``'s breaker and those of the masters ``client`` knows now: a master that
        lost its slots (failed over) is forgotten, so its breaker, open when it went, does not
        stay open in ``stats()`` for ever."""
        if client is not None and self.by_node:
            serving = {node.name for node in client.get_primaries()}
            for name in [name for name in self.by_node if name not in serving]:
                gone = self.by_node.pop(name, None)
                self.retired_opens += gone.opens if gone is not None else 0
        return [self.main, *list(self.by_node.values())]

    def opens(self) -> int:
        """How many times any of the breakers opened (cheap: on the path of every enqueue)."""
        return self.main.opens + self.retired_opens + sum(b.opens for b in self.by_node.values())
