"""SQLite backend: push rate, process rate (1 and 2 worker processes), latency.

* push: ``push_many`` in batches of 500 (one transaction each), and single ``push``;
* process: no-op tasks drained by one worker process, then by two (concurrency 64
  each); the queue is paused while the processes start, so start-up is not counted;
* latency: enqueue-to-start p50/p99 for an idle worker in the pushing process (woken
  by an in-process event) and in another process (woken by polling every 50 ms).

    make bench            # or: .venv/bin/python bench/bench_sqlite.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from turret import Job, TaskContext, WorkerBuilder
from turret.backends import SqliteBackend

WORKER = Path(__file__).resolve().parent / "_sqlite_worker.py"
BATCH = 500
PUSH_N = 20_000
SINGLE_N = 1_000
PROCESS_N = 10_000
LATENCY_N = 200


async def bench_push(path: Path) -> tuple[float, float]:
    async with SqliteBackend.open(path) as backend:
        start = time.perf_counter()
        for b in range(PUSH_N // BATCH):
            await backend.push_many([Job(b * BATCH + i, queue="push") for i in range(BATCH)])
        batched = PUSH_N / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(SINGLE_N):
            await backend.push(i, queue="push")
        single = SINGLE_N / (time.perf_counter() - start)
    return batched, single


async def bench_process(path: Path, processes: int) -> float:
    async with SqliteBackend.open(path) as backend:
        await backend.pause_queue("bench")
        for b in range(PROCESS_N // BATCH):
            await backend.push_many([Job(b * BATCH + i, queue="bench") for i in range(BATCH)])
        before = {s.queue: s for s in await backend.stats()}.get("bench")
        done0 = before.done if before else 0
        procs = [
            await trio.lowlevel.open_process(
                [sys.executable, str(WORKER), str(path)], stdout=subprocess.PIPE
            )
            for _ in range(processes)
        ]
        try:
            for p in procs:  # wait for "ready"
                assert p.stdout is not None
                with trio.fail_after(30):
                    assert (await p.stdout.receive_some(6)).startswith(b"ready")
            start = time.perf_counter()
            await backend.resume_queue("bench")
            with trio.fail_after(60):
                while True:
                    stats = {s.queue: s for s in await backend.stats()}["bench"]
                    if stats.done - done0 >= PROCESS_N:
                        break
                    await trio.sleep(0.02)
            rate = PROCESS_N / (time.perf_counter() - start)
        finally:
            for p in procs:
                p.terminate()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                for p in procs:
                    await p.wait()
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
    return rate


def percentiles(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100)
    return q[49] * 1000, q[98] * 1000


async def bench_latency_in_process(path: Path) -> tuple[float, float]:
    samples: list[float] = []
    started = trio.Event()

    async with SqliteBackend.open(path) as backend:

        async def handler(n: int, ctx: TaskContext) -> None:
            samples.append(time.time() - ctx.enqueued_at)
            started.set()

        worker = WorkerBuilder("lat").backend(backend).queue("lat").build(handler)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            for i in range(LATENCY_N):
                await trio.sleep(0.002)  # let the worker go idle
                started = trio.Event()
                await backend.push(i, queue="lat")
                with trio.fail_after(10):
                    await started.wait()
            worker.context.stop()
    return percentiles(samples)


async def bench_latency_cross_process(path: Path) -> tuple[float, float]:
    samples: list[float] = []
    async with SqliteBackend.open(path) as backend:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(WORKER), str(path)], stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            with trio.fail_after(30):
                assert (await proc.stdout.receive_some(6)).startswith(b"ready")
            for i in range(LATENCY_N // 2):
                await trio.sleep(0.01)
                task_id = await backend.push(i, queue="bench")
                with trio.fail_after(10):
                    while True:
                        info = await backend.get_task(task_id)
                        assert info is not None
                        if info.attempt:  # claimed: the worker started it
                            samples.append(time.time() - info.enqueued_at)
                            break
                        await trio.sleep(0.001)
        finally:
            proc.terminate()
            with trio.CancelScope(shield=True):
                await proc.wait()
    return percentiles(samples)


async def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        batched, single = await bench_push(Path(tmp) / "push.db")
        print(f"push_many (batches of {BATCH}): {batched:10,.0f} tasks/s")
        print(f"push (one per transaction):  {single:10,.0f} tasks/s")
        one = await bench_process(Path(tmp) / "p1.db", 1)
        print(f"process, 1 worker process:   {one:10,.0f} tasks/s")
        two = await bench_process(Path(tmp) / "p2.db", 2)
        print(f"process, 2 worker processes: {two:10,.0f} tasks/s  ({two / one:.2f}x)")
        p50, p99 = await bench_latency_in_process(Path(tmp) / "lat.db")
        print(f"enqueue-to-start, idle worker in-process:  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        p50, p99 = await bench_latency_cross_process(Path(tmp) / "latx.db")
        print(
            f"enqueue-to-claim, idle worker other process (poll 50 ms): "
            f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
        )
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    trio.run(main)
