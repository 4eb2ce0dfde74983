"""A writer's queue kept in a Redis Stream, flushed by whichever live process leads it.

A stream per namespace and writer, read through a consumer group: the process holding the
writer's flusher lease reads it (one reader keeps each key's writes in order), claims what a dead
holder left pending (``XAUTOCLAIM``) and acknowledges a write only once the store has it. The
queue may live on a Redis of its own (``write_behind_redis``). Durability: see ``durable`` in
concepts (policy check, replicas) and ``loss`` (a lost queue)."""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._drivers import Plan, Sleep, Spawn
from ..errors import (
    ValueTooLarge,
    describe,
)
from ..events import Invalidated, encode
from ..redis import (
    REDIS_ERRORS,
    RedisBackend,
    RedisCall,
    RunPipeline,
    RunReplicated,
    RunScript,
    text,
)
from . import dead_letters
from .durable import ServerCheck
from .loss import LossDetection
from .queue import WriteBehindQueue
from .types import (
    DeadLetter,
    FlushReport,
    Outcome,
    PendingWrite,
    WriteCall,
    pack_call,
    unpack_call,
)

if TYPE_CHECKING:
    from ..engine import StoreCall

log = logging.getLogger("cachewise")


class StreamQueue(WriteBehindQueue):
    """A writer's queue kept in a Redis Stream, flushed by whichever live process leads it."""

    durable = True
    GROUP = "cachewise"

    def _put_back(self, batch: list[PendingWrite]) -> None:
        """Nothing to do: an unfinished batch stays pending in the stream, where a flusher
        claims it after ``write_behind_claim_idle``."""

    def _start(self) -> None:
        """Name the writer's Redis keys and start flushing: a process that only registered the
        writer flushes too."""
        cache_backend = self.engine.backend
        assert cache_backend is not None
        #: Where cached values, their pending records and leases live, and events go.
        self.cache_backend: RedisBackend = cache_backend
        #: Where the queue lives: ``write_behind_redis``, else the cache's own Redis. Apart, a
        #: call, a settle and a requeue are each two scripts (queue first), not one.
        self.backend: RedisBackend = self.engine.queue_backend or cache_backend
        self.split = self.backend is not cache_backend
        self._cache_backlog: list[StoreCall] = []  # cache halves of settles Redis refused
        space = cache_backend.keys
        self.stream = space.writer("wb", self.where)
        self.dead_stream = space.writer("wbdead", self.where)
        self.lease = space.writer("wbflusher", self.where)
        self.newest = space.writer("wbnewest", self.where)
        self.epoch_key = space.writer("wbepoch", self.where)
        self.loss = LossDetection(self)
        self.token = secrets.token_hex(8)
        self._nonces = itertools.count()
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{self.token}"
        self.leading = False
        self.known: set[str] = set()  # stream ids held here (queued or being written)
        self.claimed = 0.0
        self.retention_ms = int(self.options.retention * 1000)
        self.lease_ms = int(self.options.claim_idle * 1000)
        self.server = ServerCheck(self)
        self.ensure_flusher()  # a process that only registered the writer flushes too

    def enqueue(self, key: str, call: WriteCall) -> Callable[[StoreCall], Plan[Any]]:
        """The plan that runs the ENQUEUE script made from the STORE call of the new value (one
        round trip), after the queue's Redis was found fit to hold it; with replicas, the reply
        comes once one of them has the write too (or ``replica_wait`` passed, counted)."""
        packed = pack_call(call, self.where)  # raises before anything is stored

        def run(store: StoreCall) -> Plan[Any]:
            name, keys, args = store
            if name != "store":
                raise ValueTooLarge(
                    f"the value written behind by {self.where} is over max_value_bytes: a "
                    "durable write needs it in Redis until the store has it; nothing was queued"
                )
            if self.server.due():
                yield from self.server.check()
            pending = self.cache_backend.keys.pending(key)
            # Used only if the queue has no epoch: unique without a random draw per call.
            nonce = f"{self.token}.{next(self._nonces)}"
            script: StoreCall = (
                ("enqueue_queue", [self.stream, self.newest, self.epoch_key], [key, packed, nonce])
                if self.split
                else (
                    "enqueue",
                    [self.stream, pending, self.newest, self.epoch_key, *keys],
                    [*args[:5], key, packed, self.retention_ms, nonce, *args[5:]],
                )
            )
            acked = 1
            if not self.server.replicas or not self.options.replica_wait:
                reply = yield RunScript(self.backend, *script)
            else:
                wait_ms = max(
                    1, int(min(self.options.replica_wait, self.backend.block_limit) * 1000)
                )
                reply, acked = yield RunReplicated(self.backend, script, wait_ms)
            mine = self.loss.enqueued(key, packed, args[1], reply)
            if self.split:  # queued: now the cache half, which may fail open like any set
                try:
                    yield RunScript(
                        self.cache_backend, "pending_store", [pending, *keys],
                        [*args[:5], mine, *args[5:]],
                    )  # fmt: skip
                except REDIS_ERRORS as exc:
                    self.engine.redis_failed(exc)
                    self.engine.remember([key])
            if acked < 1:
                self.server.unreplicated_write()
            return reply

        return run

    # -- leading the stream -------------------------------------------------------------------

    def _lead(self) -> Plan[bool]:
        """True while this process leads the stream; takes the flusher lease when it is free."""
        if self.leading:
            return True
        backend = self.backend
        # SET lease token PX lease_ms NX
        taken = yield RedisCall(backend, "set", self.lease, self.token, None, self.lease_ms, True)
        if taken:
            yield RunScript(backend, "group", [self.stream], [self.GROUP, self.retention_ms])
            self.leading = True
            self.claimed = 0.0
            yield Spawn(self._keep_lease(), self.engine.keep, background=True)
            yield from self._prune_consumers()
        return self.leading

    def _prune_consumers(self) -> Plan[None]:
        """Remove the group's consumers of processes long gone (nothing pending, idle for ten
        claim periods): each restart adds one, and the group would otherwise keep them all."""
        consumers = yield RedisCall(self.backend, "xinfo_consumers", self.stream, self.GROUP)
        for consumer in consumers:
            name = text(consumer["name"])
            if (
                name != self.consumer
                and int(consumer["pending"]) == 0
                and int(consumer["idle"]) > 10 * self.lease_ms
            ):
                yield RedisCall(self.backend, "xgroup_delconsumer", self.stream, self.GROUP, name)

    def _keep_lease(self) -> Plan[None]:
        """Renew the flusher lease while this process leads, beside the flusher (a thread or a
        task of its own): a slow store call is not a dead flusher, and its writes must not be
        claimed by another process meanwhile."""
        while self.leading and not self.stopped:
            yield Sleep(self.options.claim_idle / 3)
            try:
                held = yield RunScript(
                    self.backend, "renew", [self.lease], [self.token, self.lease_ms]
                )
            except REDIS_ERRORS as exc:
                self.engine.redis_failed(exc)
                continue  # the lease may still hold; the next renewal tells
            if not held and self.leading:
                self._lost_lease()

    def _lost_lease(self) -> None:
        self.leading = False
        with self.cond:
            self.pending.clear()  # still pending in the group: the new leader claims them
            self.known = {i for item in self.busy.values() for i in item.ids}
        log.warning("cachewise: lost the write-behind lease of %s", self.where)

    def _superseded(self, batch: list[PendingWrite]) -> Plan[set[str]]:
        """Keys whose write is not this writer's newest to that key: a newer one is queued (and
        will land), or has landed already (this one was claimed late, or delivered again). They
        are acknowledged without a store call, so a key's store never goes back in time."""
        mine = [item for item in batch if item.ids and not item.replay]
        if not mine:
            return set()
        try:
            newest = yield RedisCall(
                self.backend, "hmget", self.newest, [*(i.key for i in mine), "~"]
            )
        except REDIS_ERRORS as exc:
            self.engine.redis_failed(exc)
            return set()
        if newest.pop() is None:
            # The record of newest writes was lost (eviction, a flush): nothing tells an older
            # write from the newest, so all are written (at least once), and the loss is looked
            # into at once (the holders queue their writes again).
            self.loss.nogroup = "the queue's record of newest writes vanished"
            self.loss.check_due = 0.0
            return set()
        return {
            item.key
            for item, last in zip(mine, newest, strict=True)
            if last is None or text(last) != item.ids[-1]
        }

    def _refill(self, version: int, wait: float) -> Plan[None]:
        """Lead the stream, claim what a dead flusher left, and read new writes (blocking in
        Redis for up to ``wait``)."""
        try:
            if time.monotonic() >= self.loss.check_due and not self.stopped:
                self.loss.check_due = time.monotonic() + self.options.claim_idle / 2
                yield from self.loss.check()
            if self.stopped or not (yield from self._lead()):
                yield Sleep(min(self.options.claim_idle / 4, max(wait, self.options.interval)))
                return
            room = self.options.maxsize - len(self.pending) - len(self.busy)
            if room <= 0:
                yield Sleep(wait)
                return
            if time.monotonic() - self.claimed > self.options.claim_idle / 2:
                yield from self._claim(room)
                return
            block = max(1, int(min(wait, self.backend.block_limit) * 1000))
            reply = yield RedisCall(
                self.backend,
                "xreadgroup",
                self.GROUP,
                self.consumer,
                {self.stream: ">"},
                min(room, self.options.batch_size),
                block,
            )
        except REDIS_ERRORS as exc:
            self.engine.redis_failed(exc)
            if "NOGROUP" in str(exc):
                # The stream or its group was deleted, evicted or flushed: its writes are lost
                # unless queued again. Checked at once (the group is made again there).
                self.leading = False
                self.loss.nogroup = describe(exc)
                self.loss.check_due = 0.0
            yield Sleep(min(1.0, self.options.claim_idle / 4))  # Redis is in trouble: slow down
            return
        for _, entries in reply or []:
            self._take_entries(entries)

    def _claim(self, room: int) -> Plan[None]:
        """Claim the entries other consumers left pending for ``claim_idle`` (a dead flusher)."""
        start = "0-0"
        while room > 0:
            reply = yield RedisCall(
                self.backend,
                "xautoclaim",
                self.stream,
                self.GROUP,
                self.consumer,
                self.lease_ms,
                start,
                min(room, self.options.batch_size),
            )
            start, entries = text(reply[0]), reply[1]
            if entries:
                log.info("cachewise: %s claimed %d pending writes", self.where, len(entries))
            room -= self._take_entries(entries)
            if start == "0-0":
                break
        self.claimed = time.monotonic()

    def _take_entries(self, entries: list[Any]) -> int:
        taken = 0
        with self.cond:
            for entry_id, fields in entries:
                ident = text(entry_id)
                if not fields or ident in self.known:
                    continue  # deleted meanwhile, or claimed back while it waits here
                self.known.add(ident)
                key = text(fields[b"k"])
                raw = fields[b"a"]
                try:
                    call = unpack_call(raw)
                except Exception:
                    call = WriteCall((), {})  # undecodable: the call fails and is dead-lettered
                self._add(key, call, [ident], raw, replay=b"r" in fields)
                taken += 1
        return taken

    def _settle(
        self, settled: list[tuple[PendingWrite, Outcome, BaseException | None]]
    ) -> Plan[None]:
        """Acknowledge what landed, dead-letter what failed for good: one round trip (two when
        the queue has a Redis of its own: the queue's half first)."""
        cache = self.cache_backend
        queue_calls: list[StoreCall] = []
        cache_calls: list[StoreCall] = []
        dropped: list[str] = []
        acked: list[str] = []
        for item, outcome, error in settled:
            if outcome == "retry":
                continue
            if outcome == "superseded":
                continue  # its entries are acknowledged with the newer write
            self.known.difference_update(item.ids)
            acked.extend(item.ids)
            mode = "dead" if outcome == "dead" else "drop" if item.replay else "ok"
            if mode != "ok":
                self.engine.drop_local([item.key])
                dropped.append(item.key)
            queue_keys = [self.stream, self.dead_stream, self.newest]
            queue_args = [
                self.GROUP, mode, self.retention_ms, item.key, item.packed,
                repr(error) if error is not None else "", item.attempts + 1, *item.ids,
            ]  # fmt: skip
            cache_keys = [cache.keys.pending(item.key), item.key, cache.keys.lease(item.key)]
            cache_args = [
                f"{self.stream}|{item.ids[-1]}" if item.ids else "", mode, cache.inbox,
                encode(Invalidated(cache.origin, (item.key,))) if mode != "ok" else "",
            ]  # fmt: skip
            if self.split:
                queue_calls.append(("settle_queue", queue_keys, queue_args))
                cache_calls.append(("settle_cache", cache_keys, cache_args))
            else:
                keys = [self.stream, cache_keys[0], item.key, cache_keys[2], self.dead_stream,
                        self.newest]  # fmt: skip
                args = [self.GROUP, cache_args[0], mode, cache_args[2], cache_args[3],
                        self.retention_ms, item.key, item.packed, queue_args[5],
                        item.attempts + 1, *item.ids]  # fmt: skip
                queue_calls.append(("settle", keys, args))
        if not queue_calls:
            return
        try:
            yield RunPipeline(self.backend, queue_calls)
        except REDIS_ERRORS as exc:
            # Not acknowledged: the entries stay pending and are written again (at least once).
            self.engine.redis_failed(exc)
            return
        with self.cond:
            self.loss.held.settled(acked)
        yield from self._settle_cache(cache_calls)
        self.engine.wake_waiters(dropped)  # their values and leases are gone: load instead

    def _settle_cache(self, calls: list[StoreCall]) -> Plan[None]:
        """The cache halves of settled writes (a queue of its own), with any the cache's Redis
        refused before: a pending record left behind would be read instead of the store."""
        calls = self._cache_backlog + calls
        self._cache_backlog = []
        if not calls:
            return
        try:
            yield RunPipeline(self.cache_backend, calls)
        except REDIS_ERRORS as exc:
            self.engine.redis_failed(exc)
            self._cache_backlog = calls[-10_000:]

    def _retire(self) -> Plan[None]:
        if self.leading:
            self.leading = False
            try:
                yield RunScript(self.backend, "release", [self.lease], [self.token])
            except REDIS_ERRORS as exc:
                self.engine.redis_failed(exc)

    # -- flush, dead letters ------------------------------------------------------------------

    def flush(self, timeout: float | None) -> Plan[FlushReport]:
        """Wait until every write in the stream when this was called is in the store or
        dead-lettered, by whichever process flushes it (polled: other processes do the work)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        errors: list[str] = []
        left = 0
        try:
            yield from self.loss.check()  # a lost queue is reported, never a silent pending=0
            last = yield RedisCall(self.backend, "xrevrange", self.stream, "+", "-", 1)
            while last:
                if not (yield RedisCall(self.backend, "xrange", self.stream, "-", last[0][0], 1)):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.kick()
                yield Sleep(0.005)
            left = yield RedisCall(self.backend, "xlen", self.stream)
        except REDIS_ERRORS as exc:
            self.engine.redis_failed(exc)
            errors.append(f"Redis failed while flushing {self.where}: {describe(exc)}")
        report = self._end_flush(pending=left)
        report.errors.extend(errors)
        return report

    def dead_letters(self) -> Plan[list[DeadLetter]]:
        return dead_letters.read(self)

    def replay(self, letters: list[DeadLetter]) -> Plan[int]:
        return dead_letters.replay(self, letters)

    def stop(self) -> None:
        with self.cond:
            self.pending.clear()  # still pending in the group: the next flusher claims them
        super().stop()
