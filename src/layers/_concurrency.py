"""Concurrency limits: at most ``n`` calls at once, expressed through readiness.

:class:`ConcurrencyLimitLayer` gives every service it wraps (every worker built with it)
its own limit. :class:`GlobalConcurrencyLimitLayer` shares one ``trio.CapacityLimiter``
across everything it wraps: one limit across several workers.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Generic, TypeVar

import attrs
import trio

from ..core._service import Service
from ._nowait import nowait_reservation

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
    """One slot of ``limiter`` (the permit itself is the borrower), then the inner one."""

    __slots__ = ("inner", "limiter")

    def __init__(
        self, limiter: trio.CapacityLimiter, inner: AbstractAsyncContextManager[None]
    ) -> None:
        self.limiter = limiter
        self.inner = inner

    async def __aenter__(self) -> None:
        try:
            # A free slot is taken without a schedule point (acquire_on_behalf_of always
            # yields to the scheduler, which would double the layer's cost).
            self.limiter.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            await self.limiter.acquire_on_behalf_of(self)
        try:
            await self.inner.__aenter__()
        except BaseException:
            self.limiter.release_on_behalf_of(self)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.inner.__aexit__(exc_type, exc, tb)
        finally:
            self.limiter.release_on_behalf_of(self)


class _PermitNowait(_Permit):
    """``ready_nowait``: a slot now or ``trio.WouldBlock``, then the inner one likewise."""

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

    ``ready()`` takes a slot, then the inner service's reservation; both are released
    when the reservation exits (also on cancellation).
    """

    __slots__ = ("inner", "limiter")

    def __init__(self, inner: Service[Req, Res], limiter: trio.CapacityLimiter) -> None:
        self.inner = inner
        self.limiter = limiter

    def ready(self) -> AbstractAsyncContextManager[None]:
        return _Permit(self.limiter, self.inner.ready())

    def ready_nowait(self) -> AbstractAsyncContextManager[None]:
        """Like ``ready()``, but entering raises ``trio.WouldBlock`` instead of waiting."""
        return _PermitNowait(self.limiter, nowait_reservation(self.inner))

    async def __call__(self, req: Req, /) -> Res:
        return await self.inner(req)

    def statistics(self) -> ConcurrencyLimitStatistics:
        """How many slots are in use and how many reservations wait."""
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
        return ConcurrencyLimit(inner, trio.CapacityLimiter(self.n))


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
