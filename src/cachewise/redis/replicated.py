"""Writes acknowledged once a replica has them: each script, then ``WAIT 1 <ms>`` on the
connection that wrote (a WAIT on another connection does not follow the write, and returns at
once). On one Redis, the scripts and the WAIT are one pipeline; on a cluster, one such pipeline
per master, sent on that master's own connection, and a master without replicas is not waited
on. redis-py's cluster pipeline cannot do this (it sends WAIT to every master, on connections
of their own), so the grouping by master is written here."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import redis
import redis.asyncio

from .breaker import REDIS_ERRORS
from .ops import RunPipeline, ScriptCall
from .scripts import SCRIPTS as _SCRIPTS
from .steps import drive_async, drive_sync, node_client

#: The replicas a write was acknowledged by when no master it went to has any: nothing was
#: waited for, and nothing is counted as unreplicated (as on a Redis without replicas).
UNWAITED = 1 << 30

#: Replies that say a master no longer serves the slot (a failover or a resharding moved it):
#: the call wrote nothing there, and is sent again through the cluster client, which follows.
_ELSEWHERE = (
    redis.exceptions.AskError,  # and MovedError
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


class _Group(NamedTuple):
    """The calls (by index) that go to one master, and whether it has replicas to wait for."""

    node: Any
    indexes: list[int]
    wait: bool


class RunReplicated(RunPipeline):
    """Scripts, each acknowledged once a replica has what it wrote (or ``wait_ms`` passed).
    Returns the scripts' replies and the fewest replicas any of them reached (``UNWAITED`` if
    none had replicas to wait for). On NOSCRIPT (the refused call wrote nothing) the script is
    loaded and the call sent again with its own WAIT."""

    __slots__ = ("wait_ms",)

    def __init__(self, backend: Any, calls: list[ScriptCall], wait_ms: int) -> None:
        super().__init__(backend, calls)
        self.wait_ms = wait_ms

    def _groups(self, client: Any) -> list[_Group]:
        """The calls per master holding their slot (a call's keys share one), as the cluster
        client last saw the slots; a call of a slot it knows no master of goes through it."""
        if not self.backend.cluster:
            return [_Group(client, list(range(len(self.calls))), True)]
        groups: dict[str, _Group] = {}
        for i, call in enumerate(self.calls):
            nodes = client.nodes_manager.slots_cache.get(client.keyslot(call.keys[0])) or [None]
            name = nodes[0].name if nodes[0] is not None else ""
            if name not in groups:
                groups[name] = _Group(nodes[0], [], len(nodes) > 1)
            groups[name].indexes.append(i)
        return list(groups.values())

    def _pipeline(self, client: Any, indexes: list[int], wait: bool) -> Callable[[], Any]:
        """A step sending the calls at ``indexes`` (EVALSHA: loaded by the NOSCRIPT retry),
        then the WAIT, in one pipeline; its replies in order, errors among them."""
        pipe = client.pipeline(transaction=False)
        for i in indexes:
            name, keys, args = self.calls[i]
            pipe.evalsha(_sha(name), len(keys), *keys, *args)
        if wait:
            pipe.execute_command("WAIT", 1, self.wait_ms)
        return functools.partial(pipe.execute, raise_on_error=False)

    def _sorted(self, replies: list[Any], indexes: list[int], wait: bool, out: list[Any]) -> int:
        """Put a group's replies in ``out``; the replicas its WAIT reached."""
        acked = UNWAITED
        if wait:
            waited = replies.pop()  # the WAIT's: an error (the connection broke) is no replica
            acked = 0 if isinstance(waited, Exception) else int(waited)
        for i, reply in zip(indexes, replies, strict=True):
            out[i] = reply
        return acked

    def _group(
        self, target: Any, group: _Group, asynchronous: bool, out: list[Any]
    ) -> Generator[Callable[[], Any], Any, int]:
        """One master's calls: the steps to run (each a call that returns the reply, or an
        awaitable of it), and the replicas its writes reached. A call whose script the master
        does not know is loaded and sent again with its own WAIT; one whose slot moved (or the
        master's connection failed) goes through the cluster client, which follows, unwaited."""
        _, indexes, wait = group
        acked = 0
        if target is not None:
            try:
                replies = yield self._pipeline(target, indexes, wait)
            except REDIS_ERRORS:
                if not self.backend.cluster:
                    raise
                replies = [redis.exceptions.TryAgainError()] * (len(indexes) + wait)
            acked = self._sorted(replies, indexes, wait, out)
            again = [i for i in indexes if isinstance(out[i], redis.exceptions.NoScriptError)]
            if again:
                for name in {self.calls[i].script for i in again}:
                    yield functools.partial(target.script_load, _SCRIPTS[name])
                replies = yield self._pipeline(target, again, wait)
                acked = min(acked, self._sorted(replies, again, wait, out))
            indexes = [i for i in indexes if isinstance(out[i], _ELSEWHERE)]
        if indexes:  # through the cluster client: not waited for
            moved = RunPipeline(self.backend, [self.calls[i] for i in indexes])
            replies = yield moved.call_async if asynchronous else moved.call_sync
            for i, reply in zip(indexes, replies, strict=True):
                out[i] = reply
            acked = 0
        return acked

    def _target(self, client: Any, node: Any, asynchronous: bool) -> Any:
        """Where a group is sent: the client itself on one Redis; on a cluster, a plain client
        of the master (None: the slot's master is not known, sent through the cluster)."""
        if not self.backend.cluster:
            return client
        if node is None:
            return None
        return node_client(client, node, asynchronous)

    def call_sync(self) -> list[Any]:
        client = self.backend.sync_client()
        out: list[Any] = [None] * len(self.calls)
        acked = UNWAITED
        for group in self._groups(client):
            steps = self._group(self._target(client, group.node, False), group, False, out)
            acked = min(acked, drive_sync(steps))
        return [self._checked(out), acked]

    async def call_async(self) -> list[Any]:
        client = self.backend.async_client()
        out: list[Any] = [None] * len(self.calls)
        groups = self._groups(client)
        acks = await asyncio.gather(
            *(
                drive_async(self._group(self._target(client, group.node, True), group, True, out))
                for group in groups
            )
        )
        return [self._checked(out), min(acks, default=UNWAITED)]


@functools.cache
def _sha(name: str) -> str:
    """A script's SHA1, as EVALSHA names it (the digest Redis keys scripts by)."""
    return hashlib.sha1(_SCRIPTS[name].encode()).hexdigest()
