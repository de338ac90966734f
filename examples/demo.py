"""turret's demo: a worker processing a queue of image-resize jobs.

Run with ``make demo``. It pushes jobs (a few flaky, one bad), runs a worker with a
concurrency limit until the queue is drained, and prints what happened.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import attrs
import trio

import turret
from turret.backends import SqliteBackend
from turret.layers import ConcurrencyLimitLayer


@attrs.frozen
class Resize:
    image: str
    width: int


async def resize(job: Resize, ctx: turret.TaskContext) -> str:
    if job.width <= 0:
        raise turret.Abort(f"width must be positive, got {job.width}")
    await trio.sleep(random.uniform(0.01, 0.05))  # the actual work
    if job.image.startswith("flaky") and ctx.attempt == 1:
        raise ConnectionError("storage timed out")  # retried with backoff
    return f"{job.image}@{job.width}"


async def drained(backend: SqliteBackend, done: trio.Event) -> None:
    """Set ``done`` once nothing is pending, scheduled or leased."""
    while True:
        await trio.sleep(0.05)
        stats = {s.queue: s for s in await backend.stats()}["default"]
        if stats.pending + stats.scheduled + stats.leased == 0:
            done.set()
            return


async def run(backend: SqliteBackend) -> None:
    jobs = [turret.Job(Resize(f"img-{i:03}.png", 100 + i)) for i in range(200)]
    jobs += [turret.Job(Resize(f"flaky-{i}.png", 300)) for i in range(5)]
    jobs += [turret.Job(Resize("broken.png", 0)), turret.Job({"image": "no-width.png"})]
    await backend.push_many(jobs)

    counts: Counter[str] = Counter()

    def on_event(event: turret.Event) -> None:
        counts[type(event).__name__] += 1
        if isinstance(event, turret.TaskDeadLettered):
            print(f"  dead letter {event.task.id}: {event.reason}")

    worker = (
        turret.WorkerBuilder("resizer")
        .backend(backend)
        .layer(ConcurrencyLimitLayer(50))
        .concurrency(100)
        .backoff(turret.ExponentialBackoff(base=0.1, jitter=False))
        .on_event(on_event)
        .build(resize)
    )
    print(f"turret demo: {len(jobs)} jobs in SQLite at {backend.path}")
    start = time.perf_counter()
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drained, backend, done)
        await worker.run_until(done)
    elapsed = time.perf_counter() - start
    stats = {s.queue: s for s in await backend.stats()}["default"]
    print(f"drained in {elapsed:.2f}s: {stats.done} done, {stats.dead} dead letters")
    print(f"events: {dict(sorted(counts.items()))}")
    print(f"worker: {worker.context.statistics()}")
    if stats.done != 205 or stats.dead != 2:
        sys.exit("demo: unexpected outcome")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteBackend.open(Path(tmp) / "demo.db", poll_interval=0.2) as backend:
            await run(backend)


if __name__ == "__main__":
    trio.run(main)
