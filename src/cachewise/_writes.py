"""The writer decorators: ``invalidates``, ``write_through`` and ``write_behind``.

Each decorated writer is one plan (run by either driver through ``decorators._shell``):
compute what to touch, run the store write through the driver's ``Invoke``, then change the
cache.
"""

from __future__ import annotations

import functools
import inspect
import zlib
from collections.abc import Callable
from typing import Any

from ._drivers import Invoke, Plan
from .decorators import Spec, _shell, spec_of
from .engine import Engine
from .errors import ConfigError, ConfigTypeError, WriteBehindUnavailable, describe
from .options import WriteBehind
from .redis import REDIS_ERRORS
from .writebehind import (
    QueueWait,
    StreamQueue,
    WriteBehindQueue,
    WriteCall,
    partition_names,
    stream_name,
)

Mapper = Callable[..., Any]


class WriterArgumentError(ConfigError):
    """An ``args=`` or ``value=`` function raised; the message says what was already done."""


def _mapped(spec: Spec[Any], mapper: Mapper | None, name: str, args: Any, kwargs: Any) -> Any:
    if mapper is None:
        return args
    try:
        return mapper(*args, **kwargs)
    except Exception as exc:
        raise WriterArgumentError(
            f"{name}= for {spec.where} raised {exc!r} before the store write: "
            "nothing was written and the cache is unchanged"
        ) from exc


def call_writer(engine: Engine, fn: Callable[..., Any], args: Any, kwargs: Any) -> Plan[Any]:
    """Run the store write ``fn(*args, **kwargs)`` through the driver and return its result."""
    return (yield Invoke(functools.partial(fn, *args, **kwargs)))


def invalidates(engine: Engine, target: Any, args: Mapper | None) -> Callable[[Any], Any]:
    """Decorator: after the writer returns without error, drop ``target(*args(...))``."""
    spec = spec_of(target, "invalidates()")

    def decorate(fn: Callable[..., Any]) -> Any:
        def plan(*a: Any, **kw: Any) -> Plan[Any]:
            keys = spec.args_of(_mapped(spec, args, "args", a, kw))
            result = yield from call_writer(engine, fn, a, kw)
            yield from spec.engine.invalidate([spec.target_of_call(keys, {}).full_key])
            return result

        return functools.update_wrapper(_shell(fn, plan), fn)

    return decorate


def write_through(
    engine: Engine, target: Any, args: Mapper | None, value: Mapper | None
) -> Callable[[Any], Any]:
    """Decorator: the store write first; then the cache holds the new value. On error: dropped."""
    spec = spec_of(target, "write_through()")

    def decorate(fn: Callable[..., Any]) -> Any:
        def plan(*a: Any, **kw: Any) -> Plan[Any]:
            keys = spec.args_of(_mapped(spec, args, "args", a, kw))
            new = _mapped(spec, value, "value", a, kw) if value is not None else None
            entry = spec.target_of_call(keys, {})
            try:
                result = yield from call_writer(engine, fn, a, kw)
            except BaseException:
                # Never leave the entry half-updated: drop it, and let the error through as is.
                yield from spec.engine.invalidate([entry.full_key])
                raise
            yield from spec.engine.set(entry, result if value is None else new, spec.policy)
            return result

        return functools.update_wrapper(_shell(fn, plan), fn)

    return decorate


def check_write_behind_value(value: Mapper | None) -> Mapper:
    if value is None:
        raise ConfigTypeError(
            "write_behind() needs value=: the writer runs later, so there is no return value "
            "to cache when the call returns"
        )
    if not callable(value):
        raise ConfigTypeError(f"value= must be callable, got {type(value).__name__}")
    return value


def write_behind(
    engine: Engine,
    target: Any,
    args: Mapper | None,
    value: Mapper | None,
    batch: Callable[[list[WriteCall]], Any] | None,
    options: WriteBehind,
    queues: list[WriteBehindQueue],
) -> Callable[[Any], Any]:
    """Decorator: set the cache and queue the store write, then return; a flusher writes later.

    With Redis the queue is the writer's stream and the cache write and the enqueue are one
    script (one round trip, never one without the other); without it, an in-memory queue.
    """
    spec = spec_of(target, "write_behind()")
    value_of = check_write_behind_value(value)

    def decorate(fn: Callable[..., Any]) -> Any:
        check_batch(fn, batch)
        backend = spec.engine.backend
        mine: list[WriteBehindQueue]
        if backend is not None:
            mine = [
                StreamQueue(fn, batch, name, options, spec.engine)
                for name in partition_names(stream_name(fn), options.partitions)
            ]
        else:
            name = f"{fn.__module__}.{fn.__qualname__}"
            mine = [WriteBehindQueue(fn, batch, name, options, spec.engine)]
        queues.extend(mine)

        def plan(*a: Any, **kw: Any) -> Plan[None]:
            keys = spec.args_of(_mapped(spec, args, "args", a, kw))
            new = _mapped(spec, value_of, "value", a, kw)
            entry = spec.target_of_call(keys, {})
            if spec.engine.uncached():  # caching is off here: the store write, now
                yield from call_writer(spec.engine, fn, a, kw)
                yield from spec.engine.invalidate([entry.full_key])
                return
            call = WriteCall(a, kw)
            queue = mine[0] if len(mine) == 1 else mine[_partition(entry.full_key, len(mine))]
            if isinstance(queue, StreamQueue):
                queue.ensure_flusher()
                try:
                    yield from spec.engine.set(
                        entry, new, spec.policy, queue.enqueue(entry.full_key, call)
                    )
                except REDIS_ERRORS as exc:
                    raise WriteBehindUnavailable(
                        f"Redis failed while queueing a write of {queue.where} "
                        f"({describe(exc)}): the "
                        "write is not confirmed; the cache of this process is unchanged"
                    ) from exc
                return
            # Pinned while queued, so reads see the new value until the store has it.
            pin = functools.partial(spec.engine.pin, entry, new, spec.policy)
            while not queue.put(entry.full_key, call, pin):
                if options.when_full == "raise":
                    raise queue.full_error()
                yield QueueWait(
                    queue, functools.partial(queue.has_room, entry.full_key), None, "progress"
                )
            yield from spec.engine.set(entry, new, spec.policy)

        return functools.update_wrapper(_shell(fn, plan), fn)

    return decorate


def _partition(key: str, partitions: int) -> int:
    """The queue partition of a key's writes: the same in every process, so they stay in order."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def check_batch(fn: Callable[..., Any], batch: Callable[..., Any] | None) -> None:
    if batch is None:
        return
    if not callable(batch):
        raise ConfigTypeError(f"batch= must be callable, got {type(batch).__name__}")
    if inspect.iscoroutinefunction(batch) != inspect.iscoroutinefunction(fn):
        raise ConfigTypeError(
            f"batch= for {fn.__qualname__} must be async exactly when the writer is "
            "(both run in the same flusher)"
        )
