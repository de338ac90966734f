"""Concurrency limits: at most ``n`` calls at once, expressed through readiness.

:class:`ConcurrencyLimitLayer` gives every service it wraps (every worker built with it)
its own limit. :class:`GlobalConcurrencyLimitLayer` shares one ``trio.CapacityLimiter``
across everything it wraps: one limit across several workers.
"""

from __future__ import annotations

from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

import attrs
import trio

from ..core._nowait import nowait_reservation
from ..core._permits import Permits
from ..core._service import Service

__all__ = [
    "ConcurrencyLimit",
    "ConcurrencyLimitLayer",
    "ConcurrencyLimitStatistics",
    "GlobalConcurrencyLimitLayer",
]

Req = TypeVar("Req")
Res = TypeVar("Res")


@attrs.frozen
class ConcurrencyLimitStatistics:
    """Snapshot of a :class:`ConcurrencyLimit`: the limit, slots in use, waiters."""

    limit: int
    in_use: int
    waiting: int


class _Permit:
    """One of the service's own permits, then the inner reservation."""

    __slots__ = ("inner", "slots")

    def __init__(self, slots: Permits, inner: AbstractAsyncContextManager[None]) -> None:
        self.slots = slots
        self.inner = inner

    async def __aenter__(self) -> None:
        slots = self.slots
        if not slots.take():  # no schedule point when a permit is free (nobody waits then)
            await slots.lot.park()  # woken holding the permit a release handed over
        try:
            await self.inner.__aenter__()
        except BaseException:
            slots.release()
            raise

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Coroutine[Any, Any, bool | None]:
        # No coroutine of its own: give the permit back (a waiter woken by it runs only
        # after this task's next checkpoint), then hand back the inner reservation's exit
        # for the caller to await.
        self.slots.release()
        return self.inner.__aexit__(exc_type, exc, tb)


class _PermitNowait(_Permit):
    """``ready_nowait``: a permit now or ``trio.WouldBlock``, then the inner one likewise."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        slots = self.slots
        if not slots.take():
            raise trio.WouldBlock
        try:
            await self.inner.__aenter__()
        except BaseException:
            slots.release()
            raise


class _Borrow:
    """One token of a shared ``limiter`` (the reservation itself is the borrower), then
    the inner reservation."""

    __slots__ = ("inner", "limiter")

    def __init__(
        self, limiter: trio.CapacityLimiter, inner: AbstractAsyncContextManager[None]
    ) -> None:
        self.limiter = limiter
        self.inner = inner

    async def __aenter__(self) -> None:
        try:
            # A free token is taken without a schedule point (acquire_on_behalf_of always
            # yields to the scheduler, which would double the layer's cost).
            self.limiter.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            await self.limiter.acquire_on_behalf_of(self)
        try:
            await self.inner.__aenter__()
        except BaseException:
            self.limiter.release_on_behalf_of(self)
            raise

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Coroutine[Any, Any, bool | None]:
        self.limiter.release_on_behalf_of(self)
        return self.inner.__aexit__(exc_type, exc, tb)


class _BorrowNowait(_Borrow):
    """``ready_nowait``: a token now or ``trio.WouldBlock``, then the inner one likewise."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        self.limiter.acquire_on_behalf_of_nowait(self)
        try:
            await self.inner.__aenter__()
        except BaseException:
            self.limiter.release_on_behalf_of(self)
            raise


class ConcurrencyLimit(Service[Req, Res]):
    """The service the concurrency layers build. Ready when a slot is free.

    ``limit`` is an int for a limit of this service's own (what
    :class:`ConcurrencyLimitLayer` passes), or a ``trio.CapacityLimiter`` shared with
    other services (:class:`GlobalConcurrencyLimitLayer`); ``limiter`` is that limiter,
    or ``None``. ``ready()`` takes a slot, then the inner service's reservation; both are
    released when the reservation exits (also on cancellation). Waiters are served
    first come, first served.

    Example::

        svc = ConcurrencyLimit(inner, 2)
        async with svc.ready():
            await svc(req)
    """

    __slots__ = ("_slots", "inner", "limiter")

    def __init__(self, inner: Service[Req, Res], limit: int | trio.CapacityLimiter) -> None:
        self.inner = inner
        self.limiter: trio.CapacityLimiter | None
        self._slots: Permits | None
        if isinstance(limit, trio.CapacityLimiter):
            self.limiter, self._slots = limit, None
        else:
            self.limiter, self._slots = None, Permits(limit)

    def ready(self) -> AbstractAsyncContextManager[None]:
        slots = self._slots
        if slots is not None:
            return _Permit(slots, self.inner.ready())
        assert self.limiter is not None
        return _Borrow(self.limiter, self.inner.ready())

    def ready_nowait(self) -> AbstractAsyncContextManager[None]:
        """Like ``ready()``, but entering raises ``trio.WouldBlock`` instead of waiting."""
        slots = self._slots
        if slots is not None:
            return _PermitNowait(slots, nowait_reservation(self.inner))
        assert self.limiter is not None
        return _BorrowNowait(self.limiter, nowait_reservation(self.inner))

    def __call__(self, req: Req, /) -> Coroutine[Any, Any, Res]:
        # The limit is all in ready(): the call is the inner service's own coroutine.
        return self.inner(req)

    def statistics(self) -> ConcurrencyLimitStatistics:
        """How many slots are in use and how many reservations wait."""
        slots = self._slots
        if slots is not None:
            return ConcurrencyLimitStatistics(
                limit=slots.total, in_use=slots.in_use, waiting=len(slots.lot)
            )
        assert self.limiter is not None
        s = self.limiter.statistics()
        return ConcurrencyLimitStatistics(
            limit=int(s.total_tokens), in_use=s.borrowed_tokens, waiting=s.tasks_waiting
        )


@attrs.frozen
class ConcurrencyLimitLayer(Generic[Req, Res]):
    """At most ``n`` calls in flight through this layer, per service it wraps.

    The slot is taken in ``ready()``, so a worker whose slots are all taken does not
    claim tasks: the limit is backpressure, not a queue in memory. Each worker built
    with this layer gets its own ``n`` slots; see :class:`GlobalConcurrencyLimitLayer`
    for one limit shared by several workers.

    Example::

        worker = (
            WorkerBuilder("api").backend(backend).concurrency(100)
            .layer(ConcurrencyLimitLayer(5))   # the API allows 5 calls at once
            .build(call_api)
        )
    """

    n: int = attrs.field()

    @n.validator
    def _check(self, _attr: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ConcurrencyLimitLayer(n): n must be an int >= 1, got {value!r}")

    def layer(self, inner: Service[Req, Res], /) -> ConcurrencyLimit[Req, Res]:
        return ConcurrencyLimit(inner, self.n)


def _to_limiter(value: trio.CapacityLimiter | int) -> trio.CapacityLimiter:
    if isinstance(value, trio.CapacityLimiter):
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            "GlobalConcurrencyLimitLayer(limiter): pass a trio.CapacityLimiter or an int >= 1, "
            f"got {value!r}"
        )
    return trio.CapacityLimiter(value)


@attrs.frozen
class GlobalConcurrencyLimitLayer(Generic[Req, Res]):
    """At most ``limiter.total_tokens`` calls in flight across *every* service it wraps.

    Pass an int to make one ``trio.CapacityLimiter`` owned by this layer object, or a
    limiter to share it with other code. Build several workers with the same layer
    object and they share the limit (readiness: a worker claims only when a slot of
    the shared limiter is free).

    Example::

        db = GlobalConcurrencyLimitLayer(4)      # 4 database calls, all workers together
        a = WorkerBuilder("a").backend(backend).queue("a").layer(db).build(job_a)
        b = WorkerBuilder("b").backend(backend).queue("b").layer(db).build(job_b)
    """

    limiter: trio.CapacityLimiter = attrs.field(converter=_to_limiter)

    def layer(self, inner: Service[Req, Res], /) -> ConcurrencyLimit[Req, Res]:
        return ConcurrencyLimit(inner, self.limiter)
