"""The core services below the user's layers: Readiness and Tracker."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import trio

from ._context import WorkerContext
from ._nowait import nowait_reservation
from ._permits import Permits
from ._service import ALWAYS_READY, Service
from ._task import Task

__all__ = ["Readiness", "Tracker"]


class _Reservation:
    """One of the worker's ``concurrency`` slots, then the inner stack's reservation."""

    __slots__ = ("inner_cm", "owner")

    def __init__(self, owner: Readiness) -> None:
        self.owner = owner
        self.inner_cm: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> None:
        owner = self.owner
        context = owner.context
        if context._paused or context.stopping:
            await context.wait_runnable()
        permits = owner.permits
        # A free slot is taken without a schedule point, so the worker can reserve
        # several slots in a row and claim for all of them in one batch.
        await trio.lowlevel.checkpoint_if_cancelled()
        if not permits.take():
            await permits.lot.park()  # woken holding the permit a release handed over
        await self._enter_inner(owner.inner.ready())

    async def _enter_inner(self, cm: AbstractAsyncContextManager[None]) -> None:
        """Holding a slot, enter the inner stack's reservation (the slot goes back if
        that fails)."""
        if cm is not ALWAYS_READY:
            try:
                await cm.__aenter__()
            except BaseException:
                self.owner.permits.release()
                raise
            self.inner_cm = cm

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.inner_cm is not None:
                await self.inner_cm.__aexit__(exc_type, exc, tb)
        finally:
            self.owner.permits.release()


class _ReservationNowait(_Reservation):
    """``ready_nowait``: a free slot now (never while paused or stopping), then the inner
    stack's reservation likewise; else ``trio.WouldBlock``."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        owner = self.owner
        context = owner.context
        permits = owner.permits
        if context._paused or context.stopping or not permits.take():
            raise trio.WouldBlock
        await self._enter_inner(nowait_reservation(owner.inner))


class Readiness(Service[Task[Any], Any]):
    """Not ready while the worker is paused or stopping; holds one of ``concurrency`` slots.

    This is the worker's own backpressure: the worker enters ``ready()`` before it claims
    a task, so a paused or full worker claims nothing.
    """

    __slots__ = ("context", "inner", "permits")

    def __init__(
        self, inner: Service[Task[Any], Any], context: WorkerContext, concurrency: int
    ) -> None:
        self.inner = inner
        self.context = context
        self.permits = Permits(concurrency)

    def ready(self) -> AbstractAsyncContextManager[None]:
        return _Reservation(self)

    def ready_nowait(self) -> AbstractAsyncContextManager[None]:
        """Like ``ready()``, but ``__aenter__`` raises ``trio.WouldBlock`` instead of waiting."""
        return _ReservationNowait(self)

    async def __call__(self, task: Task[Any], /) -> Any:
        return await self.inner(task)


class Tracker(Service[Task[Any], Any]):
    """Counts the tasks inside the handler, for ``WorkerContext.in_flight``. Forwards ready()."""

    __slots__ = ("context", "inner")
    forwards_ready = True  # ready() is inner.ready(), unchanged

    def __init__(self, inner: Service[Task[Any], Any], context: WorkerContext) -> None:
        self.inner = inner
        self.context = context

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()

    async def __call__(self, task: Task[Any], /) -> Any:
        ctx = self.context
        ctx.in_flight += 1
        try:
            return await self.inner(task)
        finally:
            ctx.in_flight -= 1
