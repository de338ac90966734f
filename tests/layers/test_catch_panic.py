"""CatchPanicLayer: a bug becomes a Panic with its traceback; the worker keeps running."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import turret
from turret import Abort, Retry, TaskState, WorkerBuilder
from turret.backends import MemoryBackend
from turret.layers import CatchPanicLayer, Elapsed, Panic
from turret.testing import MockService, call_once


def buggy_helper(n: int) -> int:
    return {"a": 1}[str(n)]  # KeyError: a bug


async def test_exception_becomes_panic_with_traceback() -> None:
    svc = CatchPanicLayer[Any, int]().layer(MockService(lambda t: buggy_helper(t.args)))
    with pytest.raises(Panic) as info:
        await call_once(svc, 7)
    panic = info.value
    assert isinstance(panic.error, KeyError)
    assert panic.__cause__ is panic.error
    assert "KeyError: '7'" in str(panic)
    assert "buggy_helper" in panic.traceback_text
    assert "Traceback (most recent call last)" in panic.traceback_text
    assert svc.statistics().panics == 1


@pytest.mark.parametrize("exc", [Abort("no"), Retry(after=1), Elapsed(3.0)])
async def test_turret_errors_pass_through(exc: Exception) -> None:
    def raise_it(_: Any) -> None:
        raise exc

    with pytest.raises(type(exc)):
        await call_once(CatchPanicLayer[Any, None]().layer(MockService(raise_it)), None)


async def sleep_long(_: Any) -> None:
    await trio.sleep(1000)


async def test_cancellation_passes_through(autojump_clock: trio.testing.MockClock) -> None:
    svc = CatchPanicLayer[Any, None]().layer(MockService(sleep_long))
    with trio.move_on_after(1) as scope:
        await call_once(svc, None)
    assert scope.cancelled_caught


async def test_a_handler_bug_is_recorded_and_the_worker_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    bad = await backend.push(3, max_attempts=2)
    good = await backend.push(-1)
    failures: list[BaseException] = []

    async def handler(n: int) -> int:
        if n > 0:
            return buggy_helper(n)
        return n

    def on_event(event: turret.Event) -> None:
        if isinstance(event, turret.TaskFailed):
            failures.append(event.error)

    worker = (
        WorkerBuilder("p")
        .backend(backend)
        .layer(CatchPanicLayer())
        .backoff(turret.ConstantBackoff(5))
        .on_event(on_event)
        .build(handler)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(0.5)
        rec = backend.get(bad)
        assert rec.state is TaskState.SCHEDULED  # durable retry after the first failure
        assert rec.last_error is not None
        assert rec.last_error.startswith("Panic: KeyError: '3'")
        assert "Traceback (most recent call last)" in rec.last_error
        assert "buggy_helper" in rec.last_error
        await trio.sleep(600)
        worker.context.stop()
    assert backend.get(good).state is TaskState.DONE
    assert backend.get(bad).state is TaskState.DEAD
    assert "buggy_helper" in (backend.get(bad).dead_reason or "")
    assert all(isinstance(e, Panic) for e in failures)
    assert len(failures) == 2
