"""Load shedding: reject work at once with :class:`Overloaded` instead of waiting.

This layer changes backpressure: its ``ready()`` never waits for the inner service.
Its reservation tries the inner reservation *without waiting* (``ready_nowait()`` when
the inner service has it, else one checkpoint; see :mod:`turret.layers._nowait`). If
the inner service is ready, the reservation holds it and the call goes through. If not,
the reservation is *shed*: it holds nothing, and the call made under it tries once more,
then raises :class:`Overloaded`.

In a pull-based worker an always-ready stack would claim without bound, so at most one
shed reservation exists at a time: while one is outstanding, the next ``ready()`` waits
for it (not for the inner service). Inside a worker, ``Overloaded`` is a task failure
that the backend retries later with backoff: the worker hands the task back instead of
holding it while busy.

The reservation and the call are linked through a context variable, so the call must
happen in the task that entered the reservation or in a task it spawned afterwards (as
in the worker, whose runners enter their next reservations themselves, and
:func:`turret.testing.call_once`). A call made without a reservation
is treated like a shed one: one non-waiting try.
"""

from __future__ import annotations

import contextvars
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

import attrs
import trio

from ..core._errors import TurretError
from ..core._nowait import enter_nowait
from ..core._service import Service

__all__ = ["LoadShed", "LoadShedLayer", "LoadShedStatistics", "Overloaded"]

Req = TypeVar("Req")
Res = TypeVar("Res")


class Overloaded(TurretError):
    """A :class:`LoadShedLayer` rejected a call: the inner service was not ready.

    Example::

        except turret.layers.Overloaded:
            metrics.shed.inc()
    """


@attrs.frozen
class LoadShedStatistics:
    """Snapshot of a :class:`LoadShed`: calls passed through and calls shed."""

    passed: int
    shed: int


_SHED = object()


class _Reservation:
    __slots__ = ("held", "owner")

    def __init__(self, owner: LoadShed[Any, Any]) -> None:
        self.owner = owner
        self.held: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> None:
        owner = self.owner
        held = await enter_nowait(owner.inner)
        if held is None:
            await owner.shed_gate.acquire()
            try:
                held = await enter_nowait(owner.inner)  # it may have freed up meanwhile
            except BaseException:
                owner.shed_gate.release()
                raise
            if held is not None:
                owner.shed_gate.release()
        self.held = held
        owner.var.set(held if held is not None else _SHED)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        owner = self.owner
        # Not var.reset(): a worker enters the reservation in its loop task and exits it
        # in the task it spawned (which inherited a copy of the context).
        owner.var.set(None)
        if self.held is None:
            owner.shed_gate.release()
        else:
            await self.held.__aexit__(exc_type, exc, tb)


class LoadShed(Service[Req, Res]):
    """The service :class:`LoadShedLayer` builds: never waits, raises :class:`Overloaded`."""

    def __init__(self, inner: Service[Req, Res]) -> None:
        self.inner = inner
        self.var: contextvars.ContextVar[object] = contextvars.ContextVar(
            f"turret_load_shed_{id(self):x}", default=None
        )
        self.shed_gate = trio.Semaphore(1)
        self.passed = 0
        self.shed = 0

    def ready(self) -> AbstractAsyncContextManager[None]:
        return _Reservation(self)

    async def __call__(self, req: Req, /) -> Res:
        if self.var.get() is None:  # called outside a reservation: one non-waiting try
            state: object = _SHED
        else:
            state = self.var.get()
        if state is _SHED:
            # Shed at reservation time: one more non-waiting try before giving up.
            held = await enter_nowait(self.inner)
            if held is None:
                self.shed += 1
                raise Overloaded("the service is not ready; the call was shed")
            self.passed += 1
            async with held:
                return await self.inner(req)
        self.passed += 1
        return await self.inner(req)

    def statistics(self) -> LoadShedStatistics:
        """How many calls went through and how many were shed."""
        return LoadShedStatistics(passed=self.passed, shed=self.shed)


@attrs.frozen
class LoadShedLayer(Generic[Req, Res]):
    """Raise :class:`Overloaded` instead of waiting when the inner service is not ready.

    Changes backpressure (see the module docs): ``ready()`` does not wait for the inner
    service; at most one shed reservation is outstanding at a time.

    Example::

        svc = (
            ServiceBuilder()
            .layer(LoadShedLayer())
            .layer(ConcurrencyLimitLayer(10))
            .service(handler)
        )
        # with 10 calls running, the 11th raises Overloaded at once
    """

    def layer(self, inner: Service[Req, Res], /) -> LoadShed[Req, Res]:
        return LoadShed(inner)
