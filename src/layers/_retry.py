"""In-process retries: call the inner service again after a backoff, within one lease.

Inside a worker, the backend's acknowledgement is the outermost service, so a
:class:`RetryLayer` retries *inside one stored attempt*: the task stays claimed (the
heartbeat keeps its lease), and only the last error reaches the backend, which then
applies the durable retry (``run_at`` + backoff) or dead-letters the task.

The layer never retries turret's control flow: :class:`~turret.Retry` (the handler
asked for a durable retry), :class:`~turret.Abort` (and so ``Rejected``) and
:class:`~turret.InvalidPayload` pass straight through, as do ``trio.Cancelled`` and
other ``BaseException``\\ s. It stops retrying as soon as the worker running it is
stopping (:func:`turret.current_worker`), also during a backoff sleep, and lets the
durable retry take over.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

import attrs
import trio

from ..core._backoff import Backoff, ExponentialBackoff
from ..core._context import current_worker
from ..core._errors import Abort, InvalidPayload, Retry
from ..core._service import Service

__all__ = [
    "RetryBudget",
    "RetryLayer",
    "RetryPolicy",
    "RetryService",
    "RetryStatistics",
]

Req = TypeVar("Req")
Res = TypeVar("Res")

_NEVER_RETRIED = (Retry, Abort, InvalidPayload)
_BUCKETS = 10


def _positive_number(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0) and value < math.inf
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@attrs.frozen
class RetryBudget:
    """How many retries a service may make, relative to its first attempts.

    Over a sliding window of ``ttl`` seconds, retries are allowed while
    ``retries <= min_per_second * ttl + ratio * first_attempts``: with ``ratio=0.2``, at
    most one retry per five calls, plus a small reserve so a quiet service can still
    retry. This stops retry storms: when everything fails, the load the layer adds is
    bounded (tower's ``TpsBudget``, finagle's ``RetryBudget``).

    Example::

        RetryPolicy(max_attempts=5, budget=RetryBudget(ratio=0.1, min_per_second=1))
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float = 10.0

    def __attrs_post_init__(self) -> None:
        _positive_number("RetryBudget(ratio=)", self.ratio, allow_zero=True)
        _positive_number("RetryBudget(min_per_second=)", self.min_per_second, allow_zero=True)
        _positive_number("RetryBudget(ttl=)", self.ttl)


class _BudgetState:
    """Deposits and withdrawals in ``_BUCKETS`` time buckets covering ``ttl``."""

    __slots__ = ("config", "deposits", "ids", "reserve", "width", "withdrawals")

    def __init__(self, config: RetryBudget) -> None:
        self.config = config
        self.width = config.ttl / _BUCKETS
        self.reserve = config.min_per_second * config.ttl
        self.ids = [-1] * _BUCKETS
        self.deposits = [0] * _BUCKETS
        self.withdrawals = [0] * _BUCKETS

    def _bucket(self) -> tuple[int, int]:
        idx = int(trio.current_time() // self.width)
        slot = idx % _BUCKETS
        if self.ids[slot] != idx:
            self.ids[slot] = idx
            self.deposits[slot] = 0
            self.withdrawals[slot] = 0
        return idx, slot

    def deposit(self) -> None:
        _, slot = self._bucket()
        self.deposits[slot] += 1

    def _window(self, idx: int) -> tuple[int, int]:
        low = idx - _BUCKETS
        deposits = withdrawals = 0
        for i in range(_BUCKETS):
            if self.ids[i] > low:
                deposits += self.deposits[i]
                withdrawals += self.withdrawals[i]
        return deposits, withdrawals

    def balance(self) -> float:
        idx, _ = self._bucket()
        deposits, withdrawals = self._window(idx)
        return self.reserve + self.config.ratio * deposits - withdrawals

    def withdraw(self) -> bool:
        idx, slot = self._bucket()
        deposits, withdrawals = self._window(idx)
        if withdrawals + 1 > self.reserve + self.config.ratio * deposits:
            return False
        self.withdrawals[slot] += 1
        return True


def _default_backoff() -> Backoff:
    return ExponentialBackoff(base=0.1, factor=2.0, max=10.0)


@attrs.frozen
class RetryPolicy:
    """When and how often a :class:`RetryLayer` retries.

    - ``max_attempts``: calls in total, the first included (1 disables retrying).
    - ``backoff``: the delay before retry *n* is ``backoff.delay(n)`` (any
      :class:`~turret.Backoff`: constant, linear, exponential, with jitter).
    - ``budget``: an optional :class:`RetryBudget` shared by all calls of one service.
    - ``predicate``: retry only errors for which it returns True (set it with
      :meth:`retry_if`); turret's control flow is never retried whatever it says.

    Example::

        policy = RetryPolicy(
            max_attempts=4,
            backoff=ExponentialBackoff(base=0.2, max=5, jitter=Jitter.DECORRELATED),
            budget=RetryBudget(ratio=0.2),
        ).retry_if(lambda exc: isinstance(exc, ConnectionError))
    """

    max_attempts: int = attrs.field(default=3)
    backoff: Backoff = attrs.field(factory=_default_backoff)
    budget: RetryBudget | None = None
    predicate: Callable[[Exception], bool] | None = None

    @max_attempts.validator
    def _check(self, _attr: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"RetryPolicy(max_attempts): must be an int >= 1 (the first call included), "
                f"got {value!r}"
            )

    def retry_if(self, predicate: Callable[[Exception], bool]) -> RetryPolicy:
        """A copy that retries only errors for which ``predicate(error)`` is true."""
        return attrs.evolve(self, predicate=predicate)


@attrs.frozen
class RetryStatistics:
    """Snapshot of a :class:`RetryService`.

    ``calls`` counts first attempts, ``retries`` the extra calls; ``gave_up`` counts
    errors re-raised while a retry was otherwise possible, because the budget was
    exhausted (``budget_exhausted``) or the worker was stopping.
    """

    calls: int
    retries: int
    succeeded_after_retry: int
    budget_exhausted: int
    gave_up: int
    budget_balance: float | None


class RetryService(Service[Req, Res]):
    """The service :class:`RetryLayer` builds. Forwards ``ready()``.

    The worker enters ``ready()`` once per task; every retry runs under that same
    reservation (a layer never re-enters readiness inside a call).
    """

    __slots__ = (
        "_budget",
        "backoff",
        "budget_exhausted",
        "calls",
        "gave_up",
        "inner",
        "max_attempts",
        "predicate",
        "ready",
        "retries",
        "succeeded_after_retry",
    )
    forwards_ready = True  # ready() is inner.ready(), unchanged

    #: The inner service's ``ready``, bound once: readiness is forwarded untouched and
    #: ``ready()`` costs no call of its own.
    ready: Callable[[], AbstractAsyncContextManager[None]]

    def __init__(self, inner: Service[Req, Res], policy: RetryPolicy) -> None:
        self.inner = inner
        self.ready = inner.ready
        self.max_attempts = policy.max_attempts
        self.backoff = policy.backoff
        self.predicate = policy.predicate
        self._budget = _BudgetState(policy.budget) if policy.budget is not None else None
        self.calls = 0
        self.retries = 0
        self.succeeded_after_retry = 0
        self.budget_exhausted = 0
        self.gave_up = 0

    async def __call__(self, req: Req, /) -> Res:
        self.calls += 1
        budget = self._budget
        if budget is not None:
            budget.deposit()
        attempt = 1
        while True:
            try:
                result = await self.inner(req)
            except _NEVER_RETRIED:
                raise
            except Exception as exc:
                if attempt >= self.max_attempts:
                    raise
                if self.predicate is not None and not self.predicate(exc):
                    raise
                if not await self._may_retry(exc, attempt):
                    raise
                attempt += 1
                self.retries += 1
                continue
            if attempt > 1:
                self.succeeded_after_retry += 1
            return result

    async def _may_retry(self, exc: Exception, attempt: int) -> bool:
        worker = current_worker()
        if worker is not None and worker.stopping:
            self.gave_up += 1
            exc.add_note("turret.RetryLayer: not retried, the worker is stopping")
            return False
        budget = self._budget
        if budget is not None and not budget.withdraw():
            self.budget_exhausted += 1
            self.gave_up += 1
            exc.add_note(f"turret.RetryLayer: retry budget exhausted after attempt {attempt}")
            return False
        delay = self.backoff.delay(attempt)
        if worker is None:
            await trio.sleep(delay)
            return True
        with trio.move_on_after(delay):
            await worker.wait_stop_requested()  # wake early if the worker stops
            self.gave_up += 1
            exc.add_note("turret.RetryLayer: not retried, the worker began stopping")
            return False
        return True

    def statistics(self) -> RetryStatistics:
        """Counts of calls, retries and give-ups, and the budget's balance."""
        return RetryStatistics(
            calls=self.calls,
            retries=self.retries,
            succeeded_after_retry=self.succeeded_after_retry,
            budget_exhausted=self.budget_exhausted,
            gave_up=self.gave_up,
            budget_balance=self._budget.balance() if self._budget is not None else None,
        )


@attrs.frozen
class RetryLayer(Generic[Req, Res]):
    """Retry failed calls in-process, per ``policy`` (a :class:`RetryPolicy`).

    When it gives up it re-raises the last error unchanged (with a PEP 678 note saying
    why), so the backend records the real failure. Put tracing *outside* it (one span per
    delivery) and a :class:`TimeoutLayer` inside it to time each try.

    Example::

        worker = (
            WorkerBuilder("fetch").backend(backend)
            .layer(RetryLayer(RetryPolicy(max_attempts=3, budget=RetryBudget())))
            .layer(TimeoutLayer(10))                 # each try gets 10 s
            .build(fetch_page)
        )
    """

    policy: RetryPolicy = attrs.field(factory=RetryPolicy)

    @policy.validator
    def _check(self, _attr: attrs.Attribute[RetryPolicy], value: RetryPolicy) -> None:
        if not isinstance(value, RetryPolicy):
            raise ValueError(f"RetryLayer(policy): expected a RetryPolicy, got {value!r}")

    def layer(self, inner: Service[Req, Res], /) -> RetryService[Req, Res]:
        return RetryService(inner, self.policy)
