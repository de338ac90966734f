"""Non-blocking readiness: ``ready_nowait()``, :func:`nowait_reservation`, :func:`enter_nowait`.

A service may offer ``ready_nowait()``: like ``ready()``, it returns a reservation, but
one whose ``__aenter__`` never waits: it takes the reservation at once or raises
``trio.WouldBlock``. Every stateful layer in :mod:`turret.layers` offers it (a trio
primitive's ``*_nowait`` method, in trio's style), and so does the worker's Readiness
(its task runners take their next reservation this way, see :mod:`turret.core._worker`).

A service whose ``ready()`` is its inner service's, unchanged, may say so with a class
attribute ``forwards_ready = True`` (most of :mod:`turret.layers` do): then
:func:`nowait_reservation` asks its ``inner`` instead, and the service needs no
``ready_nowait`` of its own.

For a service without either, :func:`nowait_reservation` enters ``ready()`` inside a cancel
scope whose deadline is set to the past *after* the scope is entered. trio only expires
deadlines on its next scheduling tick, so the inner ``ready()`` gets exactly one
checkpoint to complete (a ``trio.CapacityLimiter`` with a free token completes there)
and is cancelled the moment it would wait; the cancellation becomes ``trio.WouldBlock``.
(A scope *entered* with a past deadline would not do: trio cancels it on entry, and
trio's primitives check for cancellation before they try to acquire.) A ``ready()`` that
needs several checkpoints even when it could be granted should implement
``ready_nowait()``.
"""

from __future__ import annotations

import math
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import trio

from ._service import ALWAYS_READY

__all__ = ["enter_nowait", "nowait_reservation"]


class _Deadlined:
    """``ready()`` of a service without ``ready_nowait``, given one checkpoint."""

    __slots__ = ("cm",)

    def __init__(self, cm: AbstractAsyncContextManager[None]) -> None:
        self.cm = cm

    async def __aenter__(self) -> None:
        with trio.CancelScope() as scope:
            scope.deadline = -math.inf  # takes effect at trio's next tick, see module docs
            await self.cm.__aenter__()
            return
        raise trio.WouldBlock

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cm.__aexit__(exc_type, exc, tb)


def forwarded(service: Any) -> Any:
    """``service``, or the first service below it whose ``ready()`` is its own: past every
    layer that says ``forwards_ready`` (its ready() is its inner's, unchanged)."""
    while getattr(type(service), "forwards_ready", False):
        service = service.inner
    return service


def nowait_reservation(service: Any) -> AbstractAsyncContextManager[None]:
    """A reservation of ``service`` whose ``__aenter__`` raises ``trio.WouldBlock``
    instead of waiting (``service.ready_nowait()`` when it exists).

    Example::

        try:
            async with nowait_reservation(svc):
                ...
        except trio.WouldBlock:
            ...  # not ready now
    """
    service = forwarded(service)
    nowait = getattr(service, "ready_nowait", None)
    if nowait is not None:
        cm: AbstractAsyncContextManager[None] = nowait()
        return cm
    cm = service.ready()
    if cm is ALWAYS_READY:
        return cm
    return _Deadlined(cm)


class _Held:
    """An entered reservation: ``__aenter__`` is a no-op, ``__aexit__`` releases."""

    __slots__ = ("cm",)

    def __init__(self, cm: AbstractAsyncContextManager[None]) -> None:
        self.cm = cm

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cm.__aexit__(exc_type, exc, tb)


async def enter_nowait(service: Any) -> AbstractAsyncContextManager[None] | None:
    """Take ``service``'s reservation without waiting: the held reservation, or ``None``.

    Use the result with ``async with`` (entering it is a no-op; leaving releases).

    Example::

        held = await enter_nowait(svc)
        if held is None:
            raise Overloaded("busy")
        async with held:
            return await svc(req)
    """
    cm = nowait_reservation(service)
    try:
        await cm.__aenter__()
    except trio.WouldBlock:
        return None
    return _Held(cm)
