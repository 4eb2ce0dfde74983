"""Keeping this process coherent with the others: setting up the Redis tier (server clock,
the event listener), the backlog of invalidations Redis missed, and the events of other
processes (fills, invalidations, resets) applied to L1."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .. import codec, core
from .._drivers import (
    TIMED_OUT,
    Plan,
    run_sync,
    start_renewals,
)
from ..core import Entry, L1Effect
from ..events import Event, Fill, Invalidated, Reset, encode
from ..redis import (
    REDIS_ERRORS,
    AwaitEvent,
    Backend,
    ClearNamespace,
    Listener,
    RedisCall,
    RunScript,
    ServerTime,
)
from .entries import Entries
from .values import (
    Count,
    InvalidationEvent,
    Target,
)

log = logging.getLogger("cachewise")


class Coherence(Entries):
    """This process kept coherent with the others: the Redis tier set up, events applied to L1.
    A layer of ``Engine``."""

    def wake_waiters(self, keys: Iterable[str], payload: Any = None) -> None:
        """Wake this process' callers waiting for a fill of ``keys``: the events of a fill, a
        lease given back or an invalidation do not come back to the process that sent them,
        and a flight of this process may wait on the lease of another flight of its own (one
        that an invalidation or a reset detached from its key). ``payload``: the envelope
        bytes of a fill; None makes them ask Redis again."""
        listener = self.backend.listener if self.backend is not None else None
        if listener is not None:
            for key in keys:
                listener.wake(key, payload)

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Plan[Any]:
        assert self.backend is not None
        return (yield RunScript(self.backend, name, keys, args))

    def _ensure_backend(self) -> Plan[None]:
        """On first use: measure the server clock and start listening to the event channel.
        After an outage: send the invalidations that could not be sent."""
        backend = self.backend
        assert backend is not None
        if backend.setup_due():
            yield ServerTime(backend)
        if backend.listener is None:
            with self.lock:
                if backend.listener is None:
                    backend.listener = Listener(
                        backend, self._on_event, self._on_reset, self._on_refused,
                        self._on_tick,
                    )  # fmt: skip
                    start_renewals()  # loads under a lease renew it from there
        listener = backend.listener
        if listener.first_due:
            # The first reads wait for the subscription (once; about a round trip): what they
            # keep in L1 must not miss an invalidation sent meanwhile. Past the wait, the first
            # subscription empties L1 instead, and later reads do not wait.
            first = listener.first_subscription()
            if (yield AwaitEvent(first, min(1.0, backend.block_limit * 2))) is TIMED_OUT:
                listener.gave_up = True
        if self.backlog_due():
            yield from self._send_backlog()

    def _setup_due(self, backend: Backend) -> bool:
        """Whether ``_ensure_backend`` has work before Redis is read."""
        listener = backend.listener
        return listener is None or listener.first_due or backend.setup_due() or self.backlog_due()

    def backlog_due(self) -> bool:
        return bool(
            self.backlog_keys or self.backlog_tags or self.backlog_overflow or self.backlog_clear
        )

    def remember(self, keys: Iterable[str], tags: Iterable[str] = ()) -> None:
        """An invalidation that did not reach Redis: keep it for when Redis answers again."""
        with self.lock:
            self.backlog_keys.update(keys)
            self.backlog_tags.update(tags)
            if len(self.backlog_keys) + len(self.backlog_tags) > self.BACKLOG_LIMIT:
                # Too many to keep: tell every process to empty its L1 instead.
                self.backlog_keys.clear()
                self.backlog_tags.clear()
                self.backlog_overflow = True

    def _send_backlog(self) -> Plan[None]:
        backend = self.backend
        assert backend is not None
        with self.lock:
            keys, tags = list(self.backlog_keys), list(self.backlog_tags)
            overflow, cleared = self.backlog_overflow, self.backlog_clear
            self.backlog_keys, self.backlog_tags, self.backlog_overflow = set(), set(), False
            self.backlog_clear = False
        try:
            if cleared:
                yield from self._clear_shared()
            if overflow:
                reset = encode(Reset(backend.origin))
                yield RedisCall(backend, "publish", backend.keys.channel, reset)
            if keys or tags:
                yield from self._drop(keys, tags)
            self.counts[Count.OUTAGE_INVALIDATIONS_SENT] += len(keys) + len(tags)
        except REDIS_ERRORS:
            self.remember(keys, tags)  # try again with the next call
            self.backlog_overflow |= overflow
            self.backlog_clear |= cleared
            raise

    def _on_tick(self) -> None:
        """From the listener's thread, about once a second: send what an outage held back
        (invalidations, a clear) without waiting for this process' next call."""
        if not self.backlog_due():
            return
        try:
            run_sync(self._send_backlog())
        except REDIS_ERRORS as exc:  # kept for the next tick or call
            self.redis_failed(exc)

    def _clear_shared(self) -> Plan[int]:
        """Drop the namespace's cache data from Redis, then tell every process to empty its L1
        (after: a process told earlier could read back a value not yet gone)."""
        backend = self.backend
        assert backend is not None
        dropped: int = yield ClearNamespace(backend)
        yield RedisCall(backend, "publish", backend.keys.channel, encode(Reset(backend.origin)))
        return dropped

    # -- events from other processes ------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Apply another process' event to L1, as ``core.l1_effect`` decides."""
        assert self.backend is not None
        effect = core.l1_effect(event, self.backend.origin)
        if effect is L1Effect.FLUSH:
            self._on_reset()
        elif isinstance(event, Invalidated) and effect is L1Effect.DROP_NAMED:
            self.counts[Count.INVALIDATIONS_RECEIVED] += 1
            self._drop_local(list(event.keys), event.tags)
            self.notify(InvalidationEvent(event.keys, event.tags, "remote"))
        elif isinstance(event, Fill) and effect is not L1Effect.NOTHING:
            env = codec.unpack(event.value) if effect is L1Effect.REPLACE else None
            with self.lock:
                self.epoch += 1  # a fast-path read of this key may have got the older value
                old = self.l1.held(event.key)
                if old is not None:
                    target = Target(old.table, old.l1_key, event.key, event.key)
                    if env is not None:
                        self.l1.put(old.table, self._adopt(target, env))
                    else:
                        self.l1.drop(event.key)

    BACKLOG_LIMIT = 10_000

    def _on_refused(self, refused: bool) -> None:
        """Redis refused (or granted again) the event channel: L1 holds nothing meanwhile."""
        with self.lock:
            self.l1.accepting = not refused
            self.epoch += 1
            self.l1.clear()

    def _on_reset(self, lost: bool = True) -> None:
        """The event channel dropped or came back (``lost``), or was first made: L1 cannot
        know what it missed. Loads running through a loss are not kept either; at the first
        subscription, loads waited for it before reading Redis."""
        self._empty_l1(stop_loads=lost)
        if lost:
            self.counts[Count.L1_FLUSHES] += 1

    def _empty_l1(self, stop_loads: bool) -> int:
        """Empty L1 (a read racing this cannot put back what it read before), and with
        ``stop_loads`` keep the running loads from storing what they began before; how many
        entries L1 held."""
        with self.lock:
            held = len(self.l1)
            self.epoch += 1
            self.l1.clear()
            if stop_loads:
                for flight in self.flights.values():
                    flight.invalidated = True
        return held

    def drop_local(self, keys: Iterable[str]) -> None:
        """Drop keys from this process only (Redis is dealt with by the caller)."""
        self._drop_local(list(keys), ())

    def _drop_local(self, keys: list[str], tags: tuple[str, ...]) -> list[str]:
        with self.lock:
            self.epoch += 1
            held: dict[str, Entry] = {}
            if tags:  # ``keys`` grows by the tagged ones (the caller drops them in Redis too)
                seen = set(keys)
                wanted = set(tags)
                held = self.l1.tagged(tags)
                tagged = [k for k in held if k not in seen]
                seen.update(tagged)
                keys.extend(tagged)
                # And the running loads whose entry will carry one of them (not held yet).
                keys.extend(
                    k
                    for k, f in self.flights.items()
                    if not wanted.isdisjoint(f.tags) and k not in seen
                )
            dropped = []
            for key in keys:
                flight = self.flights.pop(key, None)
                if flight is not None:
                    flight.invalidated = True
                if self.l1.drop(held.get(key) or key) is not None:
                    dropped.append(key)
        return dropped

    def notify(self, event: InvalidationEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not break invalidation
                log.exception("cachewise: on_invalidate listener %r failed", listener)
