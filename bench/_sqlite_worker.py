"""A no-op worker process for bench_sqlite.py: ``python _sqlite_worker.py DB``."""

from __future__ import annotations

import gc
import signal
import sys

import trio

from turret import WorkerBuilder
from turret.backends import SqliteBackend


async def noop(n: int) -> None:
    pass


async def main(path: str) -> None:
    async with SqliteBackend.open(path, poll_interval=0.05) as backend:
        worker = (
            WorkerBuilder("bench")
            .backend(backend)
            .queue("bench")
            .concurrency(64)
            .poll_interval(0.05)
            .build(noop)
        )
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                print("ready", flush=True)
                async for _ in signals:
                    worker.context.stop()  # drains, then worker.run returns
                    break


if __name__ == "__main__":
    # As `turret worker` does at start-up (docs/operations.md, garbage collection pauses).
    gc.collect()
    gc.freeze()
    trio.run(main, sys.argv[1])
