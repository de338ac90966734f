"""LoadShedLayer: always ready, Overloaded when the inner service is not."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import turret
from turret import ServiceBuilder, WorkerBuilder
from turret.backends import MemoryBackend
from turret.layers import ConcurrencyLimitLayer, LoadShedLayer, Overloaded
from turret.testing import MockService, assert_ready, call_once


async def test_sheds_when_inner_not_ready_and_passes_when_ready() -> None:
    mock: MockService[Any, str] = MockService(lambda r: "ok", ready=False)
    svc = LoadShedLayer[Any, str]().layer(mock)
    await assert_ready(svc)
    with pytest.raises(Overloaded):
        await call_once(svc, None)
    assert mock.calls == []
    mock.set_ready(True)
    assert await call_once(svc, None) == "ok"
    assert svc.statistics() == turret.layers.LoadShedStatistics(passed=1, shed=1)
    assert mock.statistics().reservations == 0


async def test_sheds_over_a_concurrency_limit() -> None:
    gate = trio.Event()

    async def work(req: Any) -> str:
        await gate.wait()
        return "ok"

    svc = (
        ServiceBuilder[Any, str]()
        .layer(LoadShedLayer())
        .layer(ConcurrencyLimitLayer(1))
        .service(MockService(work))
    )
    results: list[str] = []

    async def one() -> None:
        results.append(await call_once(svc, None))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Overloaded):
            await call_once(svc, None)  # the slot is taken: shed at once, no waiting
        gate.set()
    assert results == ["ok"]
    assert await call_once(svc, None) == "ok"


async def test_a_worker_with_load_shed_stays_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    ids = [await backend.push(i) for i in range(5)]

    async def handler(n: int) -> None:
        await trio.sleep(10)

    worker = (
        WorkerBuilder("ls")
        .backend(backend)
        .concurrency(2)
        .layer(LoadShedLayer())
        .backoff(turret.ConstantBackoff(100))
        .build(handler)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(1)
        # 2 run; the other 3 were claimed and shed (durable retry later), not held
        q = backend.statistics().queues["default"]
        assert q.leased == 2
        assert q.scheduled == 3
        errors = [backend.get(i).last_error or "" for i in ids]
        assert sum("Overloaded" in e for e in errors) == 3
        worker.context.stop()
