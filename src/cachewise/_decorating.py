"""The decorator-making part of ``Cache``: ``cached``, ``invalidates``, ``write_through``,
``write_behind`` (each hands its options to the module that builds the decorator)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ._writes import invalidates, write_behind, write_through
from .decorators import CachedDecorator, make_cached, positional_ttl
from .engine import Engine
from .options import WriteBehind
from .writebehind import WriteBehindQueue, WriteCall

T = TypeVar("T")
Mapper = Callable[..., Any]


class Decorating:
    """The decorators of a ``Cache`` (its base: the rest of the public face is in
    ``cache.py`` and ``_lifecycle.py``)."""

    _engine: Engine
    _fail_closed: bool
    _write_options: WriteBehind
    _queues: list[WriteBehindQueue]

    # -- decorators -----------------------------------------------------------------------------

    def cached(
        self,
        *positional: Any,
        ttl: Any = None,
        stale_ttl: Any = None,
        tags: Callable[..., Iterable[str]] | Iterable[str] | None = None,
        key: Callable[..., str] | None = None,
        fail_closed: bool | None = None,
        unless: Callable[[Any], Any] | None = None,
        serializer: Any = None,
        ignore: Iterable[str] | str | None = None,
        when: Callable[..., Any] | None = None,
    ) -> CachedDecorator:
        """Cache-aside decorator for ``def`` and ``async def``; ``ttl`` is mandatory.

        ``ttl`` (and ``stale_ttl``) may be a function of the result, given by keyword;
        ``unless(result)`` true keeps a result out of the cache. ``fail_closed=True`` raises
        ``RedisUnavailable`` on a miss while Redis is unreachable, instead of loading without
        the shared lease (default: the cache's ``fail_closed``).
        """
        return make_cached(
            self._engine,
            ttl=positional_ttl(positional, ttl),
            stale_ttl=stale_ttl,
            tags=tags,
            key=key,
            fail_closed=self._fail_closed if fail_closed is None else bool(fail_closed),
            unless=unless,
            serializer=serializer,
            ignore=ignore,
            when=when,
        )

    def invalidates(self, target: Any, *, args: Mapper | None = None) -> Callable[[T], T]:
        """After the decorated writer returns without error, drop ``target(*args(...))``."""
        return invalidates(self._engine, target, args)

    def write_through(
        self, target: Any, *, args: Mapper | None = None, value: Mapper | None = None
    ) -> Callable[[T], T]:
        """Store write first, then the cache holds the new value; on error the entry is dropped."""
        return write_through(self._engine, target, args, value)

    def write_behind(
        self,
        target: Any,
        *,
        args: Mapper | None = None,
        value: Mapper | None = None,
        batch: Callable[[list[WriteCall]], Any] | None = None,
    ) -> Callable[[T], T]:
        """Set the cache and queue the store write; a background flusher performs it.

        ``batch=``, if given, is called with a list of ``WriteCall(args, kwargs)`` to write a
        whole batch in one store call (async exactly when the writer is); if it raises, the
        batch's writes are retried one by one through the writer itself.
        """
        return write_behind(
            self._engine, target, args, value, batch, self._write_options, self._queues
        )
