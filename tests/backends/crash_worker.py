"""A worker process for the crash kit (``crashkit.py``), killed at random by it.

Usage: ``python crash_worker.py SPEC LEDGER NAME``. ``SPEC`` names the store (see
:func:`open_spec`); the handler appends ``S <id> <attempt> <pid>`` when it starts a
task and ``E ...`` when it ends, to ``LEDGER`` (O_APPEND: a SIGKILL never tears a
line). SIGTERM stops the worker gracefully.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from turret import Backend, TaskContext, WorkerBuilder
from turret.backends import SqliteBackend

QUEUE = "crash"
LEASE_TTL = 1.0
POLL = 0.05


def open_spec(spec: str, **options: Any) -> AbstractAsyncContextManager[Backend]:
    """Open a store from a kit's ``process_spec``; add PostgreSQL/Redis schemes here."""
    scheme, _, rest = spec.partition(":")
    if scheme == "sqlite":
        return SqliteBackend.open(rest, **options)
    if scheme == "redis":  # redis:<prefix>|<url>
        from turret.backends import RedisBackend

        prefix, _, url = rest.partition("|")
        options.pop("poll_interval", None)
        return RedisBackend.open(url, prefix=prefix, **options)
    if scheme == "postgres":  # postgres:<schema>|<dsn> (issue 6)
        from turret.backends import PostgresBackend

        schema, _, dsn = rest.partition("|")
        return PostgresBackend.open(dsn, schema=schema, **options)
    raise ValueError(f"unknown store spec {spec!r}; expected 'sqlite:<path>'")


async def main(spec: str, ledger: str, name: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    async def handler(n: int, ctx: TaskContext) -> None:
        os.write(fd, f"S {ctx.id} {ctx.attempt} {pid}\n".encode())
        await trio.sleep(random.uniform(0.05, 0.3))
        os.write(fd, f"E {ctx.id} {ctx.attempt} {pid}\n".encode())

    async with open_spec(spec, poll_interval=POLL) as backend:
        worker = (
            WorkerBuilder(name)
            .backend(backend)
            .queue(QUEUE)
            .lease_ttl(LEASE_TTL)
            .poll_interval(POLL)
            .concurrency(8)
            .build(handler)
        )
        # Installed before the worker claims anything: a SIGTERM that comes earlier
        # kills the process by default, before it holds any lease.
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_sigterm() -> None:
                    async for _ in signals:
                        worker.context.stop()
                        return

                nursery.start_soon(stop_on_sigterm)
                await worker.run()
                nursery.cancel_scope.cancel()
    os.close(fd)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
