"""A worker's runners: one trio task goes on from task to task while claims come back
full; each task still runs in its own copy of the context; the core services' nowait
reservations."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

import turret
from turret import Job, WorkerBuilder
from turret.backends import MemoryBackend
from turret.core._isolate import isolated
from turret.core._nowait import nowait_reservation
from turret.core._readiness import Readiness, Tracker
from turret.core._service import service_fn
from turret.layers import ConcurrencyLimitLayer, TimeoutLayer

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("turret_test_var", default="unset")


async def test_isolated_returns_raises_and_keeps_what_the_coroutine_sets_to_itself() -> None:
    async def sets(value: str) -> str:
        VAR.set(value)
        await trio.lowlevel.checkpoint()
        return VAR.get()

    VAR.set("outer")
    assert await isolated(sets("inner")) == "inner"
    assert VAR.get() == "outer"

    async def fails() -> None:
        VAR.set("failing")
        await trio.lowlevel.checkpoint()
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await isolated(fails())
    assert VAR.get() == "outer"


async def test_isolated_passes_cancellation_and_children_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[str] = []

    async def child() -> None:
        seen.append(VAR.get())  # a child spawned inside inherits the inner context

    async def sleeps() -> None:
        VAR.set("inner")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        await trio.sleep(10)

    with trio.move_on_after(1) as scope:
        await isolated(sleeps())
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(1)
    assert seen == ["inner"]
    assert VAR.get() == "unset"


def no_ops_until(n: int) -> tuple[Callable[[int], Awaitable[None]], trio.Event]:
    """A no-op handler (one checkpoint), and an event set once it has run ``n`` times."""
    done = trio.Event()
    count = 0

    async def handler(_: int) -> None:
        nonlocal count
        await trio.lowlevel.checkpoint()
        count += 1
        if count == n:
            done.set()

    return handler, done


async def run_200_counting_runners(builder: WorkerBuilder) -> int:
    """Run 200 no-op tasks on a fresh memory backend; how many runners were spawned."""
    backend = MemoryBackend()
    await backend.push_many([Job(n) for n in range(200)])
    runners = 0

    class CountRunners(trio.abc.Instrument):
        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            nonlocal runners
            runners += task.name.endswith("._runner")

    handler, done = no_ops_until(200)
    worker = builder.backend(backend).concurrency(4).build(handler)
    trio.lowlevel.add_instrument(instrument := CountRunners())
    try:
        await worker.run_until(done)
    finally:
        trio.lowlevel.remove_instrument(instrument)
    assert backend.statistics().queues["default"].done == 200
    return runners


async def test_a_busy_worker_runs_many_tasks_per_runner() -> None:
    runners = await run_200_counting_runners(WorkerBuilder("busy"))
    # A trio task per task would be 200 (and more: the claims that found nothing).
    assert 4 <= runners <= 40, runners


async def test_each_task_runs_in_its_own_context_within_a_runner() -> None:
    backend = MemoryBackend()
    await backend.push_many([Job(n) for n in range(30)])
    seen: list[str] = []
    done = trio.Event()

    async def handler(n: int) -> None:
        seen.append(VAR.get())
        VAR.set(f"task {n}")
        await trio.lowlevel.checkpoint()
        if len(seen) == 30:
            done.set()

    worker = WorkerBuilder("ctx").backend(backend).concurrency(1).build(handler)
    await worker.run_until(done)
    assert seen == ["unset"] * 30


async def test_readiness_reserves_without_waiting_or_says_it_would_block() -> None:
    context = turret.WorkerContext("r")

    async def handle(_: object) -> None:
        return None

    readiness = Readiness(Tracker(service_fn(handle), context), context, 1)
    held = readiness.ready_nowait()
    await held.__aenter__()
    assert readiness.permits.in_use == 1
    with pytest.raises(trio.WouldBlock):
        await readiness.ready_nowait().__aenter__()  # the one slot is taken
    assert readiness.permits.in_use == 1
    await held.__aexit__(None, None, None)
    assert readiness.permits.in_use == 0

    context.pause()
    with pytest.raises(trio.WouldBlock):
        await readiness.ready_nowait().__aenter__()
    context.resume()
    context.stop()
    with pytest.raises(trio.WouldBlock):
        await readiness.ready_nowait().__aenter__()
    assert readiness.permits.in_use == 0


async def test_slots_freed_in_one_scheduler_batch_share_one_claim() -> None:
    backend = MemoryBackend()
    await backend.push_many([Job(n) for n in range(1000)])
    claims: list[int] = []
    claim = backend.claim

    async def counting_claim(
        queue: str, *, owner: str, limit: int, lease_ttl: float
    ) -> list[turret.Task[bytes]]:
        tasks = await claim(queue, owner=owner, limit=limit, lease_ttl=lease_ttl)
        claims.append(len(tasks))
        return tasks

    backend.claim = counting_claim  # type: ignore[method-assign]
    handler, done = no_ops_until(1000)
    worker = WorkerBuilder("batch").backend(backend).concurrency(100).build(handler)
    await worker.run_until(done)
    assert sum(claims) == 1000
    # 100 tasks finish in each scheduler batch; their runners claim together (a claim
    # each would be 1000 claims).
    assert len(claims) <= 30, claims


class _Opaque(turret.Service[turret.Task[Any], Any]):
    """A user's layer that forwards ready() without saying so."""

    def __init__(self, inner: turret.Service[turret.Task[Any], Any]) -> None:
        self.inner = inner

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()

    async def __call__(self, task: turret.Task[Any], /) -> Any:
        return await self.inner(task)


@pytest.mark.parametrize(
    ("layer", "go_on"),
    [
        (TimeoutLayer(10.0), True),  # forwards_ready: runners go on
        (ConcurrencyLimitLayer(4), True),  # ready_nowait of its own
        (turret.layer_fn(_Opaque), False),  # a generic try would cost more than it saves
    ],
)
async def test_runners_go_on_only_over_a_stack_that_reserves_natively(
    layer: Any, go_on: bool
) -> None:
    runners = await run_200_counting_runners(WorkerBuilder("w").layer(layer))
    assert (runners <= 40) is go_on, runners


async def test_a_nowait_reservation_passes_through_forwarding_services() -> None:
    inner = ConcurrencyLimitLayer(1).layer(service_fn(_noop))
    outer = TimeoutLayer(1.0).layer(inner)
    held = nowait_reservation(outer)
    await held.__aenter__()
    with pytest.raises(trio.WouldBlock):
        await nowait_reservation(outer).__aenter__()  # inner's one slot is taken
    await held.__aexit__(None, None, None)


async def _noop(_: object) -> None:
    return None
