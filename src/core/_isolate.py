"""``isolated(coro)``: await a coroutine in a copy of the current context.

A worker's runner task runs one task after another (see :mod:`turret.core._worker`); each
runs in its own copy of the runner's context, so a context variable a handler sets is
gone when its task ends, as it would be had the task run in a trio task of its own.
trio steps a task's coroutine inside ``task.context.run``; :func:`isolated` steps the
inner coroutine inside ``copy.run`` and passes what it yields (trio's traps) and what
trio sends or throws back (results, ``Cancelled``) straight through.
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["isolated"]

T = TypeVar("T")


@types.coroutine
def _drive(context: contextvars.Context, coro: Coroutine[Any, Any, T]) -> Generator[Any, Any, T]:
    step: Callable[[Any], Any] = coro.send
    value: Any = None
    while True:
        try:
            trap = context.run(step, value)
        except StopIteration as stop:
            result: T = stop.value
            return result
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # Cancelled, KeyboardInterrupt: the inner one's now
            step, value = coro.throw, exc
        else:
            step = coro.send


async def isolated(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` in a copy of the current context: what it sets stays its own.

    Example::

        var.set("before")
        await isolated(handler_that_sets(var))
        assert var.get() == "before"
    """
    return await _drive(contextvars.copy_context(), coro)
