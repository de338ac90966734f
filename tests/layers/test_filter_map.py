"""FilterLayer (Rejected is an Abort) and the map layers."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from turret import Abort, Task, TaskState, WorkerBuilder
from turret.backends import MemoryBackend
from turret.layers import FilterLayer, MapArgsLayer, MapResultLayer, Rejected
from turret.testing import MockService, call_once, make_task


async def test_filter_passes_or_rejects() -> None:
    mock: MockService[Task[Any], str] = MockService(lambda t: "ran")
    svc = FilterLayer[Task[Any], str](lambda t: t.args > 0, reason="n must be positive").layer(mock)
    assert await call_once(svc, 1) == "ran"
    with pytest.raises(Rejected, match="n must be positive") as info:
        await call_once(svc, -1)
    assert isinstance(info.value, Abort)
    assert len(mock.calls) == 1
    s = svc.statistics()
    assert (s.passed, s.rejected) == (1, 1)


def test_filter_validates() -> None:
    with pytest.raises(ValueError, match="expected a callable"):
        FilterLayer(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fn must be callable"):
        MapArgsLayer(None)  # type: ignore[arg-type]


async def test_map_args_and_result() -> None:
    mock: MockService[Task[Any], Any] = MockService(lambda t: {"seen": t.args, "id": 7})
    svc = MapResultLayer[Task[Any], Any](lambda r: r["seen"]).layer(
        MapArgsLayer[Any](lambda a: {"to": a["email"]}).layer(mock)
    )
    mock_ctx = make_task().ctx
    task = Task({"email": "a@b.c"}, mock_ctx)
    assert await call_once(svc, task) == {"to": "a@b.c"}
    assert mock.calls[0].ctx is mock_ctx


async def test_in_a_worker_rejected_dead_letters_and_results_are_mapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    ok = await backend.push({"n": 2})
    bad = await backend.push({"n": -2})

    async def handler(n: int) -> int:
        return n * 10

    worker = (
        WorkerBuilder("f")
        .backend(backend)
        .layer(FilterLayer(lambda t: t.args["n"] > 0, reason="negative"))
        .layer(MapResultLayer(lambda r: r + 1))
        .layer(MapArgsLayer(lambda a: a["n"]))
        .build(handler)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(1)
        worker.context.stop()
    assert backend.get(ok).state is TaskState.DONE
    assert backend.get(ok).result == b"21"
    rec = backend.get(bad)
    assert rec.state is TaskState.DEAD
    assert rec.attempt == 1
    assert "rejected: negative" in (rec.dead_reason or "")
