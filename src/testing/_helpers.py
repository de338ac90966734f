"""Drivers and assertions for services: call_once, make_task, assert_(not_)ready."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import trio

from ..core._nowait import enter_nowait
from ..core._service import Service
from ..core._task import Lease, Task, TaskContext, TaskId

__all__ = ["assert_not_ready", "assert_ready", "call_once", "make_task"]

Res = TypeVar("Res")


def make_task(
    args: Any = None,
    *,
    queue: str = "test",
    attempt: int = 1,
    max_attempts: int = 3,
    headers: Mapping[str, str] | None = None,
) -> Task[Any]:
    """A claimed-looking :class:`~turret.Task` for driving a stack in a test.

    Example::

        task = make_task({"tenant": "acme"}, attempt=2)
        assert task.ctx.lease is not None
    """
    ctx = TaskContext(
        id=TaskId.new(),
        queue=queue,
        attempt=attempt,
        max_attempts=max_attempts,
        headers=dict(headers or {}),
        lease=Lease("test", float("inf"), 1),
    )
    return Task(args, ctx)


async def call_once(service: Service[Any, Res], task_or_args: Any, *, as_task: bool = True) -> Res:
    """Drive one task through ``service`` as a worker does: enter ``ready()``, then call.

    Pass a :class:`~turret.Task`, or just its arguments: they are wrapped with
    :func:`make_task`. For a service whose requests are not tasks, pass
    ``as_task=False`` and the request goes through unchanged. The reservation and the
    call happen in the calling trio task, as in a worker.

    Example::

        result = await call_once(stack, {"n": 1})             # wrapped in a Task
        doubled = await call_once(double, 21, as_task=False)  # a Service[int, int]
    """
    req = task_or_args
    if as_task and not isinstance(req, Task):
        req = make_task(req)
    async with service.ready():
        return await service(req)


async def assert_not_ready(service: Service[Any, Any], *, within: float = 0.0) -> None:
    """Fail if ``service.ready()`` can be entered (waiting at most ``within`` seconds).

    With ``within=0`` it checks without waiting (``ready_nowait()`` or one checkpoint,
    see :func:`turret.layers.enter_nowait`); under ``autojump_clock`` a positive
    ``within`` costs no real time. A reservation it gets by mistake is released.

    Example::

        mock.set_ready(False)
        await assert_not_ready(mock)
    """
    if within > 0:
        with trio.move_on_after(within):
            async with service.ready():
                pass
            raise AssertionError(f"{service!r} became ready within {within}s")
        return
    held = await enter_nowait(service)
    if held is not None:
        async with held:
            pass
        raise AssertionError(f"{service!r} is ready, expected it not to be")


async def assert_ready(service: Service[Any, Any], *, within: float = 0.0) -> None:
    """Fail unless ``service.ready()`` can be entered (within ``within`` seconds).

    The reservation is released again at once.

    Example::

        await assert_ready(stack)
    """
    if within > 0:
        with trio.move_on_after(within):
            async with service.ready():
                return
        raise AssertionError(f"{service!r} did not become ready within {within}s")
    held = await enter_nowait(service)
    if held is None:
        raise AssertionError(f"{service!r} is not ready")
    async with held:
        pass
