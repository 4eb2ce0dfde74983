"""Operations written once as a generator of steps (each a call that returns a reply on a sync
client, or an awaitable of it on an asyncio one) and carried out by the two drivers here: for
work that takes several round trips whose order depends on the replies (a pipeline per master,
a NOSCRIPT retry, a SCAN's cursor), without a sync and an async copy of it."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import redis.asyncio

from .breaker import REDIS_ERRORS

T = TypeVar("T")

#: Steps: each a call made by the driver; what it returned (or raised) is sent back in.
Steps = Generator[Callable[[], Any], Any, T]


class _Done:
    """The steps ended, with what they returned."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _resume(steps: Steps[T], reply: Any, error: BaseException | None) -> Any:
    """The next step (a call), or ``_Done``: ``reply`` sent in, or ``error`` thrown in."""
    try:
        return steps.send(reply) if error is None else steps.throw(error)
    except StopIteration as done:
        return _Done(done.value)


def drive_sync(steps: Steps[T]) -> T:
    """Carry out steps on a sync client (a Redis error is thrown back into them)."""
    step = _resume(steps, None, None)
    while not isinstance(step, _Done):
        try:
            reply, error = step(), None
        except REDIS_ERRORS as exc:
            reply, error = None, exc
        step = _resume(steps, reply, error)
    return step.value  # type: ignore[no-any-return]


async def drive_async(steps: Steps[T]) -> T:
    """Carry out steps on an asyncio client (a Redis error is thrown back into them)."""
    step = _resume(steps, None, None)
    while not isinstance(step, _Done):
        try:
            reply, error = await step(), None
        except REDIS_ERRORS as exc:
            reply, error = None, exc
        step = _resume(steps, reply, error)
    return step.value  # type: ignore[no-any-return]


#: An asyncio cluster client's plain clients, one per master (the sync client has its own).
_NODE_CLIENTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def node_client(cluster: Any, node: Any, asynchronous: bool) -> Any:
    """A plain client of one node of a cluster client, with its connection settings (TLS,
    credentials, timeouts): the sync cluster client lends its own; redis-py's asyncio cluster
    has none to lend, so one is made per node (and kept with the cluster client)."""
    if not asynchronous:
        return cluster.get_redis_connection(node)
    clients = _NODE_CLIENTS.setdefault(cluster, {})
    client = clients.get(node.name)
    if client is None:
        pool = redis.asyncio.ConnectionPool(
            connection_class=node.connection_class, **node.connection_kwargs
        )
        client = clients[node.name] = redis.asyncio.Redis(connection_pool=pool)
    return client
