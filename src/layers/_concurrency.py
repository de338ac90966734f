"""Concurrency limit: at most ``n`` calls at once, expressed through readiness."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Generic, TypeVar

import attrs
import trio

from ..core._service import Service

__all__ = ["ConcurrencyLimit", "ConcurrencyLimitLayer", "ConcurrencyLimitStatistics"]

Req = TypeVar("Req")
Res = TypeVar("Res")


@attrs.frozen
class ConcurrencyLimitStatistics:
    """Snapshot of a :class:`ConcurrencyLimit`: the limit, slots in use, waiters."""

    limit: int
    in_use: int
    waiting: int


class _Permit:
    __slots__ = ("limiter", "token")

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self.limiter = limiter
        self.token = object()  # a fresh borrower: two limits in one stack never clash

    async def __aenter__(self) -> None:
        await self.limiter.acquire_on_behalf_of(self.token)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.limiter.release_on_behalf_of(self.token)


class _Chained:
    """Enter ``first``, then ``second``; exit in reverse; release ``first`` if ``second`` fails."""

    __slots__ = ("first", "second")

    def __init__(
        self, first: AbstractAsyncContextManager[None], second: AbstractAsyncContextManager[None]
    ) -> None:
        self.first = first
        self.second = second

    async def __aenter__(self) -> None:
        await self.first.__aenter__()
        try:
            await self.second.__aenter__()
        except BaseException as exc:
            await self.first.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.second.__aexit__(exc_type, exc, tb)
        finally:
            await self.first.__aexit__(exc_type, exc, tb)


class ConcurrencyLimit(Service[Req, Res]):
    """The service :class:`ConcurrencyLimitLayer` builds. Ready when a slot is free."""

    def __init__(self, inner: Service[Req, Res], limiter: trio.CapacityLimiter) -> None:
        self.inner = inner
        self.limiter = limiter

    def ready(self) -> AbstractAsyncContextManager[None]:
        return _Chained(_Permit(self.limiter), self.inner.ready())

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
    claim tasks: the limit is backpressure, not a queue in memory.

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
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"ConcurrencyLimitLayer(n): n must be an int >= 1, got {value!r}")

    def layer(self, inner: Service[Req, Res], /) -> ConcurrencyLimit[Req, Res]:
        return ConcurrencyLimit(inner, trio.CapacityLimiter(self.n))
