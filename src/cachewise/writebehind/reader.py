"""Reading a writer's Redis stream: the flusher lease (one reader keeps each key's writes in
order), ``XAUTOCLAIM`` of what a dead holder left pending, ``XREADGROUP`` of new writes, and
the check that a newer write supersedes an older one."""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from .._drivers import Plan, Sleep, Spawn
from ..errors import (
    describe,
)
from ..redis import (
    QUEUE_GROUP,
    REDIS_ERRORS,
    Backend,
    RedisCall,
    RunScript,
    text,
)
from .durable import ServerCheck
from .loss import LossDetection, stream_order
from .queue import WriteBehindQueue
from .types import (
    PendingWrite,
    WriteCall,
    unpack_call,
)

if TYPE_CHECKING:
    from ..engine import StoreCall

log = logging.getLogger("cachewise")


class StreamReader(WriteBehindQueue):
    """A writer's stream and who reads it: its Redis names, the flusher lease, claims of a dead
    flusher's writes, new writes read through the consumer group. ``StreamQueue`` is the layer
    above: the caller's enqueue and the flusher's settle."""

    durable = True
    GROUP = QUEUE_GROUP

    @property
    def split(self) -> bool:
        """Whether a call, a settle and a requeue are two scripts (the queue's half first): when
        the queue has a Redis of its own, and on a cluster, where the writer's keys and the
        entry's are in different slots."""
        return self.backend is not self.cache_backend or self.cache_backend.cluster

    def _put_back(self, batch: list[PendingWrite]) -> None:
        """Nothing to do: an unfinished batch stays pending in the stream, where a flusher
        claims it after ``write_behind_claim_idle``."""

    def _start(self) -> None:
        """Name the writer's Redis keys and start flushing: a process that only registered the
        writer flushes too."""
        cache_backend = self.engine.backend
        assert cache_backend is not None
        #: Where cached values, their pending records and leases live, and events go.
        self.cache_backend: Backend = cache_backend
        #: Where the queue lives: ``write_behind_redis``, else the cache's own Redis. Apart, a
        #: call, a settle and a requeue are each two scripts (queue first), not one.
        self.backend: Backend = self.engine.queue_backend or cache_backend
        self._cache_backlog: list[StoreCall] = []  # cache halves of settles Redis refused
        space = cache_backend.keys
        self.stream = space.writer("wb", self.where)
        self.dead_stream = space.writer("wbdead", self.where)
        self.lease = space.writer("wbflusher", self.where)
        self.newest = space.writer("wbnewest", self.where)
        self.epoch_key = space.writer("wbepoch", self.where)
        self.token = secrets.token_hex(8)
        self._nonces = itertools.count()
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{self.token}"
        self.leading = False
        self.known: set[str] = set()  # stream ids held here (queued or being written)
        self.claimed = 0.0
        self.retention_ms = int(self.options.retention * 1000)
        self.lease_ms = int(self.options.claim_idle * 1000)
        self._components()
        self.ensure_flusher()  # a process that only registered the writer flushes too

    #: The parts that need the whole queue (made by ``StreamQueue._components``).
    loss: LossDetection
    server: ServerCheck

    def _components(self) -> None:
        raise NotImplementedError  # ``StreamQueue`` makes them

    # -- leading the stream -------------------------------------------------------------------

    def _lead(self) -> Plan[bool]:
        """True while this process leads the stream; takes the flusher lease when it is free."""
        if self.leading:
            return True
        backend = self.backend
        # SET lease token PX lease_ms NX
        taken = yield RedisCall(backend, "set", self.lease, self.token, None, self.lease_ms, True)
        if taken:
            yield RunScript(
                backend,
                "group",
                [self.stream, self.epoch_key, self.newest],
                [self.GROUP, secrets.token_hex(8)],
            )
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
        made_after = newest.pop()
        if made_after is None:
            # The record of newest writes was lost (eviction, a flush): nothing tells an older
            # write from the newest, so all are written (at least once), and the loss is looked
            # into at once (the holders queue their writes again).
            self.loss.nogroup = "the queue's record of newest writes vanished"
            self.loss.check_due = 0.0
            return set()
        # The record was made (again) after the entries up to ``made_after``: of those, only a
        # newer write it names is known; no field is no news (written, at least once).
        mark = text(made_after)  # "1" where an older release made it: no entry before it
        unknown_upto = stream_order(mark) if "-" in mark else (0, 0)
        return {
            item.key
            for item, last in zip(mine, newest, strict=True)
            if (last is None and stream_order(item.ids[-1]) > unknown_upto)
            or (last is not None and text(last) != item.ids[-1])
        }

    def _refill(self, version: int, wait: float) -> Plan[None]:
        """Lead the stream, claim what a dead flusher left, and read new writes (blocking in
        Redis for up to ``wait``)."""
        try:
            if self.engine.timer() >= self.loss.check_due and not self.stopped:
                self.loss.check_due = self.engine.timer() + self.options.claim_idle / 2
                yield from self.loss.check()
            if self.stopped or not (yield from self._lead()):
                yield Sleep(min(self.options.claim_idle / 4, max(wait, self.options.interval)))
                return
            room = self.options.maxsize - len(self.pending) - len(self.busy)
            if room <= 0:
                yield Sleep(wait)
                return
            if self.engine.timer() - self.claimed > self.options.claim_idle / 2:
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
        self.claimed = self.engine.timer()

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

    def _retire(self) -> Plan[None]:
        if self.leading:
            self.leading = False
            try:
                yield RunScript(self.backend, "release", [self.lease], [self.token])
            except REDIS_ERRORS as exc:
                self.engine.redis_failed(exc)
