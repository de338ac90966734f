"""turret.testing: the mock service and the helpers."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from turret import Task
from turret.layers import ConcurrencyLimitLayer
from turret.testing import MockService, assert_not_ready, assert_ready, call_once, make_task


async def test_mock_records_calls_and_answers_with_its_handler() -> None:
    mock: MockService[int, int] = MockService(lambda n: n * 2)
    assert await call_once(mock, 21, as_task=False) == 42
    assert mock.calls == [21]
    assert mock.statistics().reservations == 0


async def test_call_once_wraps_args_in_a_task() -> None:
    mock: MockService[Task[int], int] = MockService(lambda t: t.args + 1)
    assert await call_once(mock, 1) == 2
    assert isinstance(mock.calls[0], Task)
    task = make_task(5)
    assert await call_once(mock, task) == 6
    assert mock.calls[1] is task


async def test_async_handler_and_raising_handler() -> None:
    async def handler(n: int) -> int:
        await trio.lowlevel.checkpoint()
        if n < 0:
            raise ValueError("negative")
        return n

    mock = MockService(handler)
    assert await call_once(mock, 3, as_task=False) == 3
    with pytest.raises(ValueError, match="negative"):
        await call_once(mock, -1, as_task=False)


async def test_readiness_assertions(autojump_clock: trio.testing.MockClock) -> None:
    mock: MockService[int, None] = MockService(ready=False)
    await assert_not_ready(mock)
    await assert_not_ready(mock, within=5)
    with pytest.raises(AssertionError, match="not ready"):
        await assert_ready(mock)
    mock.set_ready(True)
    await assert_ready(mock)
    with pytest.raises(AssertionError, match="is ready"):
        await assert_not_ready(mock)


async def test_assert_not_ready_sees_through_a_service_without_ready_nowait() -> None:
    # ConcurrencyLimit has ready_nowait; hide it to exercise the one-checkpoint fallback.
    class Plain:
        def __init__(self) -> None:
            self.svc = ConcurrencyLimitLayer[int, None](1).layer(MockService())

        def ready(self):  # type: ignore[no-untyped-def]
            return self.svc.ready()

        async def __call__(self, req: int) -> None:
            await self.svc(req)

    plain = Plain()
    await assert_ready(plain)  # type: ignore[arg-type]
    async with plain.ready():
        await assert_not_ready(plain)  # type: ignore[arg-type]
    await assert_ready(plain)  # type: ignore[arg-type]
