"""TimeoutLayer: Elapsed after the deadline; readiness is never timed."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from turret import WorkerBuilder
from turret.backends import MemoryBackend
from turret.layers import Elapsed, TimeoutLayer
from turret.testing import MockService, call_once


async def test_slow_call_raises_elapsed(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(req: Any) -> str:
        await trio.sleep(5)
        return "done"

    svc = TimeoutLayer[Any, str](2).layer(MockService(slow))
    start = trio.current_time()
    with pytest.raises(Elapsed, match="within 2s") as info:
        await call_once(svc, None)
    assert info.value.seconds == 2
    assert trio.current_time() - start == pytest.approx(2)


async def test_fast_call_returns(autojump_clock: trio.testing.MockClock) -> None:
    async def quick(req: Any) -> str:
        await trio.sleep(1)
        return "done"

    assert await call_once(TimeoutLayer[Any, str](2).layer(MockService(quick)), None) == "done"


async def test_timeout_does_not_cover_the_wait_for_readiness(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def work(req: Any) -> str:
        await trio.sleep(1.5)
        return "ok"

    mock = MockService(work, ready=False)
    svc = TimeoutLayer[Any, str](2).layer(mock)

    async def open_later() -> None:
        await trio.sleep(10)
        mock.set_ready(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_later)
        # 10 s waiting for readiness + 1.5 s of call: fine under a 2 s timeout
        assert await call_once(svc, None) == "ok"
    assert trio.current_time() == pytest.approx(11.5)


async def sleep_long(_: Any) -> None:
    await trio.sleep(1000)


async def test_outer_cancellation_is_not_turned_into_elapsed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    svc = TimeoutLayer[Any, None](100).layer(MockService(sleep_long))
    with trio.move_on_after(1) as outer:
        await call_once(svc, None)
    assert outer.cancelled_caught


def test_timeout_validates() -> None:
    with pytest.raises(ValueError, match="seconds must be > 0"):
        TimeoutLayer(0)
    with pytest.raises(ValueError, match="no TimeoutLayer"):
        TimeoutLayer(float("inf"))


async def test_elapsed_is_a_task_failure_in_a_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    task_id = await backend.push(1, max_attempts=1)

    async def handler(n: int) -> None:
        await trio.sleep(60)

    worker = WorkerBuilder("t").backend(backend).layer(TimeoutLayer(1)).build(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(5)
        worker.context.stop()
    rec = backend.get(task_id)
    assert rec.dead_reason is not None
    assert "Elapsed" in rec.dead_reason


async def test_the_handler_sees_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[float] = []

    async def look(req: Any) -> None:
        seen.append(trio.current_effective_deadline())

    svc = TimeoutLayer[Any, None](30).layer(MockService(look))
    await trio.sleep(5)
    await call_once(svc, None)
    assert seen == [pytest.approx(trio.current_time() + 30)]
    with trio.move_on_after(10):  # an earlier outer deadline still wins
        await call_once(svc, None)
    assert seen[1] == pytest.approx(trio.current_time() + 10)
