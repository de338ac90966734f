"""run_with_signal: SIGTERM/SIGINT start a graceful shutdown, a second signal forces it.

The signals are real: delivered to this process with ``os.kill`` while
``run_with_signal`` holds trio's signal receiver (pytest runs tests in the main thread).
"""

from __future__ import annotations

import os
import signal

import trio
import trio.testing

from turret import Monitor, TaskState, WorkerBuilder, WorkerStatus
from turret.backends import MemoryBackend


async def test_sigterm_drains_in_flight_tasks(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    ids = [await backend.push(n) for n in range(3)]
    running = 0
    all_running = trio.Event()

    async def slow(n: int) -> None:
        nonlocal running
        running += 1
        if running == 3:
            all_running.set()
        await trio.sleep(10)

    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("w").backend(backend).build(slow))
        .shutdown_timeout(60)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run_with_signal)
        await all_running.wait()
        os.kill(os.getpid(), signal.SIGTERM)
    assert all(backend.get(i).state is TaskState.DONE for i in ids)
    assert monitor.statistics().statuses == {"w": WorkerStatus.COMPLETED}
    assert monitor.statistics().stopping


async def test_second_signal_forces_shutdown(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    task_id = await backend.push(1)
    started = trio.Event()

    async def hang(n: int) -> None:
        started.set()
        await trio.sleep_forever()

    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("w").backend(backend).build(hang))
        .shutdown_timeout(1000)
    )
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run_with_signal)
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)  # graceful: would wait up to 1000 s
        os.kill(os.getpid(), signal.SIGINT)  # forced: cancel now, release the task
    assert trio.current_time() - t0 < 1000
    record = backend.get(task_id)
    assert record.state is TaskState.PENDING
    assert record.attempt == 0
