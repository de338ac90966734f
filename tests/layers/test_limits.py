"""Concurrency limits (per service and global) and the rate limit, through readiness."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import turret
from turret import WorkerBuilder
from turret.backends import MemoryBackend
from turret.layers import ConcurrencyLimitLayer, GlobalConcurrencyLimitLayer, RateLimitLayer
from turret.testing import MockService, assert_not_ready, assert_ready, call_once


async def test_concurrency_limit_is_not_ready_when_full() -> None:
    svc = ConcurrencyLimitLayer[Any, None](2).layer(MockService())
    async with svc.ready(), svc.ready():
        await assert_not_ready(svc)
        assert svc.statistics().in_use == 2
    await assert_ready(svc)
    assert svc.statistics().in_use == 0


async def test_concurrency_limit_serves_waiters_in_order() -> None:
    svc = ConcurrencyLimitLayer[Any, None](1).layer(MockService())
    order: list[int] = []
    first = svc.ready()
    await first.__aenter__()

    async def wait(n: int) -> None:
        async with svc.ready():
            order.append(n)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(wait, n)
            await trio.testing.wait_all_tasks_blocked()
        assert svc.statistics() == turret.layers.ConcurrencyLimitStatistics(1, 1, 3)
        await first.__aexit__(None, None, None)
        # The permit went to the first waiter: a newcomer cannot overtake it.
        await assert_not_ready(svc)
    assert order == [0, 1, 2]
    assert svc.statistics() == turret.layers.ConcurrencyLimitStatistics(1, 0, 0)


async def test_a_cancelled_concurrency_wait_holds_nothing() -> None:
    svc = ConcurrencyLimitLayer[Any, None](1).layer(MockService())
    held = svc.ready()
    await held.__aenter__()
    with trio.move_on_after(1) as scope:
        async with svc.ready():
            pytest.fail("should still be waiting")
    assert scope.cancelled_caught
    assert svc.statistics().waiting == 0
    await held.__aexit__(None, None, None)
    assert svc.statistics().in_use == 0
    await assert_ready(svc)


async def test_a_permit_handed_to_a_waiter_cancelled_meanwhile_comes_back() -> None:
    svc = ConcurrencyLimitLayer[Any, None](1).layer(MockService())
    held = svc.ready()
    await held.__aenter__()
    entered: list[bool] = []

    async def wait(scope: trio.CancelScope) -> None:
        with scope:
            async with svc.ready():
                entered.append(True)
                await trio.sleep_forever()

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, scope)
        await trio.testing.wait_all_tasks_blocked()
        await held.__aexit__(None, None, None)  # hands the permit over...
        scope.cancel()  # ...and the waiter is cancelled before it runs
    assert svc.statistics().in_use == 0
    await assert_ready(svc)


async def test_a_concurrency_permit_may_be_released_by_another_task() -> None:
    # The worker enters a reservation in its loop and exits it in the task it spawns.
    svc = ConcurrencyLimitLayer[Any, None](1).layer(MockService())
    reservation = svc.ready()
    await reservation.__aenter__()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reservation.__aexit__, None, None, None)
    assert svc.statistics().in_use == 0
    await assert_ready(svc)


async def test_global_limit_is_shared_by_every_service_it_wraps() -> None:
    shared = GlobalConcurrencyLimitLayer[Any, None](1)
    a, b = shared.layer(MockService()), shared.layer(MockService())
    local = ConcurrencyLimitLayer[Any, None](1)
    c, d = local.layer(MockService()), local.layer(MockService())
    async with a.ready():
        await assert_not_ready(b)
        async with c.ready():
            await assert_ready(d)  # the per-service limit is not shared
    await assert_ready(b)


async def test_global_limit_accepts_a_limiter_and_validates() -> None:
    limiter = trio.CapacityLimiter(3)
    assert GlobalConcurrencyLimitLayer[Any, None](limiter).limiter is limiter
    with pytest.raises(ValueError, match="CapacityLimiter or an int >= 1"):
        GlobalConcurrencyLimitLayer[Any, None](0)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        ConcurrencyLimitLayer[Any, None](0)


async def test_global_limit_across_two_workers(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    for i in range(6):
        await backend.push(i, queue="a")
        await backend.push(i, queue="b")
    running = 0
    peak = 0

    async def handler(n: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1

    shared = GlobalConcurrencyLimitLayer[turret.Task[Any], Any](2)
    wa = WorkerBuilder("a").backend(backend).queue("a").layer(shared).build(handler)
    wb = WorkerBuilder("b").backend(backend).queue("b").layer(shared).build(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wa.run)
        nursery.start_soon(wb.run)
        await trio.sleep(10)
        wa.context.stop()
        wb.context.stop()
    assert peak == 2
    stats = backend.statistics().queues
    assert stats["a"].done == 6
    assert stats["b"].done == 6


async def test_rate_limit_spaces_reservations(autojump_clock: trio.testing.MockClock) -> None:
    svc = RateLimitLayer[Any, None](5, per=1.0).layer(MockService())
    start = trio.current_time()
    times = []
    for _ in range(6):
        await call_once(svc, None)
        times.append(trio.current_time() - start)
    assert times == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert svc.statistics().granted == 6


async def test_rate_limit_burst_then_steady(autojump_clock: trio.testing.MockClock) -> None:
    svc = RateLimitLayer[Any, None](2, per=1.0, burst=3).layer(MockService())
    await trio.sleep(10)  # a quiet spell fills the bucket
    assert svc.statistics().tokens == pytest.approx(3)
    start = trio.current_time()
    times = []
    for _ in range(5):
        await call_once(svc, None)
        times.append(trio.current_time() - start)
    assert times == pytest.approx([0, 0, 0, 0.5, 1.0])
    await assert_not_ready(svc)
    await trio.sleep(0.5)
    await assert_ready(svc)


async def test_a_worker_at_5_per_second_claims_no_faster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    for i in range(20):
        await backend.push(i)
    engaged: list[float] = []

    def on_event(event: turret.Event) -> None:
        if isinstance(event, turret.TaskEngaged):
            engaged.append(event.time)

    async def handler(n: int) -> None:
        pass

    worker = (
        WorkerBuilder("rl")
        .backend(backend)
        .concurrency(50)
        .layer(RateLimitLayer(5, per=1.0))
        .on_event(on_event)
        .build(handler)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(2.1)
        # ~11 claims in 2.1 s at 5/s (one at t=0), never a burst of the remaining ones
        assert backend.statistics().queues["default"].done == 11
        worker.context.stop()
    gaps = [b - a for a, b in itertools.pairwise(engaged)]
    assert all(g >= 0.2 - 1e-9 for g in gaps), gaps


async def test_a_cancelled_rate_limit_wait_gives_its_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    svc = RateLimitLayer[Any, None](1, per=10.0).layer(MockService())
    await call_once(svc, None)  # t=0, the next slot is at t=10
    with trio.move_on_after(3):
        async with svc.ready():
            pytest.fail("should still be waiting")
    assert svc.statistics().waiting == 0
    await trio.sleep(7)
    await assert_ready(svc)  # t=10: the abandoned slot did not push the schedule back


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, "rate must be a number > 0"),
        ({"rate": 1, "per": 0}, "per must be > 0"),
        ({"rate": 1, "burst": 0}, "burst must be an int >= 1"),
    ],
)
def test_rate_limit_validates(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimitLayer(**kwargs)
