"""Rate limit: at most ``rate`` calls per ``per`` seconds, with bursts of ``burst``.

A token bucket, kept as the generic cell rate algorithm (GCRA): the bucket is one
number, the *theoretical arrival time* of the next call. A reservation takes the next
slot of the schedule and waits until its time comes, so waiters are served in order and
never spin. The wait happens in ``ready()``: a worker out of tokens does not claim.
All time comes from ``trio.current_time()``.
"""

from __future__ import annotations

import math
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

import attrs
import trio

from ..core._nowait import nowait_reservation
from ..core._service import Service

__all__ = ["RateLimit", "RateLimitLayer", "RateLimitStatistics"]

Req = TypeVar("Req")
Res = TypeVar("Res")


@attrs.frozen
class RateLimitStatistics:
    """Snapshot of a :class:`RateLimit`.

    ``tokens`` is how many calls could be reserved right now without waiting (up to
    ``burst``); ``waiting`` counts reservations waiting for their slot.
    """

    rate: float
    per: float
    burst: int
    tokens: float
    waiting: int
    granted: int


class _Slot:
    """Enter the inner reservation, then wait for this call's slot of the schedule."""

    __slots__ = ("inner", "owner")

    def __init__(
        self, owner: RateLimit[Any, Any], inner: AbstractAsyncContextManager[None]
    ) -> None:
        self.owner = owner
        self.inner = inner

    async def __aenter__(self) -> None:
        await self.inner.__aenter__()
        owner = self.owner
        # Fast path inline (no extra coroutine): a token is available now.
        now = trio.current_time()
        tat = owner._tat
        if tat <= now:
            owner._tat = now + owner.interval
            owner.granted += 1
            return
        try:
            await owner._take()
        except BaseException as exc:
            await self.inner.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Coroutine[Any, Any, bool | None]:
        # A token is spent, nothing to give back: the inner reservation's exit is ours,
        # returned for the caller to await (no coroutine frame of our own).
        return self.inner.__aexit__(exc_type, exc, tb)


class _SlotNowait(_Slot):
    __slots__ = ()

    async def __aenter__(self) -> None:
        await self.inner.__aenter__()
        try:
            self.owner._take_nowait()
        except BaseException as exc:
            await self.inner.__aexit__(type(exc), exc, exc.__traceback__)
            raise


class RateLimit(Service[Req, Res]):
    """The service :class:`RateLimitLayer` builds. Ready when the bucket has a token.

    ``ready()`` first takes the inner reservation, then waits for a token, so the claim
    that follows happens at the limited rate.
    """

    __slots__ = (
        "_tat",
        "burst",
        "granted",
        "inner",
        "interval",
        "per",
        "rate",
        "tolerance",
        "waiting",
    )

    def __init__(self, inner: Service[Req, Res], rate: float, per: float, burst: int) -> None:
        self.inner = inner
        self.rate = rate
        self.per = per
        self.burst = burst
        self.interval = per / rate  # seconds between calls at the steady rate
        self.tolerance = (burst - 1) * self.interval  # how far ahead a burst may run
        self._tat = -math.inf  # theoretical arrival time of the next call
        self.waiting = 0
        self.granted = 0

    def ready(self) -> AbstractAsyncContextManager[None]:
        return _Slot(self, self.inner.ready())

    def ready_nowait(self) -> AbstractAsyncContextManager[None]:
        """Like ``ready()``, but entering raises ``trio.WouldBlock`` instead of waiting."""
        return _SlotNowait(self, nowait_reservation(self.inner))

    def __call__(self, req: Req, /) -> Coroutine[Any, Any, Res]:
        # The limit is all in ready(): the call is the inner service's own coroutine.
        return self.inner(req)

    def _take_nowait(self) -> None:
        now = trio.current_time()
        tat = self._tat if self._tat > now else now
        if tat - self.tolerance > now:
            raise trio.WouldBlock
        self._tat = tat + self.interval
        self.granted += 1

    async def _take(self) -> None:
        now = trio.current_time()
        tat = self._tat if self._tat > now else now
        at = tat - self.tolerance
        mine = tat + self.interval
        self._tat = mine  # reserve our place in the schedule before waiting
        if at <= now:
            self.granted += 1  # no checkpoint: granted at once, like ALWAYS_READY
            return
        self.waiting += 1
        try:
            await trio.sleep_until(at)
        except BaseException:
            if self._tat == mine:  # nobody queued behind us: give the slot back
                self._tat = tat
            raise
        finally:
            self.waiting -= 1
        self.granted += 1

    def statistics(self) -> RateLimitStatistics:
        """Tokens available now, waiters, and calls granted so far."""
        now = trio.current_time()
        ahead = max(0.0, self._tat - now)  # how much of the schedule is already booked
        tokens = max(
            0.0, min(float(self.burst), (self.tolerance + self.interval - ahead) / self.interval)
        )
        return RateLimitStatistics(
            rate=self.rate,
            per=self.per,
            burst=self.burst,
            tokens=tokens,
            waiting=self.waiting,
            granted=self.granted,
        )


@attrs.frozen
class RateLimitLayer(Generic[Req, Res]):
    """At most ``rate`` calls per ``per`` seconds, through readiness (token bucket).

    ``burst`` calls may go at once after a quiet spell (the bucket's size); the steady
    rate stays ``rate / per``. Each service it wraps (each worker) has its own bucket.
    A worker out of tokens does not claim tasks: ``ready()`` waits for the next token.

    Example::

        worker = (
            WorkerBuilder("sms").backend(backend)
            .layer(RateLimitLayer(5, per=1.0, burst=5))   # the provider allows 5/s
            .build(send_sms)
        )
    """

    rate: float = attrs.field()
    per: float = attrs.field(default=1.0, kw_only=True)
    burst: int = attrs.field(default=1, kw_only=True)

    @rate.validator
    def _check_rate(self, _attr: attrs.Attribute[float], value: float) -> None:
        if not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ValueError(f"RateLimitLayer(rate): rate must be a number > 0, got {value!r}")

    @per.validator
    def _check_per(self, _attr: attrs.Attribute[float], value: float) -> None:
        if not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ValueError(f"RateLimitLayer(per=): per must be > 0 seconds, got {value!r}")

    @burst.validator
    def _check_burst(self, _attr: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"RateLimitLayer(burst=): burst must be an int >= 1, got {value!r}")

    def layer(self, inner: Service[Req, Res], /) -> RateLimit[Req, Res]:
        return RateLimit(inner, float(self.rate), float(self.per), self.burst)
