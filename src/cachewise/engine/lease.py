"""The shared lease of a load: who loads (ACQUIRE: filled, won, or busy and waited for), the
load under the lease with its renewal, the fill refused when the lease was lost, and leases
given back, also when their reply was lost."""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from typing import Any

from .._drivers import (
    TIMED_OUT,
    Plan,
    Sleep,
    Spawn,
)
from .._flight import Flight
from ..core import Entry, Filled, Won, lease_reply, shared_fresh
from ..events import Released, encode
from ..redis import (
    REDIS_ERRORS,
    AwaitEvent,
    CircuitOpen,
    RunScript,
    ScriptCall,
)
from .fill import Fills
from .values import (
    _NO_REDIS,
    _UNREAD,
    Count,
    Policy,
    Target,
    _Renewal,
    _run_calls,
    _same,
    stored_bytes,
)

log = logging.getLogger("cachewise")


class Leases(Fills):
    """The shared lease of a load: taken, waited for, renewed, filled under, given back.
    A layer of ``Engine``."""

    def _resolve_shared(
        self,
        flight: Flight,
        target: Target,
        loader: Callable[[], Any],
        policy: Policy,
        refreshing: Entry | None,
        raw: Any = _UNREAD,
    ) -> Plan[None]:
        backend = self.backend
        assert backend is not None
        key = target.full_key
        prefetched = raw is not _UNREAD  # then decoded (and counted) by the leader already
        if not prefetched:
            # A refresh asks for the lease at once, without a GET first: the lease's reply
            # carries the value there, which is taken below if someone refreshed it first.
            raw = yield from self._read_l2(target, read=refreshing is None)
        if raw is _NO_REDIS:
            yield from self._load_unshared(flight, target, loader, policy)
            return
        env = self._decode(raw, count=not prefetched, key=key)
        env = yield from self._current(env, count=not prefetched)
        if (yield from self._use_l2(flight, target, loader, policy, env, refreshing)):
            return
        refresh = refreshing is not None
        token = secrets.token_hex(8)
        lease = backend.keys.lease(key)
        lease_ms = int(self.lease_ttl * 1000)
        mode = "load" if raw is None and not refresh else "refresh"
        deadline = self.timer() + self.lease_wait_timeout
        listener = backend.listener
        assert listener is not None
        while True:
            # Listen before asking, so a fill that lands in between is not missed.
            waiter = listener.wait_for(key)
            try:
                keys = [key, lease, backend.keys.pending(key), *self._tag_keys(flight)]
                reply = yield RunScript(backend, "acquire", keys, [token, lease_ms, mode, token])
            except REDIS_ERRORS as exc:
                listener.forget(key, waiter)
                self.redis_failed(exc)
                yield from self._maybe_orphaned(exc, [(lease, token)])
                yield from self._load_unshared(flight, target, loader, policy)
                return
            got = lease_reply(reply)
            if isinstance(got, Filled):  # a value is there (it landed meanwhile)
                listener.forget(key, waiter)
                env = yield from self._current(self._decode(got.raw))
                if env is not None and shared_fresh(env.fresh_until_ms, backend.server_now_ms()):
                    self.counts[Count.L2_HITS] += 1
                    self._settle(flight, target, self._adopt(target, env), env.value)
                    return
                mode = "refresh"
                continue
            if isinstance(got, Won):  # the lease is ours: load, unless someone refreshed first
                listener.forget(key, waiter)
                flight.versions = yield from self._versions_won(flight, got.versions)
                env = self._decode(got.current, count=False) if got.current else None
                env = yield from self._current(env, count=False)
                if env is not None and self._take_fresh(flight, target, env, refreshing):
                    yield from self._give_back(lease, token)
                    return
                pending = self._decode(got.pending) if got.pending else None
                if pending is not None:
                    # A write-behind value the store does not have yet: the store would answer
                    # with the old one, so the pending value is the load's result.
                    self.counts[Count.PENDING_WRITES_READ] += 1
                    loader = functools.partial(_same, pending.value)
                break
            # Busy: someone else loads. Wait to be woken by its fill, or for its lease to run out.
            self.counts[Count.LEASE_WAITS] += 1
            remaining = deadline - self.timer()
            timeout = min(got.wait_ms / 1000 + 0.05, remaining)
            if not listener.ready.is_set():
                timeout = min(timeout, 0.05)  # not subscribed yet: look again soon
            filled = yield AwaitEvent(waiter, timeout)
            listener.forget(key, waiter)
            env = self._decode(filled) if filled is not TIMED_OUT else None
            if env is not None:
                self.counts[Count.L2_HITS] += 1
                self._settle(flight, target, self._adopt(target, env), env.value)
                return
            if self.timer() >= deadline:
                self.counts[Count.LEASE_WAIT_TIMEOUTS] += 1
                yield from self._load_here(flight, target, loader, policy)
                return
            mode = "load"  # the holder may have died: try again
        yield from self._load_under_lease(flight, target, loader, policy, token)

    def _load_under_lease(
        self, flight: Flight, target: Target, loader: Callable[[], Any], policy: Policy, token: str
    ) -> Plan[None]:
        backend = self.backend
        assert backend is not None
        lease = backend.keys.lease(target.full_key)
        lease_ms = int(self.lease_ttl * 1000)
        try:
            value, took = yield from self._invoke(
                loader,
                renew=_Renewal(
                    backend,
                    [ScriptCall("renew", [lease, *self._tag_keys(flight)], [token, lease_ms])],
                ),
                every=self.lease_ttl / 3,
                where=target.where,
                key=target.full_key,
                flight=flight,
            )
            keep = policy.keeps(value, target.where)
            entry = self._entry(target, policy, value, took, flight.tags) if keep else None
            store = (
                self._store_call(entry, token, target, flight.versions, flight.stale is not None)
                if entry
                else None
            )
        except BaseException:
            yield from self._give_back(lease, token)
            raise
        self.counts[Count.LOADS] += 1
        if store is None:  # ``unless=`` held: the callers get the value, nothing is cached
            yield from self._give_back(lease, token)
            self._settle(flight, target, None, value)
            return
        try:
            stored = yield from self._script(*store)
            if stored:
                self.wake_waiters([target.full_key], stored_bytes(store))
            stored = (
                stored if stored_bytes(store) is not None else 1
            )  # too large to share: kept here
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            stored = 1  # fail open: keep it in this process
        if not stored:
            # The lease was taken away (an invalidation or a write happened during the load):
            # the callers get what they asked for, but it is stored nowhere (no stale set).
            self.counts[Count.FILLS_REFUSED] += 1
            self._settle(flight, target, None, value)
            return
        self._settle(flight, target, entry, value)

    def _release_call(self, lease: str, token: str) -> ScriptCall:
        """The RELEASE of a value's lease; it wakes the processes waiting for its fill."""
        backend = self.backend
        assert backend is not None
        key = backend.keys.key_of_lease(lease)
        return ScriptCall(
            "release", [lease], [token, backend.sender, encode(Released(backend.origin, key))]
        )

    def _give_back(self, lease: str, token: str) -> Plan[None]:
        """Release a lease we hold, so the others need not wait for it to expire."""
        return self._give_back_all([(lease, token)])

    def _give_back_all(self, leases: list[tuple[str, str]]) -> Plan[None]:
        """``_give_back`` for the ``(lease, token)`` pairs of a bulk load, in one round trip."""
        if not leases:
            return
        try:
            yield from _run_calls(self.backend, [self._release_call(*pair) for pair in leases])  # type: ignore[arg-type]
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return
        self._released(leases)

    def _released(self, leases: list[tuple[str, str]]) -> None:
        """Leases given back: wake this process' callers waiting on them."""
        backend = self.backend
        assert backend is not None
        self.wake_waiters([backend.keys.key_of_lease(lease) for lease, _ in leases])

    def _maybe_orphaned(self, exc: BaseException, leases: list[tuple[str, str]]) -> Plan[None]:
        """After a failed ``ACQUIRE``: give its leases back in the background, unless the
        breaker refused it before anything was sent (no thread or task for nothing)."""
        if not isinstance(exc, CircuitOpen):
            yield Spawn(self._give_back_later(leases), self.keep, background=True)

    def _give_back_later(self, leases: list[tuple[str, str]]) -> Plan[None]:
        """Give back ``(lease, token)`` pairs whose ``ACQUIRE`` lost its reply. A timeout does
        not say the script did not run: Redis may hold the lease after all, and every process
        would wait it out for nothing. Tried until Redis answers, for as long as the leases
        could live. Never raises (it runs detached)."""
        deadline = self.timer() + self.lease_ttl
        calls = [self._release_call(lease, token) for lease, token in leases]
        while self.timer() < deadline:
            try:
                yield from _run_calls(self.backend, calls)  # type: ignore[arg-type]
                self._released(leases)
                return
            except REDIS_ERRORS:
                yield Sleep(0.05)
            except Exception as exc:  # a bug must not kill the thread or task silently
                log.warning("cachewise: giving back leases failed: %r", exc)
                return
