"""Monitor: restarts with backoff, restart windows, health, shutdown, dynamic control."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

import turret
from turret import (
    ExponentialBackoff,
    Monitor,
    MonitorError,
    RestartWithBackoff,
    TaskState,
    WorkerBuilder,
    WorkerStatus,
)
from turret.backends import MemoryBackend

from ..slow_backends import SlowAckBackend
from ._helpers import FailingBackend, HangingBackend, Recorder, until

NO_JITTER = ExponentialBackoff(base=1.0, factor=2.0, max=100.0, jitter=False)


def never(ctx: turret.RestartContext, error: Exception, attempt: int) -> bool:
    return False


async def noop(n: int) -> None:
    await trio.sleep(1)


async def test_restart_count_and_backoff(autojump_clock: trio.testing.MockClock) -> None:
    backend = FailingBackend(RuntimeError("connection refused"))
    builds: list[float] = []
    recorder = Recorder()

    def factory(index: int) -> turret.Worker:
        builds.append(trio.current_time())
        return WorkerBuilder("crashy").backend(backend).build(noop)

    monitor = (
        Monitor()
        .register(factory)
        .restart_policy(RestartWithBackoff(max_restarts=3, within=100.0, backoff=NO_JITTER))
        .on_event(recorder)
    )
    builds.clear()  # register() builds instance 0 once to check the factory
    start = trio.current_time()
    with pytest.raises(MonitorError) as info:
        await monitor.run()

    # 1 start + 3 restarts, 1 s, 2 s, 4 s apart; the first build was the checked one.
    assert [round(t - start, 6) for t in builds] == [1.0, 3.0, 7.0]
    restarts = recorder.of(turret.WorkerRestarting)
    assert [(e.attempt, e.delay) for e in restarts] == [(1, 1.0), (2, 2.0), (3, 4.0)]
    assert info.value.workers == ("crashy",)
    assert info.group_contains(RuntimeError, match="connection refused", depth=None)
    stats = monitor.statistics()
    assert stats.restarts == 3
    assert stats.failures == 1
    assert stats.statuses == {"crashy": WorkerStatus.DEAD}
    changes = [e.status for e in recorder.of(turret.WorkerStatusChanged)]
    assert changes[:3] == [WorkerStatus.STARTING, WorkerStatus.HEALTHY, WorkerStatus.FAILED]
    assert changes[-1] is WorkerStatus.DEAD


async def _window_scenario() -> None:
    policy = RestartWithBackoff(max_restarts=2, within=60.0, backoff=NO_JITTER)
    fast = FailingBackend(RuntimeError("fast"))  # fails at once: 3 failures inside 60 s
    slow = FailingBackend(RuntimeError("slow"), after=50.0)  # fails every ~50 s

    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("slow").backend(slow).build(noop), restart=policy)
        .shutdown_timeout(5)
    )
    async with monitor.open() as handle:
        await trio.sleep(500)
        # The slow one never has 2 restarts within 60 s: it is restarted forever.
        assert handle.status("slow") in (WorkerStatus.HEALTHY, WorkerStatus.FAILED)
        assert handle.statistics().restarts >= 9
        handle.add(
            "fast", lambda i: WorkerBuilder("fast").backend(fast).build(noop), restart=policy
        )
        await handle.wait_status("fast", WorkerStatus.DEAD)
        assert handle.statistics().restarts >= 11
        # Fail-fast: giving up on "fast" shuts the others down.
        assert handle.stopping


async def test_restart_window_exhaustion(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(MonitorError) as info:
        await _window_scenario()
    assert info.value.workers == ("fast",)
    assert info.group_contains(RuntimeError, match="fast", depth=None)


async def test_shutdown_timeout_releases_hung_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    task_id = await backend.push(1)
    started = trio.Event()

    async def hang(n: int) -> None:
        started.set()
        await trio.sleep_forever()

    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("w").backend(backend).build(hang))
        .shutdown_timeout(5)
    )
    async with monitor.open() as handle:
        await started.wait()
        assert backend.get(task_id).state is TaskState.LEASED
        assert backend.get(task_id).attempt == 1
        t0 = trio.current_time()
        handle.shutdown()
        await handle.wait()
        assert trio.current_time() - t0 == pytest.approx(5.0)
    record = backend.get(task_id)
    assert record.state is TaskState.PENDING
    assert record.attempt == 0  # released: the attempt is not consumed
    claimed = await backend.claim("default", owner="test", limit=1, lease_ttl=10)
    assert [t.ctx.id for t in claimed] == [task_id]
    assert claimed[0].ctx.attempt == 1
    assert monitor.statistics().statuses == {"w": WorkerStatus.COMPLETED}


async def test_shutdown_timeout_cancels_handlers_but_lets_settles_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At the timeout the hung handler is cancelled and released; an ack under way then
    finishes (it is not cut short and left leased to run again after its lease expires)."""

    backend = SlowAckBackend(ack_delay=3)
    quick, hung = await backend.push(0), await backend.push(1)

    async def handler(n: int) -> None:
        await trio.sleep(4 if n == 0 else math.inf)

    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("w").backend(backend).concurrency(2).build(handler))
        .shutdown_timeout(5)
    )
    async with monitor.open() as handle:
        await trio.sleep(1)
        handle.shutdown()  # timeout at 6 s; the quick task's ack runs 4-7 s
        await handle.wait()
        assert trio.current_time() == pytest.approx(7.0)
    assert backend.get(quick).state is TaskState.DONE
    assert (backend.get(hung).state, backend.get(hung).attempt) == (TaskState.PENDING, 0)


async def test_graceful_shutdown_lets_tasks_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    ids = [await backend.push(n) for n in range(3)]
    done: list[int] = []

    async def slow(n: int) -> None:
        await trio.sleep(2)
        done.append(n)

    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("w").backend(backend).build(slow))
        .shutdown_timeout(5)
    )
    async with monitor.open() as handle:
        await trio.sleep(1)
        handle.shutdown()
    assert sorted(done) == [0, 1, 2]
    assert all(backend.get(i).state is TaskState.DONE for i in ids)


async def test_dynamic_add_kill_restart(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    built: list[int] = []

    def factory(index: int) -> turret.Worker:
        built.append(index)
        return WorkerBuilder(f"a-{index}").backend(backend).build(noop)

    async with Monitor().open() as handle:
        assert handle.statuses() == {}
        names = handle.add("a", factory, count=2)
        assert names == ["a-0", "a-1"]
        assert built == [0]  # index 0 is checked by add(), index 1 built at its start
        assert handle.statuses() == {"a-0": WorkerStatus.CREATED, "a-1": WorkerStatus.CREATED}
        await handle.wait_status("a-0", WorkerStatus.HEALTHY)
        await handle.wait_status("a-1", WorkerStatus.HEALTHY)
        assert built == [0, 1]
        built.clear()

        handle.kill("a-1")
        await handle.wait_status("a-1", WorkerStatus.DEAD)
        assert handle.status("a-0") is WorkerStatus.HEALTHY

        first = handle.worker("a-0")
        handle.restart("a-0")
        await until(lambda: handle.worker("a-0") is not first)
        await handle.wait_status("a-0", WorkerStatus.HEALTHY)
        assert built == [0]
        assert handle.statistics().restarts == 1

        handle.restart("a-1")  # a killed worker can be started again
        await handle.wait_status("a-1", WorkerStatus.HEALTHY)
        assert built == [0, 1]

        with pytest.raises(KeyError, match="no worker instance named 'nope'"):
            handle.status("nope")
        with pytest.raises(ValueError, match="already supervised"):
            handle.add("a", factory)
        with pytest.raises(TypeError, match=r"must return a turret\.Worker"):
            handle.add("b", lambda i: "not a worker")

        handle.kill("a")  # a registration name: all its instances
        await handle.wait()
        assert handle.statuses() == {"a-0": WorkerStatus.DEAD, "a-1": WorkerStatus.DEAD}
        handle.shutdown()
        with pytest.raises(RuntimeError, match="shutting down"):
            handle.add("c", factory)


async def test_unhealthy_worker_is_restarted(autojump_clock: trio.testing.MockClock) -> None:
    backend = HangingBackend()
    task_id = await backend.push(7)
    recorder = Recorder()
    builds = 0

    def factory(index: int) -> turret.Worker:
        nonlocal builds
        builds += 1
        if builds >= 2:  # the checked build runs first and hangs; the restart is fine
            backend.hang = False
        return WorkerBuilder("w").backend(backend).build(noop)

    monitor = (
        Monitor()
        .register(factory)
        .unhealthy_after(10, check_every=1)
        .shutdown_timeout(5)
        .restart_policy(RestartWithBackoff(max_restarts=3, within=60, backoff=NO_JITTER))
        .on_event(recorder)
    )
    async with monitor.open() as handle:
        await handle.wait_status("w", WorkerStatus.UNHEALTHY)
        assert backend.hung_calls >= 1
        (unhealthy,) = recorder.of(turret.WorkerUnhealthy)
        assert unhealthy.stalled_for > 10
        await handle.wait_status("w", WorkerStatus.HEALTHY)
        await until(lambda: backend.get(task_id).state is TaskState.DONE)
        (restart,) = recorder.of(turret.WorkerRestarting)
        assert isinstance(restart.error, turret.WorkerStalled)
        handle.shutdown()
    assert monitor.statistics().restarts == 1


async def test_two_failures_in_one_exception_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = FailingBackend(ValueError("bad config"))
    b = FailingBackend(KeyError("missing"))
    ok = MemoryBackend()
    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("a").backend(a).build(noop))
        .register(lambda i: WorkerBuilder("b").backend(b).build(noop))
        .register(lambda i: WorkerBuilder("ok").backend(ok).build(noop))
        .restart_policy(never)
    )
    with pytest.raises(MonitorError) as info:
        await monitor.run()
    error = info.value
    assert isinstance(error, ExceptionGroup)
    assert isinstance(error, turret.TurretError)
    assert sorted(error.workers) == ["a", "b"]
    assert len(error.exceptions) == 2
    failures = error.failures
    assert failures["a"] is not failures["b"]
    assert info.group_contains(ValueError, match="bad config", depth=None)
    assert info.group_contains(KeyError, depth=None)
    assert "a (ValueError: bad config)" in str(error)
    assert "b (KeyError: 'missing')" in str(error)
    # split keeps the class and the names
    values, rest = error.split(ValueError)
    assert isinstance(values, MonitorError)
    assert values.workers == ("a",)
    assert isinstance(rest, MonitorError)
    assert rest.workers == ("b",)
    statuses = monitor.statistics().statuses
    assert statuses == {
        "a": WorkerStatus.DEAD,
        "b": WorkerStatus.DEAD,
        "ok": WorkerStatus.COMPLETED,
    }


async def test_count_names_and_factory_checks(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    with pytest.raises(TypeError, match="not a built worker"):
        Monitor().register(WorkerBuilder("w").backend(backend).build(noop))
    with pytest.raises(ValueError, match="count must be"):
        Monitor().register(lambda i: WorkerBuilder("w").backend(backend).build(noop), count=0)
    monitor = Monitor().register(
        lambda i: WorkerBuilder(f"m-{i}").backend(backend).build(noop), count=3, name="m"
    )
    with pytest.raises(ValueError, match="already registered"):
        monitor.register(lambda i: WorkerBuilder("m").backend(backend).build(noop))
    assert list(monitor.statistics().statuses) == ["m-0", "m-1", "m-2"]
    async with monitor.open() as handle:
        for name in ("m-0", "m-1", "m-2"):
            await handle.wait_status(name, WorkerStatus.HEALTHY)
        before = [handle.worker(n) for n in ("m-0", "m-1", "m-2")]
        handle.restart("m")
        with trio.fail_after(31):  # at the latest after the shutdown timeout
            await until(lambda: all(handle.worker(n) not in before for n in ("m-0", "m-1", "m-2")))
        handle.shutdown()
    assert set(monitor.statistics().statuses.values()) == {WorkerStatus.COMPLETED}


async def test_cancellation_is_not_swallowed(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    task_id = await backend.push(1)

    async def hang(n: int) -> None:
        await trio.sleep_forever()

    monitor = Monitor().register(lambda i: WorkerBuilder("w").backend(backend).build(hang))
    with trio.move_on_after(3) as scope:
        await monitor.run()
    assert scope.cancelled_caught
    assert backend.get(task_id).state is TaskState.PENDING
    assert backend.get(task_id).attempt == 0


async def test_event_loop_lag_watchdog(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    await backend.push(1)
    recorder = Recorder()

    async def blocking(n: int) -> None:
        autojump_clock.jump(3)  # as if the handler blocked the loop for 3 s

    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("w").backend(backend).build(blocking))
        .lag_watchdog(interval=0.5, threshold=0.1)
        .on_event(recorder)
    )
    async with monitor.open() as handle:
        await trio.sleep(5)
        handle.shutdown()
    (lag,) = recorder.of(turret.EventLoopLag)
    assert lag.worker == "monitor"
    assert 2.0 <= lag.lag <= 3.0
    stats = monitor.statistics()
    assert stats.loop_lag_max == lag.lag
    assert stats.loop_lag_last == 0.0


async def test_worker_events_reach_monitor_callbacks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    await backend.push(1)
    recorder = Recorder()
    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("w").backend(backend).build(noop))
        .on_event(recorder)
    )
    async with monitor.open() as handle:
        await trio.sleep(3)
        handle.shutdown()
    assert recorder.of(turret.TaskSucceeded)
    assert recorder.of(turret.WorkerStopped)


async def test_self_completing_worker_and_run_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    await backend.push(1)

    async def once(n: int, worker: turret.WorkerContext) -> None:
        worker.stop()

    monitor = Monitor().register(lambda i: WorkerBuilder("w").backend(backend).build(once))
    await monitor.run()  # returns on its own: the only worker completed
    assert monitor.statistics().statuses == {"w": WorkerStatus.COMPLETED}
