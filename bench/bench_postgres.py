"""PostgreSQL backend benchmarks, with procrastinate and pgqueuer measured in the same run.

Workloads (each on a fresh schema):

* throughput: 20 000 no-op tasks, concurrency 100, with 1 and 2 worker processes
  (tasks are pushed to a paused queue, workers start and go idle, the clock starts at
  resume, made on the producer's connection, which stays open until the clock stops);
* latency: enqueue-to-start p50/p99 of 300 tasks pushed one at a time, 5 ms apart, by
  another connection to idle workers (concurrency 10), each woken the way its system
  does by default (LISTEN/NOTIFY for all three);
* sleep: 2000 tasks sleeping 10 ms at concurrency 100 (ideal 0.2 s); the median of
  five runs, for every system (one run on this shared machine can be 1.3x another).

Peers run from ``.venv-bench`` (``make bench-peers`` creates it; they are never
project dependencies); when it is missing the peers are skipped with a note.

    make bench                      # or: .venv/bin/python bench/bench_postgres.py
    TURRET_BENCH_POSTGRES_URL=postgresql://... .venv/bin/python bench/bench_postgres.py
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _raw import raw_trio_sleep_s

DSN = os.environ.get("TURRET_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
N_THROUGHPUT = 20_000
N_LATENCY = 300
N_SLEEP = 2000
CONCURRENCY = 100
SLEEP_RUNS = 5


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 1):
            return True
    except OSError:
        return False


def with_search_path(dsn: str, schema: str) -> str:
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options=-csearch_path%3D{schema}"


_conns: dict[str, Any] = {}


def sql(statement: str, dsn: str = DSN) -> list[tuple[Any, ...]]:
    """Run one statement on a kept connection (new connections cost the server a fork)."""
    import psycopg

    conn = _conns.get(dsn)
    if conn is None:
        conn = _conns[dsn] = psycopg.connect(dsn, autocommit=True)
    cur = conn.execute(statement)
    return cur.fetchall() if cur.description else []


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# --- worker processes (any system) ----------------------------------------------------


class Workers:
    """Worker subprocesses: wait until each prints ``ready``; SIGTERM collects output."""

    def __init__(self, argv: list[str], count: int) -> None:
        self.procs = [
            subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            for _ in range(count)
        ]
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"worker did not start: {line!r}")

    def stop(self) -> list[str]:
        out = []
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            stdout, _ = p.communicate(timeout=60)
            out.append(stdout)
        return out


def wait_until(done: Any, timeout: float = 120.0) -> float:
    """Poll ``done()`` every 5 ms (a bounded wait on a real server); the time it took."""
    start = time.perf_counter()
    while not done():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(0.005)
    return time.perf_counter() - start


# --- turret ---------------------------------------------------------------------------


def turret_worker(schema: str, queue: str, mode: str, concurrency: str) -> None:
    import trio

    from turret import WorkerBuilder
    from turret.backends import PostgresBackend

    latencies: list[float] = []

    async def noop(args: Any) -> None:
        if mode == "latency":
            latencies.append(time.time() - args)
        elif mode == "sleep":
            await trio.sleep(0.01)

    async def main() -> None:
        async with PostgresBackend.open(DSN, schema=schema, poll_interval=5.0) as backend:
            worker = (
                WorkerBuilder(f"bench-{os.getpid()}")
                .backend(backend)
                .queue(queue)
                .concurrency(int(concurrency))
                .poll_interval(5.0)
                .build(noop)
            )
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(worker.run)
                    with trio.move_on_after(0.5):  # let it claim nothing and go idle
                        await backend.wait_for_work(queue)
                    print("ready", flush=True)
                    async for _ in signals:
                        worker.context.stop()
                        break
        print(json.dumps(latencies), flush=True)

    # As `turret worker` does at start-up (docs/operations.md, garbage collection pauses).
    gc.collect()
    gc.freeze()
    trio.run(main)


def turret_bench() -> dict[str, float]:
    import trio

    from turret import Job
    from turret.backends import PostgresBackend

    results: dict[str, float] = {}
    schema = f"bench_turret_{os.getpid()}"

    def remaining(queue: str) -> bool:
        # Two probes the partial indexes answer (tasks_claim, tasks_leased): one EXISTS
        # over the three states is a sequential scan of every row the earlier workloads
        # left, ~6 ms of the server's CPU every 5 ms once nothing is live.
        rows = sql(
            f"SELECT EXISTS (SELECT 1 FROM {schema}.tasks WHERE queue = '{queue}' "
            "AND state IN ('pending', 'scheduled')) OR EXISTS (SELECT 1 FROM "
            f"{schema}.tasks WHERE queue = '{queue}' AND state = 'leased')"
        )
        return not rows[0][0]

    def argv(queue: str, mode: str, concurrency: int) -> list[str]:
        return [sys.executable, __file__, "turret-worker", schema, queue, mode, str(concurrency)]

    async def timed(queue: str, n: int, mode: str, procs: int) -> float:
        """Push ``n`` tasks to a paused queue, start the workers, resume: the seconds
        until no task is left. The producer's backend stays open until the clock stops,
        so no connection is opened or closed (a server process forked or ended) while
        it runs: that churn cost the workers' first claims ~5 ms (measured)."""
        async with PostgresBackend.open(DSN, schema=schema) as backend:
            await backend.pause_queue(queue)
            for start in range(0, n, 1000):
                await backend.push_many(
                    [Job(None, queue=queue) for _ in range(start, min(n, start + 1000))]
                )
            workers = await trio.to_thread.run_sync(Workers, argv(queue, mode, CONCURRENCY), procs)
            try:
                await backend.resume_queue(queue)
                return await trio.to_thread.run_sync(wait_until, lambda: remaining(queue))
            finally:
                await trio.to_thread.run_sync(workers.stop)

    try:
        for procs in (1, 2):
            took = trio.run(timed, f"tp{procs}", N_THROUGHPUT, "noop", procs)
            results[f"throughput_{procs}p"] = N_THROUGHPUT / took

        runs = [trio.run(timed, f"sleep{run}", N_SLEEP, "sleep", 1) for run in range(SLEEP_RUNS)]
        results["sleep_s"] = statistics.median(runs)
        results["sleep_min_s"], results["sleep_max_s"] = min(runs), max(runs)

        workers = Workers(argv("lat", "latency", 10), 1)

        async def produce() -> None:
            async with PostgresBackend.open(DSN, schema=schema) as backend:
                for _ in range(N_LATENCY):
                    await backend.push(time.time(), queue="lat")
                    await trio.sleep(0.005)
                await trio.sleep(0.2)

        trio.run(produce)
        (out,) = workers.stop()
        lat = json.loads(out.strip().splitlines()[-1])
        results["latency_p50_ms"] = 1000 * percentile(lat, 0.5)
        results["latency_p99_ms"] = 1000 * percentile(lat, 0.99)
    finally:
        sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return results


# --- peers (run with .venv-bench's python) --------------------------------------------


def peer_main(system: str, schema: str) -> None:
    """Run every workload on one peer; print one JSON line of results."""
    import asyncio

    dsn = with_search_path(DSN, schema)
    results: dict[str, float] = {}
    if system == "pgqueuer":
        results = asyncio.run(_pgqueuer_all(dsn))
    elif system == "procrastinate":
        results = asyncio.run(_procrastinate_all(dsn))
    print(json.dumps(results), flush=True)


async def _peer_remaining(dsn: str, statement: str) -> bool:
    """The probe runs in a thread: a blocking query would stall the peer's event loop
    (its workers run in this process) for a round trip every 5 ms."""
    import asyncio

    rows = await asyncio.to_thread(sql, statement, dsn)
    return not rows[0][0]


async def _pgqueuer_all(dsn: str) -> dict[str, float]:
    import asyncio
    from datetime import timedelta

    import asyncpg
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.errors import FailingListenerError
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    results: dict[str, float] = {}
    pending = "SELECT EXISTS (SELECT 1 FROM pgqueuer)"

    async def run(entry: str, n: int, payload: bytes | None, mode: str, batch: int) -> float:
        await queries.enqueue([entry] * n, [payload] * n, [0] * n)
        wconn = await asyncpg.connect(dsn)
        # pgqueuer >= 0.x: the manager takes the repository (Queries), not the driver.
        qm = QueueManager(Queries(AsyncpgDriver(wconn)))

        @qm.entrypoint(entry, concurrency_limit=CONCURRENCY)
        async def handler(job: Any) -> None:
            if mode == "sleep":
                await asyncio.sleep(0.01)

        start = time.perf_counter()
        task = asyncio.create_task(qm.run(batch_size=batch))
        while not await _peer_remaining(dsn, pending):
            if task.done():  # the manager failed: surface its error instead of hanging
                await task
                raise RuntimeError("pgqueuer's QueueManager stopped before the work was done")
            await asyncio.sleep(0.005)
        took = time.perf_counter() - start
        qm.shutdown.set()
        await task
        await wconn.close()
        return took

    async def latency() -> list[float]:
        # What a user gets from defaults: run()'s batch_size (10) and dequeue_timeout
        # (30 s, a fallback only: the table's trigger NOTIFYs the manager's LISTEN).
        wconn = await asyncpg.connect(dsn)
        qm = QueueManager(Queries(AsyncpgDriver(wconn)))
        latencies: list[float] = []

        @qm.entrypoint("latency", concurrency_limit=10)
        async def handler(job: Any) -> None:
            latencies.append(time.time() - float(job.payload))

        task = asyncio.create_task(qm.run())
        # Idle before the first push: a NOTIFY probe comes back through the manager's
        # LISTEN, then it gets time to find the queue empty and wait (as turret's 0.5 s).
        while True:
            if task.done():
                await task
                raise RuntimeError("pgqueuer's QueueManager stopped before it was ready")
            with contextlib.suppress(FailingListenerError):
                await qm.listener_healthy(timedelta(seconds=1))
                break
        await asyncio.sleep(0.5)
        for _ in range(N_LATENCY):  # `conn` is the producer's own connection
            await queries.enqueue("latency", str(time.time()).encode(), 0)
            await asyncio.sleep(0.005)
        deadline = time.perf_counter() + 60
        while len(latencies) < N_LATENCY and not task.done():
            if time.perf_counter() > deadline:
                raise TimeoutError("pgqueuer did not start every latency job")
            await asyncio.sleep(0.005)
        qm.shutdown.set()
        await task
        await wconn.close()
        return latencies

    results["throughput_1p"] = N_THROUGHPUT / await run("noop", N_THROUGHPUT, None, "noop", 100)
    results["sleep_s"] = statistics.median(
        [await run("sleep", N_SLEEP, None, "sleep", 100) for _ in range(SLEEP_RUNS)]
    )
    lat = await latency()
    results["latency_p50_ms"] = 1000 * percentile(lat, 0.5)
    results["latency_p99_ms"] = 1000 * percentile(lat, 0.99)
    await conn.close()
    return results


async def _procrastinate_all(dsn: str) -> dict[str, float]:
    import asyncio

    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop", queue="noop")
    async def noop() -> None:
        return None

    @app.task(name="sleep", queue="sleep")
    async def sleep() -> None:
        await asyncio.sleep(0.01)

    latencies: list[float] = []

    @app.task(name="latency", queue="lat")
    async def latency(sent: float) -> None:
        latencies.append(time.time() - sent)

    results: dict[str, float] = {}
    pending = "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo','doing'))"
    async with app.open_async():
        await app.schema_manager.apply_schema_async()

        async def run(task: Any, queue: str, n: int) -> float:
            for start in range(0, n, 1000):
                await task.batch_defer_async(*[{} for _ in range(start, min(n, start + 1000))])
            begin = time.perf_counter()
            worker = asyncio.create_task(
                app.run_worker_async(queues=[queue], concurrency=CONCURRENCY, wait=True)
            )
            while not await _peer_remaining(dsn, pending):  # noqa: ASYNC110 - polling a server
                await asyncio.sleep(0.005)
            took = time.perf_counter() - begin
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            return took

        results["throughput_1p"] = 5000 / await run(noop, "noop", 5000)
        results["sleep_s"] = statistics.median(
            [await run(sleep, "sleep", N_SLEEP) for _ in range(SLEEP_RUNS)]
        )

        # Worker defaults a user gets: listen_notify=True, fetch_job_polling_interval=5 s
        # (a fallback only: the jobs table's trigger NOTIFYs the worker's LISTEN).
        worker = asyncio.create_task(
            app.run_worker_async(queues=["lat"], concurrency=10, wait=True)
        )
        # Idle before the first push: its listener connection sits in LISTEN, then it
        # gets time to find the queue empty and wait (as turret's 0.5 s).
        listening = (
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle' AND query LIKE 'LISTEN %procrastinate_queue_v1#lat%')"
        )
        deadline = time.perf_counter() + 30
        while not sql(listening, dsn)[0][0]:
            if worker.done():  # the worker failed: surface its error instead of hanging
                await worker
            if worker.done() or time.perf_counter() > deadline:
                raise RuntimeError("procrastinate's worker did not start listening")
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        # The producer has its own connector (its own connections), as another process would.
        producer = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
        async with producer.open_async():
            deferrer = producer.configure_task("latency", queue="lat")
            for _ in range(N_LATENCY):
                await deferrer.defer_async(sent=time.time())
                await asyncio.sleep(0.005)
        deadline = time.perf_counter() + 60
        while len(latencies) < N_LATENCY and not worker.done():
            if time.perf_counter() > deadline:
                raise TimeoutError("procrastinate did not start every latency job")
            await asyncio.sleep(0.005)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        results["latency_p50_ms"] = 1000 * percentile(latencies, 0.5)
        results["latency_p99_ms"] = 1000 * percentile(latencies, 0.99)
    return results


def peers() -> dict[str, dict[str, float] | str]:
    out: dict[str, dict[str, float] | str] = {}
    for system in ("pgqueuer", "procrastinate"):
        if not PEER_PYTHON.exists():
            out[system] = "skipped: no .venv-bench (run `make bench-peers`)"
            continue
        schema = f"bench_{system}_{os.getpid()}"
        sql(f"CREATE SCHEMA {schema}")
        try:
            proc = subprocess.run(
                [str(PEER_PYTHON), __file__, "peer", system, schema],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=ROOT,
            )
            if proc.returncode != 0:
                out[system] = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
            else:
                out[system] = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return out


def main(which: str = "all") -> int:
    """``which``: ``all`` (default), ``turret`` or ``peers``."""
    if not reachable(DSN):
        print(f"bench_postgres: skipped, no PostgreSQL at {DSN}")
        return 0
    mine: dict[str, float] = {}
    if which in ("all", "turret"):
        mine = turret_bench()
        print(f"turret (PostgresBackend), {N_THROUGHPUT} no-op tasks, concurrency {CONCURRENCY}:")
        for key, value in mine.items():
            print(f"  {key:18} {value:10.1f}")
        print(
            f"sleep workload: {mine['sleep_s']:.3f} s, median of {SLEEP_RUNS} runs "
            f"({mine['sleep_min_s']:.3f}-{mine['sleep_max_s']:.3f}; ideal 0.2 s, goal <= 0.35 s)",
            flush=True,
        )
        raw = raw_trio_sleep_s(SLEEP_RUNS)
        print(
            f"  the raw trio loop, no backend, now: {raw:.3f} s "
            f"(turret on PostgreSQL / raw = {mine['sleep_s'] / raw:.2f})",
            flush=True,
        )
    others = peers() if which in ("all", "peers") else {}
    for system, res in others.items():
        print(f"{system}:")
        if isinstance(res, str):
            print(f"  {res}")
            continue
        for key, value in res.items():
            print(f"  {key:18} {value:10.1f}")
    pgq = others.get("pgqueuer")
    if mine and isinstance(pgq, dict) and pgq.get("throughput_1p"):
        ratio = mine["throughput_1p"] / pgq["throughput_1p"]
        print(f"throughput vs pgqueuer (1 process): {ratio:.2f}x (goal >= 1.5x)")
    if mine and isinstance(pgq, dict) and "latency_p50_ms" in pgq:
        print(
            f"latency p50 vs pgqueuer: {mine['latency_p50_ms']:.1f} ms vs "
            f"{pgq['latency_p50_ms']:.1f} ms (goal: below)"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "turret-worker":
        turret_worker(*sys.argv[2:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "peer":
        peer_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main(*sys.argv[1:2]))
