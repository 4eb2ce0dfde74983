"""cachewise: a two-tier cache for sync and asyncio Python that is correct under concurrency.

from cachewise import Cache
cache = Cache(namespace="shop")

@cache.cached(ttl=60, stale_ttl=300)
def get_user(user_id: int) -> dict: ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import errors
from ._switch import disable
from ._writes import WriterArgumentError
from .cache import Cache
from .decorators import AsyncCachedFunction, CachedDecorator, CachedFunction
from .engine import MISSING, InvalidationEvent
from .errors import *  # noqa: F403  (every error type is public; errors.__all__ lists them)
from .options import Connection, Freshness, Leases, WriteBehind
from .serializers import Serializer
from .valuetypes import register_type
from .writebehind import DeadLetter, FlushReport, WriteCall

__all__ = [
    "AsyncCachedFunction",
    "Cache",
    "CachedFunction",
    "Connection",
    "DeadLetter",
    "FlushReport",
    "Freshness",
    "InvalidationEvent",
    "Leases",
    "MISSING",
    "Serializer",
    "WriteBehind",
    "WriteCall",
    "WriterArgumentError",
    "cached",
    "configure",
    "default_cache",
    "disable",
    "register_type",
    *errors.__all__,
]

__version__ = "0.1.0.dev0"

_default: Cache | None = None


def configure(redis: Any = None, **options: Any) -> Cache:
    """Create the default cache behind the module-level ``cached`` (replacing any earlier one).

    Functions decorated before ``configure`` keep the cache they were decorated with, so call it
    at start-up, before importing modules that use ``@cachewise.cached``.
    """
    global _default
    _default = Cache(redis, **options)
    return _default


def default_cache() -> Cache:
    """The default cache (an in-process one is made on first use if ``configure`` was not)."""
    global _default
    if _default is None:
        _default = Cache()
    return _default


def cached(
    *positional: Any,
    ttl: Any = None,
    stale_ttl: Any = None,
    tags: Callable[..., Iterable[str]] | Iterable[str] | None = None,
    key: Callable[..., str] | None = None,
    unless: Callable[[Any], Any] | None = None,
    serializer: Any = None,
    ignore: Iterable[str] | str | None = None,
    when: Callable[..., Any] | None = None,
) -> CachedDecorator:
    """``@cached(ttl=...)`` on the default cache (see ``configure``)."""
    return default_cache().cached(
        *positional, ttl=ttl, stale_ttl=stale_ttl, tags=tags, key=key, unless=unless,
        serializer=serializer, ignore=ignore, when=when,
    )  # fmt: skip
