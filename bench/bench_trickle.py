"""A trickle to an idle worker: what one task costs when tasks come one at a time.

300 tasks are pushed one at a time, 2 ms apart, to an idle worker at concurrency 100 in
the same process, on each backend that is reachable (memory and SQLite always; Redis
and PostgreSQL on their default local addresses, or TURRET_REDIS_URL and
TURRET_POSTGRES_URL). Printed per backend: the process's CPU time per task (the push
included), how busy the process was, and the enqueue-to-start latency p50/p99.

An idle worker that wakes for one task claims for one slot, then for four (which finds
nothing): it does not reserve and spawn every free slot for each task.

    .venv/bin/python bench/bench_trickle.py
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import trio

from turret import Backend, WorkerBuilder
from turret.backends import MemoryBackend, SqliteBackend

N = 300
GAP = 0.002
REDIS_URL = os.environ.get("TURRET_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get("TURRET_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


@asynccontextmanager
async def memory() -> AsyncIterator[Backend]:
    yield MemoryBackend()


@asynccontextmanager
async def sqlite() -> AsyncIterator[Backend]:
    with tempfile.TemporaryDirectory() as tmp:
        async with SqliteBackend.open(Path(tmp) / "trickle.db") as backend:
            yield backend


@asynccontextmanager
async def redis() -> AsyncIterator[Backend]:
    from turret.backends import RedisBackend

    async with RedisBackend.open(REDIS_URL, prefix=f"bench-trickle:{uuid.uuid4().hex[:8]}:") as b:
        try:
            yield b
        finally:
            await b.purge()


@asynccontextmanager
async def postgres() -> AsyncIterator[Backend]:
    import psycopg

    from turret.backends import PostgresBackend

    schema = f"bench_trickle_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresBackend.open(POSTGRES_URL, schema=schema) as backend:
            yield backend
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


BACKENDS: dict[str, Callable[[], AbstractAsyncContextManager[Backend]]] = {
    "memory": memory,
    "sqlite": sqlite,
    "redis": redis,
    "postgres": postgres,
}


async def trickle(open_backend: Callable[[], AbstractAsyncContextManager[Backend]]) -> str:
    async with open_backend() as backend:
        started: dict[int, float] = {}
        got = trio.Event()

        async def handler(n: int) -> None:
            started[n] = time.perf_counter()
            got.set()

        worker = WorkerBuilder("trickle").backend(backend).concurrency(100).build(handler)
        samples: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await trio.sleep(0.3)  # idle
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for i in range(N):
                got = trio.Event()
                t0 = time.perf_counter()
                await backend.push(i)
                await got.wait()
                samples.append(started[i] - t0)
                await trio.sleep(GAP)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            worker.context.stop()
    samples.sort()
    return (
        f"{cpu / N * 1e6:8.0f} us CPU/task {100 * cpu / wall:5.0f}% busy "
        f"{samples[N // 2] * 1e3:8.2f} ms p50 {samples[int(N * 0.99)] * 1e3:8.2f} ms p99"
    )


async def main() -> None:
    print(f"trickle: {N} tasks pushed one at a time, {GAP * 1e3:g} ms apart, concurrency 100")
    for name, open_backend in BACKENDS.items():
        try:
            line = await trickle(open_backend)
        except (OSError, ImportError) as exc:
            line = f"skipped ({type(exc).__name__}: {exc})"
        print(f"{name:10} {line}")


if __name__ == "__main__":
    trio.run(main)
