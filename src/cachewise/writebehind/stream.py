"""A writer's queue kept in a Redis Stream, flushed by whichever live process leads it: the
caller's enqueue (the durable write, with the server check and the wait for a replica) and the
flusher's settle (ack, forget or dead-letter), on one Redis or on a queue Redis of its own."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._drivers import Plan, Sleep
from ..errors import (
    ValueTooLarge,
    describe,
)
from ..events import Invalidated, encode
from ..redis import (
    REDIS_ERRORS,
    RedisCall,
    RunPipeline,
    RunReplicated,
    RunScript,
    ScriptCall,
)
from . import dead_letters
from .durable import ServerCheck
from .loss import LossDetection
from .reader import StreamReader
from .types import (
    DeadLetter,
    FlushReport,
    Outcome,
    PendingWrite,
    WriteCall,
    pack_call,
)

if TYPE_CHECKING:
    from ..engine import StoreCall

log = logging.getLogger("cachewise")


class StreamQueue(StreamReader):
    """A writer's queue kept in a Redis Stream, flushed by whichever live process leads it."""

    def _components(self) -> None:
        self.loss = LossDetection(self)
        self.server = ServerCheck(self)

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
                ScriptCall(
                    "enqueue_queue",
                    [self.stream, self.newest, self.epoch_key],
                    [key, packed, nonce],
                )
                if self.split
                else ScriptCall(
                    "enqueue",
                    [self.stream, pending, self.newest, self.epoch_key, *keys],
                    [*args[:5], key, packed, nonce, *args[5:]],
                )
            )
            acked = 1
            if not self.server.replicas or not self.options.replica_wait:
                reply = yield RunScript(self.backend, *script)
            else:
                wait_ms = self.backend.wait_ms(self.options.replica_wait)
                (reply,), acked = yield RunReplicated(self.backend, [script], wait_ms)
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
                f"{self.stream}|{item.ids[-1]}" if item.ids else "", mode, cache.sender,
                encode(Invalidated(cache.origin, (item.key,))) if mode != "ok" else "",
            ]  # fmt: skip
            if self.split:
                queue_calls.append(ScriptCall("settle_queue", queue_keys, queue_args))
                cache_calls.append(ScriptCall("settle_cache", cache_keys, cache_args))
            else:  # both halves in one script
                queue_calls.append(
                    ScriptCall("settle", [*queue_keys, *cache_keys], [*cache_args, *queue_args])
                )
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

    # -- flush, dead letters ------------------------------------------------------------------

    def flush(self, timeout: float | None) -> Plan[FlushReport]:
        """Wait until every write in the stream when this was called is in the store or
        dead-lettered, by whichever process flushes it (polled: other processes do the work)."""
        deadline = None if timeout is None else self.engine.timer() + timeout
        errors: list[str] = []
        left = 0
        try:
            # A lost queue is reported, never a silent pending=0: looked for before the wait
            # and after it, and waited for again when it was lost meanwhile.
            yield from self.loss.check()
            while True:
                losses = self.loss.losses
                yield from self._drain(deadline)
                yield from self.loss.check()
                if self.loss.losses == losses or self._past(deadline):
                    break
            left = yield RedisCall(self.backend, "xlen", self.stream)
            left += self.loss.unsettled_elsewhere()
        except REDIS_ERRORS as exc:
            self.engine.redis_failed(exc)
            errors.append(f"Redis failed while flushing {self.where}: {describe(exc)}")
            with self.cond:  # what the stream holds is unknown: at least what this process does
                left = len(self.loss.held.items)
        report = self._end_flush(pending=left)
        report.errors.extend(errors)
        return report

    def _drain(self, deadline: float | None) -> Plan[None]:
        """Wait until the stream's entries of now are gone (settled), or the deadline."""
        last = yield RedisCall(self.backend, "xrevrange", self.stream, "+", "-", 1)
        while last:
            if not (yield RedisCall(self.backend, "xrange", self.stream, "-", last[0][0], 1)):
                break
            if self._past(deadline):
                break
            self.kick()
            yield Sleep(0.005)

    def _past(self, deadline: float | None) -> bool:
        return deadline is not None and self.engine.timer() >= deadline

    def dead_letters(self) -> Plan[list[DeadLetter]]:
        return dead_letters.read(self)

    def replay(self, letters: list[DeadLetter]) -> Plan[int]:
        return dead_letters.replay(self, letters)

    def stop(self) -> None:
        with self.cond:
            self.pending.clear()  # still pending in the group: the next flusher claims them
        super().stop()
