"""Circuit breaker: stop calling a failing downstream for a while, then try again.

- **closed**: calls go through; ``failure_threshold`` failures in a row open it.
- **open**: not ready. ``ready()`` waits until ``recovery_time`` has passed since it
  opened, so a worker stops claiming while the downstream is failing.
- **half-open**: up to ``half_open_max`` reservations at once are let through as
  trials; other reservations wait. A successful call closes the breaker; a failed one
  opens it again for another ``recovery_time``.

A reservation re-checks the breaker after the inner service granted its own, so one
waiting on an inner limit when the breaker opens does not go through. A call made
while the breaker is open (its reservation was complete before the breaker opened, e.g.
a worker was already claiming) fails with :class:`CircuitOpen` without reaching the
inner service; inside a worker that is a task failure, retried later by the backend.

Failures are ``Exception``\\ s other than turret's control flow (``Retry``, ``Abort``,
``InvalidPayload``), narrowed by ``is_failure`` if given. All time comes from
``trio.current_time()``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar

import attrs
import trio

from ..core._errors import Abort, InvalidPayload, Retry, TurretError
from ..core._nowait import nowait_reservation
from ..core._service import Service

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerLayer",
    "CircuitBreakerStatistics",
    "CircuitOpen",
]

Req = TypeVar("Req")
Res = TypeVar("Res")

_NOT_FAILURES = (Retry, Abort, InvalidPayload)


class BreakerState(enum.Enum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN


class CircuitOpen(TurretError):
    """A call reached an open :class:`CircuitBreaker` and was not made.

    Example::

        except turret.layers.CircuitOpen as exc:
            print(f"downstream failing; retry in {exc.retry_in:.1f}s")
    """

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"circuit open after repeated failures; next trial in {retry_in:.3g}s")
        self.retry_in = retry_in


@attrs.frozen
class CircuitBreakerStatistics:
    """Snapshot of a :class:`CircuitBreaker`."""

    state: BreakerState
    consecutive_failures: int
    trials_in_flight: int
    opened: int
    rejected: int
    waiting: int


class _Reservation:
    __slots__ = ("inner", "owner", "trial")

    def __init__(
        self, owner: CircuitBreaker[Any, Any], inner: AbstractAsyncContextManager[None]
    ) -> None:
        self.owner = owner
        self.inner = inner
        self.trial = -1  # the breaker's generation when admitted as a trial, else -1

    async def __aenter__(self) -> None:
        owner = self.owner
        while True:
            if owner.state is not _CLOSED:  # the common case: one comparison
                self.trial = await owner._admit()
            try:
                await self.inner.__aenter__()
            except BaseException:
                if self.trial >= 0:
                    owner._trial_done(self.trial)
                raise
            trial = self.trial
            if (trial < 0 and owner.state is _CLOSED) or trial == owner.generation:
                return
            # The breaker changed while we waited for the inner service (it opened, or our
            # trial's episode ended): give the inner reservation back and start over.
            self.trial = -1
            try:
                await self.inner.__aexit__(None, None, None)
            finally:
                if trial >= 0:
                    owner._trial_done(trial)
            self.inner = owner.inner.ready()

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Coroutine[Any, Any, bool | None]:
        # No coroutine of its own: end the trial (waiters woken by it run only after this
        # task's next checkpoint), then return the inner reservation's exit to await.
        if self.trial >= 0:
            self.owner._trial_done(self.trial)
        return self.inner.__aexit__(exc_type, exc, tb)


class _ReservationNowait(_Reservation):
    __slots__ = ()

    async def __aenter__(self) -> None:
        owner = self.owner
        if owner.state is not _CLOSED:
            self.trial = owner._admit_nowait()
        try:
            await self.inner.__aenter__()
        except BaseException:
            if self.trial >= 0:
                owner._trial_done(self.trial)
            raise


class CircuitBreaker(Service[Req, Res]):
    """The service :class:`CircuitBreakerLayer` builds. Not ready while open."""

    def __init__(
        self,
        inner: Service[Req, Res],
        *,
        failure_threshold: int,
        recovery_time: float,
        half_open_max: int,
        is_failure: Callable[[Exception], bool] | None,
    ) -> None:
        self.inner = inner
        self.failure_threshold = failure_threshold
        self.recovery_time = recovery_time
        self.half_open_max = half_open_max
        self.is_failure = is_failure
        self.state = _CLOSED
        self.failures = 0
        self.reopen_at = -math.inf
        self.trials = 0
        self.opened = 0
        self.rejected = 0
        self.waiting = 0
        self.generation = 0
        self._changed = trio.Event()

    # --- readiness ----------------------------------------------------------------

    def ready(self) -> AbstractAsyncContextManager[None]:
        return _Reservation(self, self.inner.ready())

    def ready_nowait(self) -> AbstractAsyncContextManager[None]:
        """Like ``ready()``, but entering raises ``trio.WouldBlock`` instead of waiting."""
        return _ReservationNowait(self, nowait_reservation(self.inner))

    def _poll(self) -> None:
        if self.state is _OPEN and trio.current_time() >= self.reopen_at:
            self._set(_HALF_OPEN)

    def _admit_nowait(self) -> int:
        """The generation if admitted as a trial, -1 when closed; WouldBlock otherwise."""
        self._poll()
        if self.state is _CLOSED:
            return -1
        if self.state is _HALF_OPEN and self.trials < self.half_open_max:
            self.trials += 1
            return self.generation
        raise trio.WouldBlock

    async def _admit(self) -> int:
        self.waiting += 1
        try:
            while True:
                try:
                    return self._admit_nowait()
                except trio.WouldBlock:
                    pass
                changed = self._changed
                if self.state is _OPEN:
                    with trio.move_on_at(self.reopen_at):
                        await changed.wait()
                else:
                    await changed.wait()
        finally:
            self.waiting -= 1

    def _trial_done(self, generation: int) -> None:
        if generation == self.generation and self.trials > 0:
            self.trials -= 1
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _set(self, state: BreakerState) -> None:
        self.state = state
        self.generation += 1
        if state is _OPEN:
            self.opened += 1
            self.reopen_at = trio.current_time() + self.recovery_time
            self.trials = 0
        elif state is _CLOSED:
            self.failures = 0
            self.trials = 0
        self._notify()

    # --- calls --------------------------------------------------------------------

    async def __call__(self, req: Req, /) -> Res:
        if self.state is _OPEN:
            self._poll()
            if self.state is _OPEN:
                self.rejected += 1
                raise CircuitOpen(self.reopen_at - trio.current_time())
        try:
            result = await self.inner(req)
        except _NOT_FAILURES:
            raise
        except Exception as exc:
            if self.is_failure is None or self.is_failure(exc):
                self._failure()
            raise
        if self.state is not _CLOSED or self.failures:
            self._success()
        return result

    def _failure(self) -> None:
        if self.state is _HALF_OPEN:
            self._set(_OPEN)
            return
        self.failures += 1
        if self.state is _CLOSED and self.failures >= self.failure_threshold:
            self._set(_OPEN)

    def _success(self) -> None:
        if self.state is _HALF_OPEN:
            self._set(_CLOSED)
        elif self.state is _CLOSED:
            self.failures = 0

    def statistics(self) -> CircuitBreakerStatistics:
        """The state (open turns half-open once recovery_time passed) and counters."""
        self._poll()
        return CircuitBreakerStatistics(
            state=self.state,
            consecutive_failures=self.failures,
            trials_in_flight=self.trials,
            opened=self.opened,
            rejected=self.rejected,
            waiting=self.waiting,
        )


def _positive_int(name: str) -> Callable[[Any, attrs.Attribute[int], int], None]:
    def check(_inst: Any, _attr: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"CircuitBreakerLayer({name}=): must be an int >= 1, got {value!r}")

    return check


@attrs.frozen
class CircuitBreakerLayer(Generic[Req, Res]):
    """Open after ``failure_threshold`` failures in a row; stay not-ready while open.

    After ``recovery_time`` seconds, ``half_open_max`` trial calls may go at once; a
    success closes the breaker, a failure opens it again. Each service it wraps (each
    worker) has its own breaker. ``is_failure`` narrows which errors count.

    Example::

        worker = (
            WorkerBuilder("pay").backend(backend)
            .layer(CircuitBreakerLayer(failure_threshold=5, recovery_time=30))
            .build(charge)
        )
    """

    failure_threshold: int = attrs.field(default=5, validator=_positive_int("failure_threshold"))
    recovery_time: float = attrs.field(default=30.0)
    half_open_max: int = attrs.field(default=1, validator=_positive_int("half_open_max"))
    is_failure: Callable[[Exception], bool] | None = None

    @recovery_time.validator
    def _check_recovery(self, _attr: attrs.Attribute[float], value: float) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not (ok and 0 < value < math.inf):
            raise ValueError(
                f"CircuitBreakerLayer(recovery_time=): must be > 0 seconds, got {value!r}"
            )

    def layer(self, inner: Service[Req, Res], /) -> CircuitBreaker[Req, Res]:
        return CircuitBreaker(
            inner,
            failure_threshold=self.failure_threshold,
            recovery_time=float(self.recovery_time),
            half_open_max=self.half_open_max,
            is_failure=self.is_failure,
        )
