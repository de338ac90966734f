"""CircuitBreakerLayer: closed -> open (not ready) -> half-open (trials) -> closed/open."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing

import turret
from turret import Abort, WorkerBuilder
from turret.backends import MemoryBackend
from turret.layers import BreakerState, CircuitBreakerLayer, CircuitOpen
from turret.testing import MockService, assert_not_ready, assert_ready, call_once


class Downstream:
    def __init__(self) -> None:
        self.healthy = False

    def __call__(self, req: Any) -> str:
        if not self.healthy:
            raise ConnectionError("downstream down")
        return "ok"


async def test_transitions(autojump_clock: trio.testing.MockClock) -> None:
    down = Downstream()
    svc = CircuitBreakerLayer[Any, str](failure_threshold=3, recovery_time=10).layer(
        MockService(down)
    )
    for _ in range(3):
        await assert_ready(svc)
        with pytest.raises(ConnectionError):
            await call_once(svc, None)
    assert svc.statistics().state is BreakerState.OPEN
    await assert_not_ready(svc)
    await assert_not_ready(svc, within=9.9)
    # ready() waits exactly until recovery_time has passed, then admits one trial
    t0 = trio.current_time()
    async with svc.ready():
        assert trio.current_time() == pytest.approx(10)
        assert svc.statistics().state is BreakerState.HALF_OPEN
        await assert_not_ready(svc)  # half_open_max=1: one trial at a time
        with pytest.raises(ConnectionError):
            await svc(None)  # the trial fails: open again
    assert t0 > 0
    assert svc.statistics().state is BreakerState.OPEN
    await assert_not_ready(svc, within=9.9)
    down.healthy = True
    await trio.sleep(0.2)
    assert await call_once(svc, None) == "ok"  # successful trial closes it
    s = svc.statistics()
    assert (s.state, s.opened, s.consecutive_failures) == (BreakerState.CLOSED, 2, 0)
    await assert_ready(svc)


async def test_half_open_max_trials_at_once(autojump_clock: trio.testing.MockClock) -> None:
    svc = CircuitBreakerLayer[Any, None](
        failure_threshold=1, recovery_time=1, half_open_max=2
    ).layer(MockService(Downstream()))
    with pytest.raises(ConnectionError):
        await call_once(svc, None)
    await trio.sleep(1)
    async with svc.ready(), svc.ready():
        assert svc.statistics().trials_in_flight == 2
        await assert_not_ready(svc)
    # trials given back unused: capacity returns
    await assert_ready(svc)


async def test_success_resets_the_failure_count_and_control_flow_is_no_failure() -> None:
    outcomes: list[Exception | None] = [ConnectionError(), None, ConnectionError(), Abort("x")]

    def handler(req: Any) -> None:
        exc = outcomes.pop(0)
        if exc is not None:
            raise exc

    svc = CircuitBreakerLayer[Any, None](failure_threshold=2, recovery_time=5).layer(
        MockService(handler)
    )
    for _ in range(4):
        with contextlib.suppress(ConnectionError, Abort):
            await call_once(svc, None)
    assert svc.statistics().state is BreakerState.CLOSED
    assert svc.statistics().consecutive_failures == 1


async def test_a_call_while_open_is_rejected_with_circuit_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mock = MockService(Downstream())
    svc = CircuitBreakerLayer[Any, str](failure_threshold=1, recovery_time=5).layer(mock)
    async with svc.ready():  # reserved while closed
        with pytest.raises(ConnectionError):
            await call_once(svc, None)
        with pytest.raises(CircuitOpen) as info:
            await svc(None)
    assert info.value.retry_in == pytest.approx(5)
    assert len(mock.calls) == 1
    assert svc.statistics().rejected == 1


async def test_a_worker_stops_claiming_while_open(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    for i in range(10):
        await backend.push(i, max_attempts=1)
    down = Downstream()
    engaged: list[float] = []

    async def handler(n: int) -> str:
        await trio.sleep(0.1)
        return down(n)

    def on_event(event: turret.Event) -> None:
        if isinstance(event, turret.TaskEngaged):
            engaged.append(event.time)

    worker = (
        WorkerBuilder("cb")
        .backend(backend)
        .concurrency(1)
        .layer(CircuitBreakerLayer(failure_threshold=3, recovery_time=30))
        .on_event(on_event)
        .build(handler)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(20)
        assert len(engaged) == 3  # opened after 3 failures; nothing claimed since
        assert backend.statistics().queues["default"].pending == 7
        down.healthy = True
        await trio.sleep(20)  # t=40: recovered at ~30.3, one trial, closed, the rest ran
        worker.context.stop()
    assert engaged[3] == pytest.approx(30.3, abs=0.01)
    assert backend.statistics().queues["default"].done == 7


def test_validates() -> None:
    with pytest.raises(ValueError, match="failure_threshold=\\): must be an int >= 1"):
        CircuitBreakerLayer(failure_threshold=0)
    with pytest.raises(ValueError, match="recovery_time"):
        CircuitBreakerLayer(recovery_time=-1)
    with pytest.raises(ValueError, match="half_open_max"):
        CircuitBreakerLayer(half_open_max=0)
