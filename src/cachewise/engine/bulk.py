"""Many keys loaded at once: ``get_or_load_many`` (L1 and one MGET as ``get_many``, then one
lease pipeline, one ``load_many`` call, one fill pipeline; per-key single-flight throughout)."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from .._drivers import (
    BLOCKS_LOOP,
    Invoke,
    Plan,
    Spawn,
    Wait,
)
from .._flight import Flight
from ..core import Decision, Entry, Filled, Shared, Won, lease_reply
from ..errors import ConfigTypeError, LoaderResultError, RedisUnavailable
from ..redis import REDIS_ERRORS, RunPipeline, ScriptCall
from .getmany import GetMany
from .values import (
    _RETRY,
    Count,
    Policy,
    Target,
    _one_of,
    _Renewal,
    stored_bytes,
)

log = logging.getLogger("cachewise")


class Bulk(GetMany):
    """Many keys in one round trip each way, with per-key single-flight. A layer of ``Engine``."""

    def read_many(
        self,
        targets: Mapping[str, Target],
        load_many: Callable[[list[str]], Any],
        policy: Policy,
    ) -> Plan[dict[str, Any]]:
        """Bulk cache-aside: L1, one MGET, then one ``load_many`` call for the keys this caller
        leads; per-key single-flight throughout."""
        if self.uncached():  # straight through
            return (yield from self._load_through(list(targets), load_many))
        found = yield from self.get_many(list(targets))
        yield from self._stale_many(targets, found, load_many, policy)
        waiting: dict[str, Flight] = {}
        leading: dict[str, Flight] = {}
        for key, target in targets.items():
            if key in found:
                continue
            self.counts[Count.MISSES] += 1
            flight, leader = self._claim(target.full_key)
            (leading if leader else waiting)[key] = flight
        if leading:
            yield Spawn(self._resolve_many(targets, leading, load_many, policy), self.keep)
        for key, flight in {**leading, **waiting}.items():
            if key in waiting:
                self.counts[Count.COALESCED_WAITS] += 1
            value = yield Wait(flight, None)
            while value is _RETRY:  # joined a fast-path GET that was abandoned: lead or join anew
                flight, leader = self._claim(targets[key].full_key)
                if leader:
                    yield Spawn(
                        self._resolve_many(targets, {key: flight}, load_many, policy), self.keep
                    )
                value = yield Wait(flight, None)
            if value is BLOCKS_LOOP:
                value = yield from self._load_beside_loop(
                    targets[key].full_key, functools.partial(_one_of, load_many, key)
                )
            found[key] = value
        return {key: found[key] for key in targets}

    def _stale_many(
        self,
        targets: Mapping[str, Target],
        found: dict[str, Any],
        load_many: Callable[[list[str]], Any],
        policy: Policy,
    ) -> Plan[None]:
        """The entries L1 holds past their TTL but within ``stale_ttl`` go into ``found``, as
        ``read`` serves one key's; those due for a refresh are refreshed together."""
        now = self.clock()
        due: dict[str, Entry] = {}
        for key, target in targets.items():
            entry = None if key in found else target.table.get(target.l1_key)
            if entry is None:
                continue
            decision = self._decide(target, entry, now)
            if decision is Decision.SERVE_STALE or decision is Decision.REFRESH:
                self.counts[Count.STALE_SERVED] += 1  # not fresh: ``get_many`` took those
                found[key] = entry.value
            if decision is Decision.REFRESH:
                due[key] = entry
        yield from self._refresh_many(targets, due, load_many, policy)

    def _refresh_many(
        self,
        targets: Mapping[str, Target],
        stale: Mapping[str, Entry],
        load_many: Callable[[list[str]], Any],
        policy: Policy,
    ) -> Plan[None]:
        """Refresh the ``stale`` entries in the background, all in one ``load_many`` call (the
        keys loaded together mostly expire together: one query per key at every expiry would
        undo what a bulk loader is for). Keys being loaded already are left to that load."""
        flights: dict[str, Flight] = {}
        for key, entry in stale.items():
            flight, leader = self._claim(targets[key].full_key)
            if leader:
                flight.stale = entry
                flights[key] = flight
        if flights:
            self.counts[Count.REFRESHES] += len(flights)
            yield Spawn(
                self._resolve_many(targets, flights, load_many, policy),
                self.keep,
                background=True,
            )

    def _load_through(
        self, keys: list[str], load_many: Callable[[list[str]], Any]
    ) -> Plan[dict[str, Any]]:
        result = _mapping((yield Invoke(lambda: load_many(keys))))
        lost = [key for key in keys if key not in result]
        if lost:
            raise _no_value(lost)
        return {key: result[key] for key in keys}

    def _resolve_many(
        self,
        targets: Mapping[str, Target],
        flights: dict[str, Flight],
        load_many: Callable[[list[str]], Any],
        policy: Policy,
    ) -> Plan[None]:
        """The work of the flights one bulk caller leads. Never raises."""
        backend = self.backend
        try:
            for key, flight in flights.items():
                flight.tags = self._tags(targets[key])
            mine = dict(flights)
            tokens: dict[str, str] = {}
            if backend is not None:
                mine, tokens, pending = yield from self._acquire_many(
                    targets, flights, load_many, policy
                )
                if pending:  # write-behind values the store does not have yet: use them
                    served = {key: mine.pop(key) for key in pending}
                    yield from self._fill_many(targets, served, tokens, policy, pending, 0.0)
            if not mine:
                return
            keys = list(mine)
            leases: dict[str, tuple[str, str]] = {}
            renew = None
            if backend is not None and tokens:
                leases = {
                    key: (backend.keys.lease(targets[key].full_key), tokens[key])
                    for key in keys
                    if key in tokens
                }
                lease_ms = int(self.lease_ttl * 1000)
                renew = _Renewal(
                    backend,
                    [
                        ScriptCall("renew", [lease, *self._tag_keys(mine[key])], [token, lease_ms])
                        for key, (lease, token) in leases.items()
                    ],
                )
            try:
                result, took = yield from self._invoke(
                    lambda: load_many(keys),
                    renew,
                    self.lease_ttl / 3,
                    where="get_or_load_many",
                    key=targets[keys[0]].full_key,
                )
                for key in keys:
                    mine[key].loaded = True
                result = _mapping(result)
            except BaseException:
                yield from self._give_back_all(list(leases.values()))
                raise
            lost = [key for key in keys if key not in result]
            if lost:
                yield from self._give_back_all([leases[key] for key in lost if key in leases])
                self._fail_flights(
                    targets,
                    {key: mine.pop(key) for key in lost},
                    _no_value(lost),
                )
            yield from self._fill_many(targets, mine, tokens, policy, result, took)
        except BaseException as exc:
            self._fail_flights(targets, flights, exc)

    def _acquire_many(
        self,
        targets: Mapping[str, Target],
        flights: dict[str, Flight],
        load_many: Callable[[list[str]], Any],
        policy: Policy,
    ) -> Plan[tuple[dict[str, Flight], dict[str, str], dict[str, Any]]]:
        """Take the leases of ``flights``' keys in one round trip; keys whose lease someone else
        holds are resolved one by one (they wait for that fill). Returns the flights to load,
        the lease tokens, and the pending write-behind values of leased keys."""
        backend = self.backend
        assert backend is not None
        tokens = {key: secrets.token_hex(8) for key in flights}
        lease_ms = int(self.lease_ttl * 1000)
        calls = [
            ScriptCall(
                "acquire",
                [
                    t.full_key,
                    backend.keys.lease(t.full_key),
                    backend.keys.pending(t.full_key),
                    *self._tag_keys(flights[k]),
                ],
                [tokens[k], lease_ms, "load" if flights[k].stale is None else "refresh", tokens[k]],
            )
            for k, t in ((k, targets[k]) for k in flights)
        ]
        try:
            yield from self._ensure_backend()
            replies = yield RunPipeline(backend, calls)
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            taken = [(backend.keys.lease(targets[k].full_key), tokens[k]) for k in flights]
            yield from self._maybe_orphaned(exc, taken)
            if policy.fail_closed:
                raise RedisUnavailable(
                    "Redis is unavailable and this bulk load is fail-closed: not loading "
                    "without the shared leases"
                ) from None
            self.counts[Count.LOADS_WITHOUT_REDIS] += len(flights)
            return dict(flights), {}, {}
        mine: dict[str, Flight] = {}
        pending: dict[str, Any] = {}
        stale: dict[str, Entry] = {}  # served stale now, refreshed together below
        ahead: list[tuple[str, str]] = []  # leases of refreshes someone else did first
        for (key, flight), reply in zip(flights.items(), replies, strict=True):
            target = targets[key]
            got = lease_reply(reply)
            env = self._decode(got.raw) if isinstance(got, Filled) else None
            if env is not None:
                env = yield from self._current(env)
            use = None if env is None else self._shared_use(env, None)
            if env is not None and use is Shared.FRESH:
                self._take(flight, target, env)
            elif env is not None and use is Shared.STALE:
                stale[key] = self._take_stale(flight, target, env)
            elif isinstance(got, Won):
                flight.versions = yield from self._versions_won(flight, got.versions)
                if flight.stale is not None and got.current:  # someone may have refreshed first
                    now = yield from self._current(self._decode(got.current, count=False), False)
                    if now is not None and self._take_fresh(flight, target, now, flight.stale):
                        ahead.append((backend.keys.lease(target.full_key), tokens[key]))
                        continue
                mine[key] = flight
                written = self._decode(got.pending) if got.pending else None
                if written is not None:
                    self.counts[Count.PENDING_WRITES_READ] += 1
                    pending[key] = written.value
            else:  # someone else loads it: wait for that fill, one by one
                one = functools.partial(_one_of, load_many, key)
                plan = self._resolve(flight, target, one, policy, flight.stale)
                yield Spawn(plan, self.keep, background=True)
        yield from self._give_back_all(ahead)
        yield from self._refresh_many(targets, stale, load_many, policy)
        return mine, tokens, pending

    def _fill_many(
        self,
        targets: Mapping[str, Target],
        flights: dict[str, Flight],
        tokens: dict[str, str],
        policy: Policy,
        result: Mapping[str, Any],
        took: float,
    ) -> Plan[None]:
        backend = self.backend
        entries = {}
        for key in flights:
            target = targets[key]
            entries[key] = self._entry(target, policy, result[key], took, flights[key].tags)
        self.counts[Count.LOADS] += len(entries)
        stored = {key: 1 for key in flights}
        if backend is not None and tokens:
            calls = [
                self._store_call(
                    entry,
                    tokens[key],
                    targets[key],
                    flights[key].versions,
                    refresh=flights[key].stale is not None,
                )
                for key, entry in entries.items()
            ]
            try:
                replies = yield RunPipeline(backend, calls)
                for key, call, reply in zip(entries, calls, replies, strict=True):
                    packed = stored_bytes(call)
                    stored[key] = int(reply) if packed is not None else 1
                    if reply:
                        self.wake_waiters([targets[key].full_key], packed)
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
        for key, flight in flights.items():
            if not stored[key]:
                self.counts[Count.FILLS_REFUSED] += 1
            self._settle(flight, targets[key], entries[key] if stored[key] else None, result[key])

    def _fail_flights(
        self, targets: Mapping[str, Target], flights: dict[str, Flight], exc: BaseException
    ) -> None:
        """End ``flights`` with ``exc``; a refresh's failure is logged (its callers were served
        the stale value: nobody else sees it) and counted as one."""
        refreshes = [key for key, flight in flights.items() if flight.stale is not None]
        if refreshes and not isinstance(exc, asyncio.CancelledError):
            log.warning("cachewise: background refresh of %s failed: %r", refreshes, exc)
        for key, flight in flights.items():
            counter = Count.LOAD_ERRORS if flight.stale is None else Count.REFRESH_ERRORS
            self._fail(flight, targets[key], exc, counter)


def _mapping(result: Any) -> Mapping[str, Any]:
    """What ``load_many`` returned, which must be a mapping."""
    if not isinstance(result, Mapping):
        raise ConfigTypeError(f"load_many must return a mapping, not {type(result).__name__}")
    return result


def _no_value(lost: list[str]) -> LoaderResultError:
    return LoaderResultError(f"load_many returned no value for {lost!r}")
