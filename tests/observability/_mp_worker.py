"""A worker process for ``test_multiprocess.py``: prometheus_client multiprocess mode.

Usage: ``python _mp_worker.py DB TOTAL RENDEZVOUS`` with ``PROMETHEUS_MULTIPROC_DIR``
set in the environment (prometheus_client reads it at import). It wires its worker the
way ``docs/observability.md`` shows for several processes: a :class:`Metrics` on the
global registry, its layer and its event callback. It drains the SQLite queue ``DB``
(``TOTAL`` tasks; ``n % 4 == 0`` fails on its first attempt), stops its worker, prints
one JSON line (its pid and worker statistics), then waits for EOF on stdin and exits.

Each process's first task waits until every process has started one (a file per
process in ``RENDEZVOUS``), so each process settles at least one task.
"""

from __future__ import annotations

import json
import os
import sys

import trio
from prometheus_client import values

from turret import ConstantBackoff, TaskContext, WorkerBuilder
from turret.backends import SqliteBackend
from turret.observability import Metrics

QUEUE = "mp"
PROCESSES = 2
POLL = 0.02


def flaky(n: int) -> bool:
    """The tasks that fail once (and are retried)."""
    return n % 4 == 0


async def rendezvous(folder: trio.Path) -> None:
    await (folder / str(os.getpid())).touch()
    while True:
        if len(list(await folder.iterdir())) >= PROCESSES:
            return
        await trio.sleep(POLL)


async def main(db: str, total: int, meeting: str) -> None:
    metrics = Metrics()  # the global registry: multiprocess values go to files
    first = True

    async def handler(n: int, ctx: TaskContext) -> None:
        nonlocal first
        if first:
            first = False
            await rendezvous(trio.Path(meeting))
        await trio.sleep(0.005)
        if flaky(n) and ctx.attempt == 1:
            raise ConnectionError(f"task {n} fails once")

    async with SqliteBackend.open(db, poll_interval=POLL) as backend:
        worker = (
            WorkerBuilder("mp")
            .backend(backend)
            .queue(QUEUE)
            .concurrency(1)
            .poll_interval(POLL)
            .backoff(ConstantBackoff(0.0))
            .layer(metrics.layer())
            .on_event(metrics.on_event)
            .build(handler)
        )

        async def stop_when_drained() -> None:
            while True:
                (s,) = [s for s in await backend.stats() if s.queue == QUEUE]
                if s.done + s.dead == total and s.pending + s.scheduled + s.leased == 0:
                    worker.context.stop()
                    return
                await trio.sleep(POLL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_drained)
            await worker.run()
    s = worker.context.statistics()
    report = {
        "pid": os.getpid(),
        "multiprocess": bool(getattr(values.ValueClass, "_multiprocess", False)),
        "succeeded": s.succeeded,
        "retried": s.retried,
        "dead_lettered": s.dead_lettered,
    }
    print(json.dumps(report), flush=True)
    await trio.to_thread.run_sync(sys.stdin.buffer.read)  # until the test closes stdin


async def bounded_main(db: str, total: str, meeting: str) -> None:
    with trio.fail_after(60):  # never outlive a hung test
        await main(db, int(total), meeting)


if __name__ == "__main__":
    db, total, meeting = sys.argv[1:4]
    trio.run(bounded_main, db, total, meeting)
