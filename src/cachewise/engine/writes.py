"""Writes and invalidation: ``set`` (a write wins over a running load), pins of written-behind
values, and invalidation by key and by tag, here and everywhere."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from .. import codec
from .._drivers import (
    Plan,
)
from ..events import Invalidated, encode
from ..redis import (
    REDIS_ERRORS,
    RunScript,
)
from .coherence import Coherence
from .values import (
    Count,
    InvalidationEvent,
    Policy,
    StoreCall,
    Target,
    stored_bytes,
)

log = logging.getLogger("cachewise")


class Writes(Coherence):
    """Writes that win over running loads, pins of written-behind values, invalidation.
    A layer of ``Engine``."""

    # -- writes and invalidation ----------------------------------------------------------------

    def set(
        self,
        target: Target,
        value: Any,
        policy: Policy,
        enqueue: Callable[[StoreCall], Plan[Any]] | None = None,
    ) -> Plan[Any]:
        """Store ``value``; a load of this key that is running now will not overwrite it.

        ``enqueue`` (a durable write-behind) turns the store into the script that also queues
        the write; it runs before anything changes here, and if Redis fails, the error is raised
        (a write that was not queued must not look done). Returns the script's reply.
        """
        if enqueue is None and (self.uncached(target) or not policy.keeps(value, target.where)):
            # Caching is off here (``_switch``, ``when=``), or ``unless=`` holds of the new
            # value: not cached, and the old one is out of date.
            yield from self.invalidate([target.full_key])
            return None
        tags = self._tags(target)
        entry = self._entry(target, policy, value, 0.0, tags)
        backend = self.backend
        store = None
        reply = None
        if backend is not None:
            try:
                yield from self._ensure_backend()
            except REDIS_ERRORS as exc:
                if enqueue is not None:
                    raise
                self.redis_failed(exc)
            if backend.offset_ms is not None:  # packed before anything is stored
                versions: tuple[str, ...] = ()
                if tags:
                    try:
                        versions = yield from self._tag_versions(tags)
                    except REDIS_ERRORS as exc:
                        if enqueue is not None:
                            raise
                        self.redis_failed(exc)
                        versions = ("",) * len(tags)  # refused by Redis if it answers again
                store = self._store_call(entry, "", target, versions)
        if enqueue is not None:
            assert store is not None
            reply = yield from enqueue(store)
            self.wake_waiters([target.full_key], stored_bytes(store))
            store = None
        with self.lock:
            self.epoch += 1
            flight = self.flights.pop(target.full_key, None)
            if flight is not None:
                flight.invalidated = True
            self.l1.put(target.table, entry)
        self.counts[Count.SETS] += 1
        if store is not None:
            try:
                stored = yield from self._script(*store)
                fill = stored_bytes(store) if stored else None
                self.wake_waiters([target.full_key], fill)
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
                self.remember([target.full_key])  # L2 and other L1s may hold an older value
        elif backend is not None and enqueue is None:
            self.remember([target.full_key])
        return reply

    def increment(self, target: Target, delta: int) -> Plan[Any]:
        """Add ``delta`` to the integer Redis holds for ``target`` in one script (atomic across
        processes; its deadlines and TTL stay), then drop every L1's copy. The new integer;
        None when nothing is held, or Redis failed (counted and logged, as every Redis error);
        False when what is held is not an integer the script adds to (the caller then reads
        and writes it)."""
        reply = yield from self._in_place(target, "incr", delta)
        if reply is None:
            return None
        if isinstance(reply, bytes):  # not an integer the script adds to
            return False
        return int(reply)

    def retime(self, target: Target, ttl: float) -> Plan[Any]:
        """Give the value Redis holds for ``target`` a lifetime of ``ttl`` seconds from now,
        with no stale window (Django's ``touch``), without reading it out (a write racing with
        it is not undone), then drop every L1's copy. True; False when nothing is held or
        Redis failed; None when what is held is not an envelope the script rewrites (the
        caller then reads and writes it)."""
        reply = yield from self._in_place(target, "touch", max(1, int(ttl * 1000)))
        return None if isinstance(reply, bytes) else reply is not None

    def _in_place(self, target: Target, script: str, arg: int) -> Plan[Any]:
        """Run ``script`` (``INCR``, ``TOUCH``), which changes the value of ``target`` where it
        is and tells the other processes; drop this process' copy if it did. Its reply; None
        when Redis failed."""
        backend = self.backend
        assert backend is not None
        key = target.full_key
        event = encode(Invalidated(backend.origin, (key,)))
        try:
            yield from self._ensure_backend()
            reply = yield RunScript(
                backend, script, [key], [arg, backend.sender, event, codec.FORMAT]
            )
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return None
        if reply is not None and not isinstance(reply, bytes):
            self._drop_local([key], ())  # this process' copy, and a load of the old value
        return reply

    def pin(self, target: Target, value: Any, policy: Policy) -> None:
        self.pinned[target.full_key] = (target, value, policy)

    def unpin(self, full_key: str) -> None:
        self.pinned.pop(full_key, None)

    def invalidate(self, full_keys: Iterable[str], tags: Iterable[str] = ()) -> Plan[int]:
        """Drop entries by full key and by tag everywhere, stop running loads from storing."""
        keys = list(dict.fromkeys(full_keys))
        tags = tuple(tags)
        dropped = self._drop_local(keys, tags)
        self.counts[Count.INVALIDATIONS] += len(keys)
        backend = self.backend
        if backend is not None:
            try:
                yield from self._ensure_backend()
                yield from self._drop(list(keys), list(tags))
                self.wake_waiters(keys)  # their leases are gone: load instead of waiting
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
                self.remember(keys, tags)
        self.notify(InvalidationEvent(tuple(dict.fromkeys(keys)), tags, "local"))
        return len(dropped)

    def clear(self) -> Plan[int]:
        """Drop every entry of the namespace: here, in Redis and in every process' L1 (pinned
        write-behind values and queued writes stay: they are data). How many keys Redis
        dropped, or without Redis how many entries L1 held. Redis failing is logged, counted,
        and the clear sent again with the next call that reaches it."""
        held = self._empty_l1(stop_loads=True)
        backend = self.backend
        if backend is None:
            return held
        try:
            yield from self._ensure_backend()
            dropped = yield from self._clear_shared()
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            with self.lock:
                self.backlog_clear = True
            return 0
        self._empty_l1(stop_loads=True)  # what a read here brought back from Redis meanwhile
        return dropped

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        if self.queue_backend is not None:
            self.queue_backend.close()
