"""Map layers: transform a task's arguments on the way in, or the result on the way out.

Both keep the stack's type (``Task[Any] -> Any``), so they compose with every other
layer in a :class:`~turret.WorkerBuilder`. They have no failure mode of their own: an
exception from ``fn`` is the call's failure, like the handler's.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import attrs

from ..core._service import Service
from ..core._task import Task

__all__ = ["MapArgs", "MapArgsLayer", "MapResult", "MapResultLayer"]

Req = TypeVar("Req")
Res = TypeVar("Res")


def _callable(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not callable(value):
        raise ValueError(f"{attr.name} must be callable, got {value!r}")


class MapArgs(Service[Task[Any], Res]):
    """The service :class:`MapArgsLayer` builds. Forwards ``ready()``."""

    __slots__ = ("fn", "inner")
    forwards_ready = True  # ready() is inner.ready(), unchanged

    def __init__(self, inner: Service[Task[Any], Res], fn: Callable[[Any], Any]) -> None:
        self.inner = inner
        self.fn = fn

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()

    async def __call__(self, task: Task[Any], /) -> Res:
        return await self.inner(Task(self.fn(task.args), task.ctx))


@attrs.frozen
class MapArgsLayer(Generic[Res]):
    """Replace each task's ``args`` with ``fn(args)`` before the inner service sees it.

    The arguments are the decoded payload (plain JSON values); the handler adapter
    structures the mapped value into the handler's annotated type afterwards.

    Example::

        # accept the old payload shape {"email": ...} as well as the new {"to": ...}
        upgrade = MapArgsLayer(lambda a: {"to": a["email"]} if "email" in a else a)
        worker = WorkerBuilder("mail").backend(backend).layer(upgrade).build(send)
    """

    fn: Callable[[Any], Any] = attrs.field(validator=_callable)

    def layer(self, inner: Service[Task[Any], Res], /) -> MapArgs[Res]:
        return MapArgs(inner, self.fn)


class MapResult(Service[Req, Res]):
    """The service :class:`MapResultLayer` builds. Forwards ``ready()``."""

    __slots__ = ("fn", "inner")
    forwards_ready = True  # ready() is inner.ready(), unchanged

    def __init__(self, inner: Service[Req, Res], fn: Callable[[Res], Res]) -> None:
        self.inner = inner
        self.fn = fn

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()

    async def __call__(self, req: Req, /) -> Res:
        return self.fn(await self.inner(req))


@attrs.frozen
class MapResultLayer(Generic[Req, Res]):
    """Replace the inner service's result with ``fn(result)``.

    Inside a worker the mapped result is what the backend stores with the ack.

    Example::

        # store only the id of what the handler returns
        worker = (
            WorkerBuilder("w").backend(backend)
            .layer(MapResultLayer(lambda r: {"id": r["id"]}))
            .build(handler)
        )
    """

    fn: Callable[[Res], Res] = attrs.field(validator=_callable)

    def layer(self, inner: Service[Req, Res], /) -> MapResult[Req, Res]:
        return MapResult(inner, self.fn)
