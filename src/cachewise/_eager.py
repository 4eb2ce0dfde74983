"""A task whose first step runs at once, inside the step of the task that starts it.

A flight's load runs in a task of its own, so that cancelling a caller never cancels it (see
``_drivers``). A new task's first step is queued behind every step already due: in a herd of 500
tasks on one cold key, the load began only after all of them had taken their first step (4.6 ms,
measured), and every caller waited that much longer. Python 3.12's ``eager_start`` runs that step
at once, and is not there on 3.11; ``start`` does the same from 3.11 on, with the loop's own
task factory: the task is made as usual, its coroutine's first step is run now in the task's
context with the task recorded as the loop's current task (so ``asyncio.current_task()``,
``asyncio.timeout()`` or an anyio cancel scope entered there belong to the load, not to the
caller that started it), and the task goes on from where that step stopped.

Written by hand because no library does it: it swaps the current task with asyncio's own
``_enter_task``/``_leave_task`` (3.7 to 3.14, what ``eager_start`` itself uses), and where those
are missing, or before 3.11 (no ``context=`` for ``create_task``), it is a plain ``create_task``.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any

_enter = getattr(asyncio.tasks, "_enter_task", None)
_leave = getattr(asyncio.tasks, "_leave_task", None)
EAGER = sys.version_info >= (3, 11) and _enter is not None and _leave is not None


def start(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task running ``coro``, its first step already taken (where ``EAGER``)."""
    if not EAGER:
        return loop.create_task(coro)
    caller = asyncio.current_task(loop)
    if caller is None:  # not inside a task (a callback): nothing to swap with
        return loop.create_task(coro)
    context = contextvars.copy_context()
    taken: list[Any] = []
    # ``context=`` is 3.11's (the typing stubs may be read as 3.10's).
    task = loop.create_task(_go_on(coro, taken), context=context)  # type: ignore[call-arg,unused-ignore]
    # A task cancelled before its first step never runs ``_go_on``: ``coro`` is closed then
    # (its ``finally`` blocks run), and closing a finished coroutine does nothing.
    task.add_done_callback(lambda _: coro.close())
    assert _enter is not None and _leave is not None
    _leave(loop, caller)
    _enter(loop, task)
    try:
        taken.extend(context.run(_step, coro.send, None))
    finally:
        _leave(loop, task)
        _enter(loop, caller)
    return task


def _step(advance: Any, arg: Any) -> tuple[bool, Any, BaseException | None]:
    """One step of a coroutine: (finished, what it yielded or returned, what it raised)."""
    try:
        return False, advance(arg), None
    except StopIteration as stop:
        return True, stop.value, None
    except BaseException as exc:  # carried into the task, which raises it there
        return True, None, exc


async def _go_on(coro: Coroutine[Any, Any, Any], taken: list[Any]) -> Any:
    """The task's own coroutine: ``coro`` from where its first step stopped."""
    return await _rest(coro, taken)


@types.coroutine
def _rest(coro: Coroutine[Any, Any, Any], taken: list[Any]) -> Generator[Any, Any, Any]:
    # ``yield from`` for a coroutine already stepped once: what it yielded goes to the task, and
    # what the task sends or throws back goes to it, until it returns or raises.
    finished, value, error = taken
    del taken[:]  # nothing kept alive by the list once under way
    while not finished:
        try:
            sent = yield value
        except BaseException as exc:
            finished, value, error = _step(coro.throw, exc)
        else:
            finished, value, error = _step(coro.send, sent)
    if error is not None:
        raise error
    return value
