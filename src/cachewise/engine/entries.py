"""Entries and their shared form: made from a load, packed into the envelope Redis holds (with
their tags' versions), turned into STORE and INVALIDATE calls, adopted back from Redis and
checked against their tags' current versions."""

from __future__ import annotations

import random
import secrets
from typing import Any

from .. import codec, core, serializers
from .._drivers import Plan
from .._flight import Flight
from ..core import Entry
from ..errors import ConfigTypeError
from ..events import Fill, Invalidated, encode
from ..redis import Fetch, RedisCall, RunPipeline, RunReplicated, RunScript, ScriptCall, text
from .state import EngineState
from .values import EVENT_VALUE_LIMIT, Count, Policy, StoreCall, Target

#: How many of its loader's load times a stale copy of another process' entry is served before
#: this process asks Redis itself (plus 10 ms for the notification to travel).
ADOPTED_GRACE_LOADS = 2.0


class Entries(EngineState):
    """Entries, local and shared. A layer of ``Engine``."""

    def _tag_keys(self, flight: Flight) -> list[str]:
        """The Redis indexes of the tags a flight's entry will carry, which its scripts keep
        alive and check; none on a cluster, where they live in other slots than the entry
        (the versions are read apart there, and every read checks them: ``_current``)."""
        backend = self.backend
        assert backend is not None
        if backend.cluster:
            return []
        return [backend.keys.tag(tag) for tag in flight.tags]

    def _versions_won(self, flight: Flight, versions: tuple[str, ...]) -> Plan[tuple[str, ...]]:
        """The tag versions a load that won its lease records: those ACQUIRE returned, or on a
        cluster (where ACQUIRE cannot reach the tags' slots) read apart."""
        if len(versions) == len(flight.tags):
            return versions
        return (yield from self._tag_versions(flight.tags))

    def _tags(self, target: Target) -> tuple[str, ...]:
        if target.tags is None:
            return ()
        tags = tuple(target.tags())
        for tag in tags:
            if not isinstance(tag, str):
                raise ConfigTypeError(
                    f"tags= of {target.where} must return strings, got {type(tag).__name__}"
                )
        return tags

    def _entry(
        self,
        target: Target,
        policy: Policy,
        value: Any,
        load_time: float,
        tags: tuple[str, ...],
        now: float | None = None,
    ) -> Entry:
        """The L1 entry of a loaded ``value`` (``now``: the engine's clock, if just read)."""
        ttl, stale_ttl = policy.lifetimes(value, target.where)
        if self.backend is None:  # with Redis, packing the value raises this error
            serializers.check(target.serializer, value, target.described)
        return core.make_entry(
            value,
            now=self.clock() if now is None else now,
            ttl=ttl,
            stale_ttl=stale_ttl,
            load_time=load_time,
            jitter=self.jitter,
            jitter_draw=random.random(),
            beta=self.beta,
            full_key=target.full_key,
            l1_key=target.l1_key,
            tags=tags,
            table=target.table,
        )

    def _envelope(
        self, entry: Entry, target: Target, versions: tuple[str, ...] = ()
    ) -> codec.Envelope:
        """The shared form of a local entry: its value as its serializer makes it, its
        deadlines moved onto the Redis server's clock, with the versions its tags had when it
        was made."""
        assert self.backend is not None
        shift = self.backend.server_now_ms() - self.clock() * 1000
        serializer = target.serializer
        return codec.Envelope(
            entry.value
            if serializer is None
            else serializer.encode(entry.value, target.described()),
            fresh_until_ms=int(entry.fresh_until * 1000 + shift),
            stale_until_ms=int(entry.stale_until * 1000 + shift),
            load_time_ms=int(entry.load_time * 1000),
            tags=entry.tags,
            versions=versions,
        )

    def _server_ms(self, local_time: float) -> float:
        """A time of the engine's clock, on the Redis server's clock."""
        assert self.backend is not None
        return local_time * 1000 + self.backend.server_now_ms() - self.clock() * 1000

    def _store_call(
        self,
        entry: Entry,
        token: str,
        target: Target,
        versions: tuple[str, ...] = (),
        refresh: bool = False,
    ) -> StoreCall:
        """The STORE script call that writes ``entry`` (``token`` "" writes unconditionally),
        recording ``versions`` of its tags (refused by Redis if one moved since).

        A ``refresh``'s event goes on the shared channel: refreshes of hot keys are a fleet's
        most frequent event, so they cost one ``PUBLISH`` whatever its size, and no caller of
        this process waits on one (they are served the stale value), so its echo here costs
        none of them anything.

        Packs the value first, so a value msgpack refuses raises before anything is stored.
        """
        backend = self.backend
        assert backend is not None
        if len(versions) != len(entry.tags):
            raise AssertionError(f"{len(entry.tags)} tags but {len(versions)} versions")
        env = self._envelope(entry, target, versions)
        packed = codec.pack(env, target.described())
        key = target.full_key
        if len(packed) > self.max_value_bytes:
            # Too large to share: kept in this process only, and no older copy stays shared.
            self.counts[Count.OVERSIZE_VALUES] += 1
            self._log_once(
                key, "value of %s is %d bytes (max_value_bytes=%d): not stored in Redis",
                key, len(packed), self.max_value_bytes,
            )  # fmt: skip
            return self._drop_call([key])
        keys = [key, backend.keys.lease(key)]
        if backend.cluster:
            versions = ()  # the tags' slots are not this script's: checked on every read instead
        else:
            keys.extend(backend.keys.tag(t) for t in entry.tags)
        # Other processes replace their copy from the event; past a size, they drop it instead
        # (and read Redis if they need it), so large values do not flood every subscriber.
        event = (
            encode(Fill(backend.origin, key, packed))
            if len(packed) <= EVENT_VALUE_LIMIT
            else encode(Fill(backend.origin, key))
        )
        sender = backend.everyone if refresh else backend.sender
        args = [token, packed, env.stale_until_ms, sender, event, *versions]
        return StoreCall("store", keys, args)

    def _drop_call(self, keys: list[str], tags: list[str] | None = None) -> StoreCall:
        """The INVALIDATE script call for full keys and tags."""
        backend = self.backend
        assert backend is not None
        tags = tags or []
        message = encode(Invalidated(backend.origin, tuple(keys), tuple(tags)))
        space = backend.keys
        names = [*keys, *(space.lease(k) for k in keys), *(space.tag(tag) for tag in tags)]
        return StoreCall("invalidate", names, [backend.sender, message])

    def _drop(self, keys: list[str], tags: list[str]) -> Plan[None]:
        """Drop values (with their leases) and tags' versions in Redis, then tell every process;
        with replicas, return once one has the drop (bounded), so a failover does not bring the
        values back. On a cluster, one INVALIDATE per value and per tag (each in its own slot),
        and the event after all of them: a process told earlier could read back a value not
        yet gone."""
        backend = self.backend
        assert backend is not None
        space = backend.keys
        if not backend.cluster:
            calls = [self._drop_call(keys, tags)]
        else:
            calls = [ScriptCall("invalidate", [k, space.lease(k)], ["", ""]) for k in keys]
            calls.extend(ScriptCall("invalidate", [space.tag(tag)], ["", ""]) for tag in tags)
        if not calls:
            return
        if not backend.replicas or not backend.replica_wait:
            if len(calls) == 1:
                yield RunScript(backend, *calls[0])
            else:
                yield RunPipeline(backend, calls)
        else:
            wait_ms = backend.wait_ms(backend.replica_wait)
            _, acked = yield RunReplicated(backend, calls, wait_ms)
            if acked < 1:
                # Returned before a replica had it: a failover now could bring the values back.
                self.counts[Count.INVALIDATIONS_UNREPLICATED] += 1
                self._log_once(
                    "~unreplicated", "an invalidation was acknowledged before any of %d "
                    "replicas had it (replica_wait=%ss): a failover now could undo it",
                    backend.replicas, backend.replica_wait,
                )  # fmt: skip
        if backend.cluster:
            message = encode(Invalidated(backend.origin, tuple(keys), tuple(tags)))
            yield RedisCall(backend, "publish", space.channel, message)

    def _adopt(self, target: Target, env: codec.Envelope) -> Entry:
        """The local entry of a shared one: it never outlives the Redis key it came from, and
        it is not refreshed early here: the process that loaded it does that, under the lease,
        and its notification hands every L1 the new value (a refresh per process would make an
        expiry's Redis traffic grow with the fleet; DESIGN.md section 10)."""
        assert self.backend is not None
        shift = self.clock() * 1000 - self.backend.server_now_ms() - self.backend.uncertainty_ms
        fresh_until = (env.fresh_until_ms + shift) / 1000
        stale_until = (env.stale_until_ms + shift) / 1000
        load_time = env.load_time_ms / 1000
        return Entry(
            env.value,
            fresh_until=fresh_until,
            stale_until=stale_until,
            early_at=fresh_until,
            load_time=load_time,
            full_key=target.full_key,
            l1_key=target.l1_key,
            tags=env.tags,
            # Stale, it is served a while longer (within stale_ttl) before this process asks
            # Redis itself: the loader's refresh, started late, is about to replace it.
            refresh_at=min(stale_until, fresh_until + ADOPTED_GRACE_LOADS * load_time + 0.01),
            table=target.table,
        )

    def _decode(self, raw: Any, count: bool = True, key: str = "") -> codec.Envelope | None:
        env = codec.unpack(raw)
        if count and raw is not None and env is None:
            self.counts[Count.DECODE_ERRORS] += 1  # a miss; the next fill overwrites it
            self._log_once(
                key, "undecodable entry %s in Redis (a miss; the next load overwrites it)",
                key or "(unnamed)",
            )  # fmt: skip
        return env

    def _current(
        self, env: codec.Envelope | None, count: bool = True
    ) -> Plan[codec.Envelope | None]:
        """``env`` if each of its tags still has the version the entry recorded, else None (a
        miss, counted): tag state invalidated, evicted, deleted or flushed never leaves a
        tagged entry servable. One MGET for a tagged entry; none for an untagged one. Redis
        failing here is a miss too."""
        if env is None or not env.tags:
            return env
        backend = self.backend
        assert backend is not None
        now, error = yield Fetch(backend, [backend.keys.tag(tag) for tag in env.tags])
        if error is not None:
            self.redis_failed(error)
            return None
        if [None if v is None else text(v) for v in now] == list(env.versions):
            return env
        if count:
            self.counts[Count.TAG_MISSES] += 1
        return None

    def _tag_versions(self, tags: tuple[str, ...]) -> Plan[tuple[str, ...]]:
        """The current versions of ``tags`` (made where a tag has none), for a write."""
        backend = self.backend
        assert backend is not None
        keys = [backend.keys.tag(tag) for tag in tags]
        args = [secrets.token_hex(8), int(self.lease_ttl * 1000)]
        if backend.cluster:  # each tag in a slot of its own
            calls = [ScriptCall("tag_versions", [key], args) for key in keys]
            replies = yield RunPipeline(backend, calls)
            return tuple(text(got[0]) for got in replies)
        got = yield RunScript(backend, "tag_versions", keys, args)
        return tuple(text(v) for v in got)
