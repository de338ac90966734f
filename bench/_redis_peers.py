"""Peer harness for bench/bench_redis.py: arq, SAQ, streaq, taskiq and dramatiq on Redis.

Runs under ``.venv-bench/bin/python`` (the peers are never project dependencies)::

    .venv-bench/bin/python bench/_redis_peers.py arq redis://127.0.0.1:6379/0

and prints one JSON object as its last stdout line (progress goes to stderr):
``throughput_1p`` (tasks/s), ``latency_p50_ms``, ``latency_p99_ms``, ``sleep_s``, ``note``.

Workloads, each with the same sizes as turret's (see bench_redis.py):

* throughput: N no-op tasks enqueued first (not timed); then one worker (in this
  process) is started and the clock runs from its start until the handler has run N
  times (handler completions, so a peer's final ack is not waited for);
* latency: with the worker started and idle, tasks are enqueued one at a time and the
  time from just before the enqueue call to the handler's start is recorded (at most
  ``LATENCY_BUDGET`` seconds of samples, so a polling peer reports fewer samples);
* sleep: 2000 tasks sleeping 10 ms, enqueued first, worker concurrency 100.

``TURRET_BENCH_WORKLOADS`` (comma-separated, default all three) picks the workloads run.

Each peer uses its own Redis database (arq 11, saq 12, streaq 13, taskiq 14, dramatiq 15;
``TURRET_BENCH_PEER_DB_BASE`` moves them): a database is used only when it is empty or
holds this harness's marker key, and is emptied afterwards with SCAN + UNLINK (never
FLUSHALL/FLUSHDB, never db 0). Asyncio peers run on uvloop when it is installed. Every
workload is bounded by a timeout; a failed workload is reported in ``note``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

N_THROUGHPUT = int(os.environ.get("TURRET_BENCH_N_THROUGHPUT", "20000"))
N_LATENCY = 300
N_SLEEP = 2000
SLEEP_RUNS = 5  # the median is reported, as for turret (bench_redis.py)
CONCURRENCY = 100
LATENCY_BUDGET = 20.0  # seconds of latency sampling at most
RUN_TIMEOUT = 90.0  # seconds for one timed batch
MARKER = "turret-bench-peer-db"
#: The workloads to run (``TURRET_BENCH_WORKLOADS=latency`` for the latency one only).
WORKLOADS = os.environ.get("TURRET_BENCH_WORKLOADS", "throughput,latency,sleep").split(",")
DB = {"arq": 11, "saq": 12, "streaq": 13, "taskiq": 14, "dramatiq": 15}


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def db_url(url: str, db: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


# --- database ownership and cleanup (plain redis-py, sync) ----------------------------


def claim_db(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        if client.dbsize() and not client.exists(MARKER):
            raise SystemExit(f"{url}: database not empty and not ours (no {MARKER!r} key)")
        clean_db(url)
        client.set(MARKER, "1")
    finally:
        client.close()


def quiet(url: str) -> None:
    """Before the latency workload: wait until Redis has freed what earlier workloads
    deleted (``UNLINK`` frees large values in a background thread), then half a second
    more; ``bench_redis.py`` does the same for turret."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for _ in range(500):
            if int(client.info("memory")["lazyfree_pending_objects"]) == 0:
                break
            time.sleep(0.01)
    finally:
        client.close()
    time.sleep(0.5)


def clean_db(url: str) -> None:
    """UNLINK every key but the marker (SCAN, batches of 500)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(count=1000):
            if key == MARKER.encode():
                continue
            batch.append(key)
            if len(batch) >= 500:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def release_db(url: str) -> None:
    import redis

    clean_db(url)
    client = redis.Redis.from_url(url)
    try:
        client.unlink(MARKER)
    finally:
        client.close()


# --- the shared measurement (async peers) ---------------------------------------------


class Probe:
    """Counts handler runs and records start times; the handlers call ``hit``."""

    def __init__(self) -> None:
        self.count = 0
        self.target = -1
        self.started: dict[int, float] = {}
        self.done: Any = None  # an asyncio.Event or a threading.Event
        self.lock = threading.Lock()

    def arm(self, target: int, event: Any) -> None:
        self.count = 0
        self.target = target
        self.started.clear()
        self.done = event

    def hit(self, n: int) -> None:
        self.started[n] = time.perf_counter()
        self.count += 1
        if self.count == self.target:
            self.done.set()

    def hit_threadsafe(self, n: int) -> None:
        with self.lock:
            self.hit(n)


def summarize(samples: list[float], out: dict[str, Any], notes: list[str]) -> None:
    if len(samples) >= 2:
        out["latency_p50_ms"] = statistics.median(samples) * 1000
        out["latency_p99_ms"] = statistics.quantiles(samples, n=100)[98] * 1000
    if len(samples) < N_LATENCY:
        notes.append(f"latency n={len(samples)}")


class AsyncPeer:
    """One async library: subclasses enqueue and run a worker; the loop is shared."""

    name = ""

    def __init__(self, url: str) -> None:
        self.url = url
        self.probe = Probe()

    async def enqueue(self, kind: str, n: int) -> None:
        raise NotImplementedError

    async def enqueue_many(self, kind: str, count: int) -> None:
        for i in range(0, count, 500):
            await asyncio.gather(*(self.enqueue(kind, k) for k in range(i, min(count, i + 500))))

    async def start_worker(self, kind: str) -> Callable[[], Awaitable[None]]:
        """Start a worker in the background; return its (async) stop function."""
        raise NotImplementedError

    async def setup(self) -> None:
        pass

    async def teardown(self) -> None:
        pass

    async def timed_batch(self, kind: str, count: int) -> float:
        await self.enqueue_many(kind, count)
        done = asyncio.Event()
        self.probe.arm(count, done)
        start = time.perf_counter()
        stop = await self.start_worker(kind)
        try:
            await asyncio.wait_for(done.wait(), RUN_TIMEOUT)
            return time.perf_counter() - start
        finally:
            await asyncio.wait_for(stop(), 15)
            clean_db(self.url)
            await self.reset()

    async def reset(self) -> None:
        """Forget state between workloads (after the db was cleaned)."""

    async def latency(self) -> list[float]:
        samples: list[float] = []
        stop = await self.start_worker("noop")
        try:
            await asyncio.sleep(0.5)  # started and idle
            deadline = time.monotonic() + LATENCY_BUDGET
            for i in range(N_LATENCY):
                if time.monotonic() > deadline:
                    break
                done = asyncio.Event()
                self.probe.arm(1, done)
                t0 = time.perf_counter()
                await self.enqueue("noop", i)
                await asyncio.wait_for(done.wait(), 10)
                samples.append(self.probe.started[i] - t0)
                await asyncio.sleep(0.002)  # idle again
        finally:
            await asyncio.wait_for(stop(), 15)
            clean_db(self.url)
            await self.reset()
        return samples

    async def handler(self, kind: str, n: int) -> None:
        self.probe.hit(n)
        if kind == "sleep":
            await asyncio.sleep(0.01)

    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        notes: list[str] = []
        await self.setup()
        try:
            steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []

            async def tp() -> None:
                out["throughput_1p"] = N_THROUGHPUT / await self.timed_batch("noop", N_THROUGHPUT)

            async def lat() -> None:
                summarize(await self.latency(), out, notes)

            async def slp() -> None:
                out["sleep_s"] = statistics.median(
                    [await self.timed_batch("sleep", N_SLEEP) for _ in range(SLEEP_RUNS)]
                )

            steps = [("throughput", tp), ("latency", lat), ("sleep", slp)]
            for label, step in steps:
                if label not in WORKLOADS:
                    continue
                log(f"{self.name}: {label}")
                if label == "latency":
                    quiet(self.url)
                try:
                    await step()
                except Exception as exc:  # report and go on with the next workload
                    traceback.print_exc(file=sys.stderr)
                    notes.append(f"{label} failed: {type(exc).__name__} {exc}"[:120])
                    clean_db(self.url)
                    await self.reset()
        finally:
            await self.teardown()
        if notes:
            out["note"] = "; ".join(notes)
        return out


# --- arq ------------------------------------------------------------------------------


class Arq(AsyncPeer):
    name = "arq"

    async def setup(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.settings = RedisSettings.from_dsn(self.url)
        self.pool = await create_pool(self.settings)
        self.queue = "bench"

    async def teardown(self) -> None:
        await self.pool.aclose()

    async def enqueue(self, kind: str, n: int) -> None:
        await self.pool.enqueue_job(kind, n, _queue_name=self.queue)

    async def start_worker(self, kind: str) -> Callable[[], Awaitable[None]]:
        from arq.worker import Worker, func

        async def noop(ctx: Any, n: int) -> None:
            await self.handler("noop", n)

        async def sleep(ctx: Any, n: int) -> None:
            await self.handler("sleep", n)

        worker = Worker(
            functions=[func(noop, name="noop"), func(sleep, name="sleep")],
            queue_name=self.queue,
            redis_settings=self.settings,
            max_jobs=CONCURRENCY,
            handle_signals=False,
            keep_result=0,  # no result records (turret keeps them; arq's default is 1 h)
        )
        task = asyncio.create_task(worker.main())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(asyncio.CancelledError):
                await worker.close()  # gathers its job tasks, cancelled just above

        return stop


# --- SAQ ------------------------------------------------------------------------------


class Saq(AsyncPeer):
    name = "saq"

    async def setup(self) -> None:
        from saq import Queue

        self.queue = Queue.from_url(self.url, name="bench")
        await self.queue.connect()

    async def teardown(self) -> None:
        await self.queue.disconnect()

    async def enqueue(self, kind: str, n: int) -> None:
        await self.queue.enqueue(kind, n=n)

    async def start_worker(self, kind: str) -> Callable[[], Awaitable[None]]:
        from saq import Worker

        async def noop(ctx: Any, *, n: int) -> None:
            await self.handler("noop", n)

        async def sleep(ctx: Any, *, n: int) -> None:
            await self.handler("sleep", n)

        worker = Worker(
            self.queue, functions=[("noop", noop), ("sleep", sleep)], concurrency=CONCURRENCY
        )
        task = asyncio.create_task(worker.start())

        async def stop() -> None:
            await worker.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

        return stop


# --- streaq ---------------------------------------------------------------------------


class Streaq(AsyncPeer):
    name = "streaq"

    def make(self) -> Any:
        from streaq import Worker

        worker: Any = Worker(
            redis_url=self.url,
            queue_name="bench",
            concurrency=CONCURRENCY,
            handle_signals=False,
        )

        @worker.task()
        async def noop(n: int) -> None:
            await self.handler("noop", n)

        @worker.task()
        async def sleep(n: int) -> None:
            await self.handler("sleep", n)

        worker.bench_tasks = {"noop": noop, "sleep": sleep}
        return worker

    async def setup(self) -> None:
        from contextlib import AsyncExitStack

        self.stack = AsyncExitStack()
        self.producer = self.make()
        await self.stack.enter_async_context(self.producer)

    async def teardown(self) -> None:
        await self.stack.aclose()

    async def enqueue(self, kind: str, n: int) -> None:
        await self.producer.bench_tasks[kind].enqueue(n)

    async def enqueue_many(self, kind: str, count: int) -> None:
        task = self.producer.bench_tasks[kind]
        for i in range(0, count, 1000):
            await self.producer.enqueue_many(
                [task.enqueue(k) for k in range(i, min(count, i + 1000))]
            )

    async def start_worker(self, kind: str) -> Callable[[], Awaitable[None]]:
        worker = self.make()
        task = asyncio.create_task(worker.run_async())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return stop


# --- taskiq (taskiq-redis RedisStreamBroker) ------------------------------------------


class Taskiq(AsyncPeer):
    name = "taskiq"

    def make(self) -> Any:
        import taskiq.compat

        if not hasattr(taskiq.compat, "model_dump"):
            # taskiq-redis 1.0.9 imports these pydantic helpers, gone from taskiq 0.13's
            # compat module; they serve only schedule sources and result backends.
            taskiq.compat.model_dump = lambda m: m.model_dump(mode="json")  # type: ignore[attr-defined]
            taskiq.compat.model_validate = lambda c, v: c.model_validate(v)  # type: ignore[attr-defined]
            self.shimmed = True
        from taskiq_redis import RedisStreamBroker

        broker = RedisStreamBroker(self.url, queue_name=f"bench-{uuid.uuid4().hex[:6]}")

        @broker.task(task_name="noop")
        async def noop(n: int) -> None:
            await self.handler("noop", n)

        @broker.task(task_name="sleep")
        async def sleep(n: int) -> None:
            await self.handler("sleep", n)

        broker.bench_tasks = {"noop": noop, "sleep": sleep}  # type: ignore[attr-defined]
        return broker

    async def setup(self) -> None:
        self.broker = self.make()
        await self.broker.startup()

    async def teardown(self) -> None:
        await self.broker.shutdown()

    async def reset(self) -> None:
        # the stream and its consumer group were deleted: a fresh broker recreates them
        await self.broker.shutdown()
        await self.setup()

    async def enqueue(self, kind: str, n: int) -> None:
        await self.broker.bench_tasks[kind].kiq(n)

    async def start_worker(self, kind: str) -> Callable[[], Awaitable[None]]:
        from taskiq.api import run_receiver_task

        task = asyncio.create_task(run_receiver_task(self.broker, max_async_tasks=CONCURRENCY))

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.broker.is_worker_process = False

        return stop


# --- dramatiq (threads; RedisBroker) --------------------------------------------------


def run_dramatiq(url: str) -> dict[str, Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    probe = Probe()
    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name="bench", max_retries=0)
    def noop(n: int) -> None:
        probe.hit_threadsafe(n)

    @dramatiq.actor(queue_name="bench", max_retries=0)
    def sleep(n: int) -> None:
        probe.hit_threadsafe(n)
        time.sleep(0.01)

    actors = {"noop": noop, "sleep": sleep}

    def start() -> Any:
        worker = dramatiq.Worker(broker, worker_threads=CONCURRENCY)
        worker.start()
        return worker

    def timed(kind: str, count: int) -> float:
        actor = actors[kind]
        for k in range(count):
            actor.send(k)
        done = threading.Event()
        probe.arm(count, done)
        t0 = time.perf_counter()
        worker = start()
        try:
            if not done.wait(RUN_TIMEOUT):
                raise TimeoutError(f"{probe.count}/{count} done after {RUN_TIMEOUT}s")
            return time.perf_counter() - t0
        finally:
            worker.stop(timeout=10_000)
            clean_db(url)

    def latency() -> list[float]:
        samples: list[float] = []
        worker = start()
        try:
            time.sleep(0.5)
            deadline = time.monotonic() + LATENCY_BUDGET
            for i in range(N_LATENCY):
                if time.monotonic() > deadline:
                    break
                done = threading.Event()
                probe.arm(1, done)
                t0 = time.perf_counter()
                noop.send(i)
                if not done.wait(10):
                    raise TimeoutError("a task did not start within 10 s")
                samples.append(probe.started[i] - t0)
                time.sleep(0.002)
        finally:
            worker.stop(timeout=10_000)
            clean_db(url)
        return samples

    out: dict[str, Any] = {}
    notes: list[str] = ["threads"]
    for label, step in (
        (
            "throughput",
            lambda: out.update(throughput_1p=N_THROUGHPUT / timed("noop", N_THROUGHPUT)),
        ),
        ("latency", lambda: summarize(latency(), out, notes)),
        (
            "sleep",
            lambda: out.update(
                sleep_s=statistics.median(timed("sleep", N_SLEEP) for _ in range(SLEEP_RUNS))
            ),
        ),
    ):
        if label not in WORKLOADS:
            continue
        log(f"dramatiq: {label}")
        if label == "latency":
            quiet(url)
        try:
            step()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            notes.append(f"{label} failed: {type(exc).__name__} {exc}"[:120])
            clean_db(url)
    broker.close()
    out["note"] = "; ".join(notes)
    return out


PEERS: dict[str, type[AsyncPeer]] = {"arq": Arq, "saq": Saq, "streaq": Streaq, "taskiq": Taskiq}


def main(system: str, url: str) -> int:
    if system not in DB:
        raise SystemExit(f"unknown peer {system!r}; one of {', '.join(DB)}")
    db = DB[system] + int(os.environ.get("TURRET_BENCH_PEER_DB_BASE", "11")) - 11
    if db == 0:
        raise SystemExit("refusing to use Redis db 0 for a peer")
    url = db_url(url, db)
    claim_db(url)
    try:
        if system == "dramatiq":
            result = run_dramatiq(url)
        else:
            peer = PEERS[system](url)
            try:
                import uvloop

                result = uvloop.run(peer.run())
                loop_note = "uvloop"
            except ImportError:
                result = asyncio.run(peer.run())
                loop_note = ""
            if loop_note:
                result["note"] = "; ".join(filter(None, [loop_note, result.get("note", "")]))
    finally:
        release_db(url)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379/0"))
