"""Layers that do not change backpressure forward ready() untouched, and reservations
of the limiting layers give their own resource back even when the inner exit fails."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

import turret
from turret.layers import (
    CatchPanicLayer,
    CircuitBreakerLayer,
    ConcurrencyLimitLayer,
    RateLimitLayer,
    RetryLayer,
    TimeoutLayer,
)
from turret.testing import MockService, assert_not_ready, assert_ready, call_once

LAYERS: dict[str, Callable[[], turret.Layer[Any, Any]]] = {
    "timeout": lambda: TimeoutLayer(5),
    "retry": lambda: RetryLayer(),
    "catch_panic": lambda: CatchPanicLayer(),
    "concurrency": lambda: ConcurrencyLimitLayer(3),
    "rate_limit": lambda: RateLimitLayer(1000, burst=10),
    "circuit_breaker": lambda: CircuitBreakerLayer(),
}


@pytest.mark.parametrize("name", list(LAYERS))
async def test_readiness_and_calls_reach_the_inner_service(name: str) -> None:
    mock: MockService[Any, str] = MockService(lambda task: f"got {task.args}", ready=False)
    svc = LAYERS[name]().layer(mock)
    await assert_not_ready(svc)
    mock.set_ready(True)
    await assert_ready(svc)
    async with svc.ready():
        assert mock.statistics().reservations == 1
    assert mock.statistics().reservations == 0
    assert await call_once(svc, 7) == "got 7"
    assert [t.args for t in mock.calls] == [7]


class _FailingExit:
    """An inner reservation whose exit raises."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        raise RuntimeError("inner exit failed")


class _BadInner(turret.Service[Any, None]):
    def ready(self) -> AbstractAsyncContextManager[None]:
        return _FailingExit()

    async def __call__(self, req: Any, /) -> None:
        return None


async def test_a_concurrency_permit_is_released_when_the_inner_exit_fails() -> None:
    svc = ConcurrencyLimitLayer[Any, None](1).layer(_BadInner())
    with pytest.raises(RuntimeError, match="inner exit failed"):
        async with svc.ready():
            pass
    assert svc.statistics().in_use == 0
    svc.inner = MockService()
    await assert_ready(svc)


async def test_a_breaker_trial_ends_when_the_inner_exit_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def fail(req: Any) -> None:
        raise ValueError("down")

    svc = CircuitBreakerLayer[Any, None](failure_threshold=1, recovery_time=1).layer(
        MockService(fail)
    )
    with pytest.raises(ValueError, match="down"):
        await call_once(svc, None)  # opens the breaker
    svc.inner = _BadInner()
    await trio.sleep(1)  # half-open: one trial at a time
    with pytest.raises(RuntimeError, match="inner exit failed"):
        async with svc.ready():
            assert svc.statistics().trials_in_flight == 1
    assert svc.statistics().trials_in_flight == 0
