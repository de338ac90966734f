"""RetryLayer: attempts, backoff timing, budget, predicates, control flow, stopping."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import turret
from turret import Abort, ConstantBackoff, ExponentialBackoff, Retry, WorkerBuilder
from turret.backends import MemoryBackend
from turret.layers import Rejected, RetryBudget, RetryLayer, RetryPolicy
from turret.testing import MockService, call_once

NO_JITTER = ExponentialBackoff(base=1, factor=2, max=5, jitter=False)


def failing(times: int, exc: Exception | None = None) -> MockService[Any, str]:
    count = 0

    def handler(req: Any) -> str:
        nonlocal count
        count += 1
        if count <= times:
            raise exc if exc is not None else ConnectionError(f"failure {count}")
        return "ok"

    return MockService(handler)


async def test_retries_with_exact_backoff_timing(autojump_clock: trio.testing.MockClock) -> None:
    mock = failing(4)
    svc = RetryLayer[Any, str](RetryPolicy(max_attempts=5, backoff=NO_JITTER)).layer(mock)
    assert await call_once(svc, None) == "ok"
    gaps = [b - a for a, b in zip(mock.call_times, mock.call_times[1:], strict=False)]
    assert gaps == pytest.approx([1, 2, 4, 5])
    s = svc.statistics()
    assert (s.calls, s.retries, s.succeeded_after_retry) == (1, 4, 1)


async def test_gives_up_after_max_attempts_with_the_last_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mock = failing(10)
    svc = RetryLayer[Any, str](RetryPolicy(max_attempts=3, backoff=ConstantBackoff(0.5))).layer(
        mock
    )
    with pytest.raises(ConnectionError, match="failure 3"):
        await call_once(svc, None)
    assert len(mock.calls) == 3
    assert trio.current_time() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "exc", [Abort("no"), Retry(after=5), Rejected("filtered"), turret.InvalidPayload("bad")]
)
async def test_control_flow_is_never_retried(exc: Exception) -> None:
    mock = failing(1, exc)
    svc = RetryLayer[Any, str](RetryPolicy(max_attempts=5, backoff=ConstantBackoff(0))).layer(mock)
    with pytest.raises(type(exc)):
        await call_once(svc, None)
    assert len(mock.calls) == 1


async def test_retry_if_limits_what_is_retried() -> None:
    policy = RetryPolicy(max_attempts=5, backoff=ConstantBackoff(0)).retry_if(
        lambda e: isinstance(e, ConnectionError)
    )
    retried = failing(2)
    assert await call_once(RetryLayer[Any, str](policy).layer(retried), None) == "ok"
    assert len(retried.calls) == 3
    not_retried = failing(2, ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        await call_once(RetryLayer[Any, str](policy).layer(not_retried), None)
    assert len(not_retried.calls) == 1


async def test_budget_bounds_retries_to_a_ratio_of_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mock = failing(10**6)
    budget = RetryBudget(ratio=0.5, min_per_second=0, ttl=10)
    svc = RetryLayer[Any, str](
        RetryPolicy(max_attempts=3, backoff=ConstantBackoff(0), budget=budget)
    ).layer(mock)
    for _ in range(10):
        with pytest.raises(ConnectionError) as info:
            await call_once(svc, None)
    s = svc.statistics()
    assert s.calls == 10
    assert s.retries == 5  # 0.5 retries per call, not 2 per call
    assert s.budget_exhausted > 0
    assert len(mock.calls) == 15
    assert any("budget exhausted" in note for note in info.value.__notes__)
    # The window slides: after ttl the spent retries are forgotten.
    await trio.sleep(11)
    assert svc.statistics().budget_balance == pytest.approx(0)


async def test_budget_reserve_allows_retries_when_quiet() -> None:
    mock = failing(2)
    budget = RetryBudget(ratio=0.0, min_per_second=1, ttl=2)
    svc = RetryLayer[Any, str](
        RetryPolicy(max_attempts=5, backoff=ConstantBackoff(0), budget=budget)
    ).layer(mock)
    assert await call_once(svc, None) == "ok"  # 2 retries from the reserve of 1/s * 2 s
    assert svc.statistics().budget_balance == pytest.approx(0)


async def test_stops_retrying_when_the_worker_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    task_id = await backend.push(1)
    calls: list[float] = []

    async def handler(n: int) -> None:
        calls.append(trio.current_time())
        raise ConnectionError("down")

    policy = RetryPolicy(max_attempts=100, backoff=ConstantBackoff(10))
    worker = WorkerBuilder("r").backend(backend).layer(RetryLayer(policy)).build(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(25)  # calls at 0, 10, 20; now sleeping until 30
        worker.context.stop()
        await trio.sleep(0.001)
        # woke from the backoff sleep at once: settled (durable retry) right after stop()
        assert backend.get(task_id).state is turret.TaskState.SCHEDULED
    assert len(calls) == 3
    assert trio.current_time() < 30
    rec = backend.get(task_id)
    assert rec.state is turret.TaskState.SCHEDULED  # the durable retry took over
    assert rec.last_error is not None
    assert "down" in rec.last_error


def test_policy_validates() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=-1)
    with pytest.raises(ValueError, match="ttl"):
        RetryBudget(ttl=0)
    with pytest.raises(ValueError, match="expected a RetryPolicy"):
        RetryLayer(3)  # type: ignore[arg-type]
