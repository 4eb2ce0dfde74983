"""The Redis tier's I/O: clients, scripts, the server clock, and the event listener.

The only package that imports ``redis``. Plans in ``engine`` yield the operations of ``ops``
(``RedisCall``, ``RunScript``, ``RunPipeline``, ``AwaitEvent``) and the drivers carry them out on
the sync client or on the asyncio client of the running loop.

``redis=`` accepts a URL, a ``redis.Redis``, a ``redis.asyncio.Redis``, or a pair of both. Given
a single client, the other kind is built from its connection settings (host, port, db,
credentials, TLS), so sync and async code share one configuration. Async clients are kept per
event loop, because a redis.asyncio connection belongs to the loop that opened it.
"""

from .api import Backend, EventSource
from .backend import RedisBackend
from .breaker import OUTAGE_ERRORS, REDIS_ERRORS, Breaker, CircuitOpen
from .clear import ClearNamespace
from .listener import Listener
from .lua_writebehind import QUEUE_GROUP
from .ops import (
    AwaitEvent,
    Fetch,
    RedisCall,
    RedisOp,
    RunPipeline,
    RunScript,
    ScriptCall,
    ServerTime,
    text,
)
from .replicated import UNWAITED, RunReplicated

__all__ = [
    "OUTAGE_ERRORS",
    "QUEUE_GROUP",
    "REDIS_ERRORS",
    "UNWAITED",
    "AwaitEvent",
    "Backend",
    "Breaker",
    "CircuitOpen",
    "ClearNamespace",
    "EventSource",
    "Fetch",
    "Listener",
    "RedisBackend",
    "RedisCall",
    "RedisOp",
    "RunPipeline",
    "RunReplicated",
    "RunScript",
    "ScriptCall",
    "ServerTime",
    "text",
]
