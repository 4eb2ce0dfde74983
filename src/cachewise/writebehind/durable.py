"""Whether the Redis holding a write-behind queue is fit for it: not one that may evict the
queue (refused before a write is accepted), and how many replicas an enqueue waits for."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import redis.exceptions

from .._drivers import Plan
from ..errors import WriteBehindNotDurable, describe
from ..redis import OUTAGE_ERRORS, RedisCall

if TYPE_CHECKING:
    from .host import StreamHost

log = logging.getLogger("cachewise")


class ServerCheck:
    """What one stream queue knows of its Redis: checked, and how many replicas it has."""

    def __init__(self, queue: StreamHost) -> None:
        self.queue = queue
        self.replicas = 0  # of the queue's Redis, as last seen by ``check``
        self.unreplicated = 0  # enqueues acknowledged before a replica had them
        self.logged = 0.0
        self.checked_opens = -1  # the breaker's openings when last checked (a reconnect since?)
        self.due_at = 0.0

    #: How often the queue's Redis is looked at again (its policy, its replicas): a failover or a
    #: reconfiguration changes them, and a reconnect (the breaker opened and closed) too.
    CHECK_EVERY = 30.0

    def due(self) -> bool:
        """Whether ``check`` has work: on the path of every enqueue, so no generator for it."""
        opens = self.queue.backend.breaker_opens()
        return self.checked_opens != opens or self.queue.engine.timer() >= self.due_at

    def check(self) -> Plan[None]:
        """Refuse to queue on a Redis that may evict the queue; learn how many replicas it has.

        Read from ``INFO`` (managed services allow it where ``CONFIG GET`` is refused). Done
        before the first enqueue, again after the breaker reopened and closed, and every
        ``CHECK_EVERY`` seconds."""
        queue = self.queue
        backend = queue.backend
        now = self.queue.engine.timer()
        try:
            if backend.cluster:  # every master's: the queue's partitions may be on any of them
                found = yield RedisCall(backend, "info", "all", target_nodes="primaries")
                infos = list(found.values()) if "maxmemory_policy" not in found else [found]
            else:
                infos = [(yield RedisCall(backend, "info", "all"))]
        except OUTAGE_ERRORS:
            if self.checked_opens < 0:
                raise  # never checked: nothing is queued on a Redis not known to be fit
            # Checked before: a master that does not answer cannot take writes anyway, and
            # the others were fit; looked at again soon (a failover may be under way).
            self.due_at = now + 1.0
            self.checked_opens = backend.breaker_opens()
            return
        except redis.exceptions.NoPermissionError as exc:
            # A Redis that will not say whether it evicts cannot be trusted with the queue.
            if not queue.options.allow_eviction:
                raise WriteBehindNotDurable(
                    f"cachewise could not read the eviction policy of the Redis holding the "
                    f"write-behind queue of {queue.where} (INFO refused: {describe(exc)}), so it "
                    "cannot tell whether queued writes could be evicted; nothing was queued. "
                    "Allow the INFO command for this user, give the queue a Redis of its own "
                    "(write_behind_redis=), or pass write_behind_allow_eviction=True"
                ) from None
            infos = [{}]
        evicting = [str(i.get("maxmemory_policy")) for i in infos]
        evicting = [policy for policy in evicting if policy.startswith("allkeys-")]
        policy = evicting[0] if evicting else "noeviction"
        if policy.startswith("allkeys-") and not queue.options.allow_eviction:
            raise WriteBehindNotDurable(
                f"the Redis holding the write-behind queue of {queue.where} evicts any key under "
                f"memory pressure (maxmemory-policy {policy}), so queued writes could vanish "
                "before they reach the store; nothing was queued. Either give the queue a Redis "
                "of its own that does not evict (write_behind_redis=<URL or client> with "
                "maxmemory-policy noeviction or volatile-*: cachewise's queue keys carry no TTL, "
                "so volatile-* never picks them), or change this Redis' policy to one of those, "
                "or pass write_behind_allow_eviction=True to accept the risk (a loss is then "
                "detected, logged and counted, not prevented)"
            )
        # An enqueue waits when the master has replicas (on a cluster: when any has; each
        # master with none is not waited on).
        self.replicas = max(int(i.get("connected_slaves", 0) or 0) for i in infos)
        self.checked_opens = backend.breaker_opens()
        self.due_at = now + self.CHECK_EVERY

    def unreplicated_write(self) -> None:
        """An enqueue was acknowledged at ``replica_wait`` before a replica had it: counted, and
        logged once a minute."""
        self.unreplicated += 1
        now = self.queue.engine.timer()
        if now - self.logged > 60:
            self.logged = now
            log.warning(
                "cachewise: a write-behind write of %s was acknowledged before any of the %d "
                "replicas had it (write_behind_replica_wait=%ss): a failover now could lose it",
                self.queue.where, self.replicas, self.queue.options.replica_wait,
            )  # fmt: skip
