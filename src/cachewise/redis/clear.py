"""Dropping a namespace's cache data from Redis: a ``SCAN`` of its keys on every master (bounded
steps, never ``KEYS``, never another namespace's keys: the match is ``<namespace>:*`` and
namespaces hold no ``:``), each batch unlinked in one pipeline of single-key ``UNLINK``s (a
cluster refuses one multi-key command across slots)."""

from __future__ import annotations

import functools
from typing import Any

from .ops import RedisOp
from .steps import Steps, drive_async, drive_sync, node_client


class ClearNamespace(RedisOp):
    """Unlink every value, lease and tag version of the namespace; how many keys went. The
    write-behind queues and pending writes stay (``KeySpace.droppable``)."""

    __slots__ = ()

    #: Keys asked of each ``SCAN`` step, and so the most unlinked in one round trip.
    BATCH = 1000

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def _targets(self, client: Any, asynchronous: bool) -> list[Any]:
        """Each master's plain client on a cluster (SCAN runs node by node); else the client."""
        if not self.backend.cluster:
            return [client]
        return [node_client(client, node, asynchronous) for node in client.get_primaries()]

    def _steps(self, client: Any, asynchronous: bool) -> Steps[int]:
        space = self.backend.keys
        dropped = 0
        for target in self._targets(client, asynchronous):
            cursor = 0
            while True:
                cursor, found = yield functools.partial(
                    target.scan, cursor, match=space.prefix + "*", count=self.BATCH
                )
                names = [k.decode() if isinstance(k, bytes) else k for k in found]
                doomed = [name for name in names if space.droppable(name)]
                if doomed:
                    pipe = target.pipeline(transaction=False)
                    for name in doomed:
                        pipe.unlink(name)
                    yield pipe.execute
                    dropped += len(doomed)
                if int(cursor) == 0:
                    break
        return dropped

    def call_sync(self) -> int:
        return drive_sync(self._steps(self.backend.sync_client(), False))

    async def call_async(self) -> int:
        return await drive_async(self._steps(self.backend.async_client(), True))
