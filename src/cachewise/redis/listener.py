"""The event listener: one subscription per ``Cache`` to its namespace's event channels, in a
daemon thread (fills and invalidations from other processes, for L1 and waiters)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import threading
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio

from .. import events
from ..errors import describe
from .breaker import REDIS_ERRORS, Breaker
from .ops import text

if TYPE_CHECKING:
    from .api import Backend

log = logging.getLogger("cachewise")


class Listener:
    """One subscription per ``Cache``, in a daemon thread, to the namespace's event channels:
    its own (``inbox``), where other processes send their events while the registry of
    listeners is complete, and the shared one, where they send them otherwise.

    It wakes the callers waiting for another process' fill (no polling of Redis), applies other
    processes' invalidations to this process' L1, and reports a reset when the subscription
    drops, when it comes back, and when it is first made (``on_reset(lost)``): the L1 cannot
    know what it missed (reads run while the first subscription is being made) and is emptied
    by the engine.
    """

    def __init__(
        self,
        backend: Backend,
        on_event: Callable[[events.Event], None],
        on_reset: Callable[[bool], None],
        on_refused: Callable[[bool], None] = lambda refused: None,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.backend = backend
        #: Called about once a second from the listener's thread while it is subscribed: the
        #: engine sends there the invalidations an outage held back, so that a process with no
        #: calls of its own does not leave them undone in Redis.
        self.on_tick = on_tick
        self.on_event = on_event
        self.on_reset = on_reset
        #: Told when Redis refuses the subscription (an ACL without the channel) and when it
        #: accepts it again: without events, L1 cannot be kept coherent.
        self.on_refused = on_refused
        self.refused = False
        self.ready = threading.Event()
        #: Set at the first subscription (never reset): what the first reads wait for, unless
        #: a wait for it already ran out (``gave_up``: the reads after it do not wait again).
        self.heard = False
        self.gave_up = False
        self._first: list[concurrent.futures.Future[Any]] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._waiters: dict[str, list[concurrent.futures.Future[Any]]] = {}
        self._pubsub: Any = None
        self._register_due = math.inf  # registered once subscribed, then every REGISTER_EVERY
        self._thread = threading.Thread(target=self._run, name="cachewise-events", daemon=True)
        self._thread.start()

    def wait_for(self, key: str) -> concurrent.futures.Future[Any]:
        """A future resolved with the envelope bytes of the next fill of ``key``."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._waiters.setdefault(key, []).append(future)
        return future

    @property
    def first_due(self) -> bool:
        """Whether reads should still wait for the first subscription."""
        return not (self.heard or self.refused or self.gave_up)

    def first_subscription(self) -> concurrent.futures.Future[Any]:
        """A future of the caller's own, resolved once the first subscription is made or
        refused (its own: a caller that gives up cancels nobody else's wait)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self.heard or self.refused:
                future.set_result(True)
            else:
                self._first.append(future)
        return future

    def _release_first(self) -> None:
        with self._lock:
            waiting, self._first = self._first, []
        for future in waiting:
            if not future.done():
                future.set_result(True)

    def forget(self, key: str, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            waiting = self._waiters.get(key)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiters[key]

    def wake(self, key: str, payload: Any) -> None:
        with self._lock:
            waiting = self._waiters.pop(key, [])
        for future in waiting:
            if not future.done():
                future.set_result(payload)

    def _wake_all(self) -> None:
        """Wake every caller waiting for a fill, with nothing: it asks Redis again instead of
        waiting out the lease of a holder whose fill this process may never hear."""
        with self._lock:
            waiting, self._waiters = self._waiters, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)

    def stop(self) -> None:
        """End the listener thread and wait for it briefly. The thread closes its subscription
        itself: closed from here, its connection would go back to the pool while the thread
        still reads on it, and redis-py's retry would re-subscribe a connection that the
        pool then hands to another command."""
        self._stopped.set()
        if threading.current_thread() is self._thread:
            return
        if self._pubsub is not None and self.backend.breaker.state is Breaker.CLOSED:
            with contextlib.suppress(Exception):  # best effort: wakes it before its poll ends
                self.backend.sync_client().publish(self.backend.inbox, b"")
        self._thread.join(timeout=self.STOP_WAIT)

    #: How often a listener renews its entry in the registry of listeners (``lua.REGISTER``),
    #: and how long an entry lasts without renewal.
    #: A listener dropped while alive (its renewals stalled) loses no event: the registry is
    #: then incomplete and events go to the shared channel until it registers again.
    REGISTER_EVERY = 30.0
    #: How long ``stop`` waits for the thread (it polls for messages once a second).
    STOP_WAIT = 1.5
    REGISTER_KEEP_MS = 90_000

    def _register(self) -> None:
        """Enter this listener in the namespace's registry of listeners, so that other
        processes send it events on its own channel (best effort: while it is not entered,
        events go to the shared channel)."""
        self._register_due = self.backend.timer() + self.REGISTER_EVERY
        if self.backend.cluster:
            return  # scripts there publish to the shared channel: no registry is read
        try:
            self.backend.sync_script("register")(
                keys=[self.backend.keys.channel], args=[self.backend.origin, self.REGISTER_KEEP_MS]
            )
        except Exception as exc:  # best effort (redis-py can raise a bare ValueError here)
            log.debug("cachewise: could not register the event listener: %s", describe(exc))

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            if self._pubsub is not None:
                with contextlib.suppress(Exception):
                    self._pubsub.close()
            # Leave the registry (it holds few entries before events go to the shared channel),
            # from this thread: ``stop`` may be called on an event loop's thread. A process
            # that dies without this is forgotten after REGISTER_KEEP_MS. Any error: redis-py
            # can raise a bare ValueError from a connect that timed out half-way.
            if self._register_due != math.inf and self.backend.breaker.state is Breaker.CLOSED:
                with contextlib.suppress(Exception):
                    self.backend.sync_client().zrem(self.backend.keys.channel, self.backend.origin)

    def _listen(self) -> None:
        backoff = 0.05
        connected_before = False
        inbox = self.backend.inbox
        attempt = 0
        while not self._stopped.is_set():
            try:
                self._pubsub = self._subscriber(attempt)
                # Both in one command: a listener is on both channels or on neither, which
                # ``lua._PUBLISH_FN`` counts on.
                self._pubsub.subscribe(self.backend.keys.channel, inbox)
                while not self._stopped.is_set():
                    message = self._pubsub.get_message(timeout=1.0)
                    self.backend.refresh_topology()  # a cluster's, if a node went away
                    if self.heard:
                        self.on_tick()
                    if self.backend.timer() >= self._register_due:
                        self._register()
                    if message is None or self._stopped.is_set():
                        continue
                    if message["type"] == "subscribe":
                        if text(message["channel"]) != inbox:
                            continue  # the shared channel's; the inbox is confirmed next
                        self._register()
                        # What was filled before now, while away or before the first
                        # subscription, may have missed its invalidation.
                        self.on_reset(connected_before)
                        self._wake_all()  # a fill published while away was not heard
                        connected_before = True
                        backoff = 0.05
                        if self.refused:
                            self.refused = False
                            self.on_refused(False)
                        self.ready.set()
                        self.heard = True
                        self._release_first()
                    elif message["type"] == "message":
                        self._dispatch(message["data"])
            except Exception as exc:
                if self._stopped.is_set():
                    return
                with contextlib.suppress(Exception):  # its connection goes back to the pool
                    self._pubsub.close()
                attempt += 1
                self.backend.unreachable()  # the node it was on may be gone
                with contextlib.suppress(Exception):
                    self.backend.refresh_topology()
                if self.ready.is_set():
                    self.ready.clear()
                    self.on_reset(True)  # from now on, invalidations cannot reach this process
                    self._wake_all()  # nor fills: the callers waiting for one look again
                if isinstance(exc, redis.exceptions.NoPermissionError):
                    if not self.refused:
                        self.refused = True
                        self.on_refused(True)
                        log.error(
                            "cachewise: Redis refuses this user the channel %s (ACL): other "
                            "processes' changes cannot reach this process, so nothing read from "
                            "Redis is kept in its L1 until the channel is granted",
                            self.backend.keys.channel,
                        )
                    self._release_first()  # the first reads need not wait any longer
                elif isinstance(exc, REDIS_ERRORS):
                    # Once per loss, not once per reconnection attempt.
                    level = logging.WARNING if backoff <= 0.05 else logging.DEBUG
                    log.log(
                        level,
                        "cachewise: event channel %s lost: %s",
                        self.backend.keys.channel,
                        describe(exc),
                    )
                else:  # a bug must not end coherence silently
                    log.exception("cachewise: event listener failed; restarting")
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _subscriber(self, attempt: int) -> Any:
        """A pubsub for this attempt. On a cluster, where a published event reaches every node,
        each attempt after a failure subscribes on the next node the client knows: the node it
        was on may be the master that died, and the client's view of the slots may still name
        it until it is read again."""
        client = self.backend.sync_client()
        if not self.backend.cluster:
            return client.pubsub()
        nodes = sorted(client.get_nodes(), key=lambda node: node.name)
        if not nodes:
            return client.pubsub()
        spread = zlib.crc32(self.backend.origin.encode())  # processes start on different nodes
        return client.pubsub(node=nodes[(spread + attempt) % len(nodes)])

    def _dispatch(self, data: bytes) -> None:
        event = events.decode(data)
        if event is None:
            log.warning("cachewise: undecodable event on %s", self.backend.keys.channel)
            return
        if isinstance(event, events.Fill):
            self.wake(event.key, event.value)
        elif isinstance(event, events.Released):
            self.wake(event.key, None)  # a load gave its lease back: its waiters look again
        elif isinstance(event, events.Invalidated):
            for key in event.keys:  # their leases are gone with them: no fill will come
                self.wake(key, None)
            if event.tags:
                self._wake_all()  # and so are those of the tags' members, which it does not name
        self.on_event(event)
