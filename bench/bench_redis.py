"""Redis backend benchmarks, with arq, SAQ, streaq, taskiq and dramatiq in the same run.

Workloads (each under a fresh key prefix / queue name, deleted afterwards):

* throughput: 20 000 no-op tasks, concurrency 100, with 1 and 2 worker processes
  (turret: tasks pushed to a paused queue, workers start and go idle, the clock starts
  at resume and stops when all are acked; peers, 1 process only: the tasks are
  enqueued first, the clock starts when the worker is started and stops when the
  handler has run for all of them -- see ``_redis_peers.py``);
* latency: enqueue-to-start p50/p99 of 300 tasks pushed one at a time to idle workers;
  the median of three rounds, the systems taking turns;
* sleep: 2000 tasks sleeping 10 ms at concurrency 100 (ideal 0.2 s); the median of
  five runs, for every system (one run on this shared machine can be 1.3x another).

Peers run from ``.venv-bench`` (``make bench-peers`` creates it; they are never project
dependencies); when it is missing the peers are skipped with a note.

    make bench                          # or: .venv/bin/python bench/bench_redis.py
    .venv/bin/python bench/bench_redis.py turret      # turret only
    .venv/bin/python bench/bench_redis.py latency 5 taskiq saq   # latency only, 5 rounds
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _raw import raw_trio_sleep_s

URL = os.environ.get("TURRET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
PEERS_SCRIPT = Path(__file__).resolve().parent / "_redis_peers.py"
N_THROUGHPUT = 20_000
N_LATENCY = 300
N_SLEEP = 2000
SLEEP_RUNS = 5
LATENCY_ROUNDS = 3
CONCURRENCY = 100
QUEUE = "bench"


# --- turret -------------------------------------------------------------------------


def _worker_process(prefix: str, kind: str) -> None:
    """A turret worker process: prints ``ready`` once idle, exits on SIGTERM."""
    import signal

    import trio

    from turret import WorkerBuilder
    from turret.backends import RedisBackend

    async def main() -> None:
        async def noop(n: int) -> None:
            pass

        async def nap(n: int) -> None:
            await trio.sleep(0.01)

        async with RedisBackend.open(URL, prefix=prefix) as backend:
            worker = (
                WorkerBuilder(f"w{os.getpid()}")
                .backend(backend)
                .queue(QUEUE)
                .concurrency(CONCURRENCY)
                .build(noop if kind == "noop" else nap)
            )
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:

                    async def stop() -> None:
                        async for _ in signals:
                            worker.context.stop()
                            return

                    nursery.start_soon(stop)
                    nursery.start_soon(worker.run)
                    await trio.sleep(0.3)
                    print("ready", flush=True)

    # As `turret worker` does at start-up (docs/operations.md, garbage collection pauses).
    gc.collect()
    gc.freeze()
    trio.run(main)


def _spawn(prefix: str, kind: str, n: int) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "_worker", prefix, kind],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"worker failed to start: {line!r}")
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def turret_results(
    workloads: tuple[str, ...] = ("throughput", "latency", "sleep"),
) -> dict[str, Any]:
    import trio

    from turret import Job
    from turret.backends import RedisBackend

    out: dict[str, Any] = {}

    async def run_batch(procs_n: int, n: int, kind: str) -> float:
        prefix = f"turret-bench:{uuid.uuid4().hex[:8]}:"
        async with RedisBackend.open(URL, prefix=prefix) as backend:
            try:
                await backend.pause_queue(QUEUE)
                for i in range(0, n, 5000):
                    await backend.push_many(Job(k, queue=QUEUE) for k in range(i, min(n, i + 5000)))
                procs = await trio.to_thread.run_sync(_spawn, prefix, kind, procs_n)
                try:
                    start = time.perf_counter()
                    await backend.resume_queue(QUEUE)
                    while True:
                        stats = {s.queue: s for s in await backend.stats()}
                        if stats[QUEUE].done >= n:
                            break
                        await trio.sleep(0.002)
                    elapsed = time.perf_counter() - start
                finally:
                    await trio.to_thread.run_sync(_stop, procs)
            finally:
                await backend.purge()
        return elapsed

    async def latency() -> list[float]:
        from turret import WorkerBuilder

        prefix = f"turret-bench:{uuid.uuid4().hex[:8]}:"
        started: dict[int, float] = {}
        got = trio.Event()

        async def handler(n: int) -> None:
            started[n] = time.perf_counter()
            got.set()

        async with (
            RedisBackend.open(URL, prefix=prefix) as consumer,
            RedisBackend.open(URL, prefix=prefix) as producer,
        ):
            worker = (
                WorkerBuilder("lat")
                .backend(consumer)
                .queue(QUEUE)
                .concurrency(CONCURRENCY)
                .build(handler)
            )
            samples = []
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(worker.run)
                    await trio.sleep(0.3)
                    for i in range(N_LATENCY):
                        got = trio.Event()
                        t0 = time.perf_counter()
                        await producer.push(i, queue=QUEUE)
                        await got.wait()
                        samples.append(started[i] - t0)
                        await trio.sleep(0.002)  # idle again
                    worker.context.stop()
            finally:
                await producer.purge()
        return samples

    async def settled() -> None:
        """Wait until Redis has freed what the throughput runs deleted (``UNLINK`` frees
        large values in a background thread), then half a second more: the latency
        workload measures idle workers on a quiet server (``_redis_peers.quiet`` does
        the same for the peers)."""
        import coredis

        client: coredis.Redis[str] = coredis.Redis.from_url(URL, decode_responses=True)
        async with client:
            for _ in range(500):
                if str((await client.info("memory"))["lazyfree_pending_objects"]) == "0":
                    break
                await trio.sleep(0.01)
        await trio.sleep(0.5)

    async def main() -> None:
        if "throughput" in workloads:
            for procs_n in (1, 2):
                elapsed = await run_batch(procs_n, N_THROUGHPUT, "noop")
                out[f"throughput_{procs_n}p"] = N_THROUGHPUT / elapsed
        if "latency" in workloads:
            await settled()
            lat = await latency()
            out["latency_p50_ms"] = statistics.median(lat) * 1000
            out["latency_p99_ms"] = statistics.quantiles(lat, n=100)[98] * 1000
        if "sleep" in workloads:
            runs = [await run_batch(1, N_SLEEP, "sleep") for _ in range(SLEEP_RUNS)]
            out["sleep_s"] = statistics.median(runs)
            out["sleep_min_s"], out["sleep_max_s"] = min(runs), max(runs)

    trio.run(main)
    return out


# --- peers (run with .venv-bench's python) --------------------------------------------


def peer_results(system: str, workloads: str = "") -> dict[str, Any] | str:
    if not PEER_PYTHON.exists():
        return "skipped: no .venv-bench (run `make bench-peers`)"
    if not PEERS_SCRIPT.exists():
        return f"not measured: the peer harness {PEERS_SCRIPT.name} is not written yet"
    env = dict(os.environ)
    if workloads:
        env["TURRET_BENCH_WORKLOADS"] = workloads
    proc = subprocess.run(
        [str(PEER_PYTHON), str(PEERS_SCRIPT), system, URL],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env=env,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return "failed: " + " | ".join(tail)
    try:
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return f"failed: unexpected output {proc.stdout[-200:]!r}"


PEERS = ["arq", "saq", "streaq", "taskiq", "dramatiq"]


def _fmt(value: Any, unit: str) -> str:
    if isinstance(value, (int, float)):
        return f"{value:10.1f} {unit}" if unit != "tasks/s" else f"{value:10.0f} {unit}"
    return "         -"


def _latency_run(name: str) -> dict[str, Any] | str:
    """One run of the latency workload alone, on turret or the peer ``name``."""
    return turret_results(("latency",)) if name == "turret" else peer_results(name, "latency")


def latency_rounds(rounds: int, peers: list[str]) -> int:
    """The latency workload only, turret and ``peers`` alternating, ``rounds`` times
    (the machine's noise hits every system alike); prints each run and the ranges."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in ["turret", *peers]}
    for k in range(rounds):
        for name in runs:
            r = _latency_run(name)
            if isinstance(r, str) or "latency_p50_ms" not in r:
                print(f"round {k + 1} {name:8} {r}", flush=True)
                continue
            runs[name].append((r["latency_p50_ms"], r["latency_p99_ms"]))
            print(
                f"round {k + 1} {name:8} p50 {r['latency_p50_ms']:6.3f} ms"
                f"  p99 {r['latency_p99_ms']:6.3f} ms",
                flush=True,
            )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} CPUs")
    for name, got in runs.items():
        if got:
            p50s = sorted(p for p, _ in got)
            p99s = sorted(p for _, p in got)
            print(
                f"{name:8} p50 {p50s[0]:.3f}-{p50s[-1]:.3f} ms"
                f" (median {statistics.median(p50s):.3f})"
                f"  p99 {p99s[0]:.3f}-{p99s[-1]:.3f} ms  ({len(got)} runs)"
            )
    return 0


def _more_latency_rounds(results: dict[str, dict[str, Any] | str]) -> None:
    """Measure the latency workload ``LATENCY_ROUNDS - 1`` more times, every system in
    turn, and keep each system's median p50 and p99 (a single run of a few hundred
    sub-millisecond samples moves by a fifth with this shared machine's load)."""
    runs = {
        name: [(r["latency_p50_ms"], r["latency_p99_ms"])]
        for name, r in results.items()
        if isinstance(r, dict) and "latency_p50_ms" in r
    }
    for _ in range(LATENCY_ROUNDS - 1):
        for name, got in runs.items():
            r = _latency_run(name)
            if isinstance(r, dict) and "latency_p50_ms" in r:
                got.append((r["latency_p50_ms"], r["latency_p99_ms"]))
    for name, got in runs.items():
        result = results[name]
        assert isinstance(result, dict)
        result["latency_p50_ms"] = statistics.median(p for p, _ in got)
        result["latency_p99_ms"] = statistics.median(p for _, p in got)
        result["latency_rounds"] = len(got)


def main(which: str = "all") -> int:
    results: dict[str, dict[str, Any] | str] = {"turret": turret_results()}
    if which == "all":
        for peer in PEERS:
            results[peer] = peer_results(peer)
    _more_latency_rounds(results)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} CPUs")
    print(
        f"Redis: no-op throughput ({N_THROUGHPUT} tasks, concurrency {CONCURRENCY}), "
        f"latency ({N_LATENCY} tasks to idle workers; the median of {LATENCY_ROUNDS} rounds, "
        f"the systems taking turns), sleep ({N_SLEEP} x 10 ms, ideal 0.2 s)"
    )
    header = f"{'system':10} {'1 proc':>18} {'2 procs':>18} {'p50':>12} {'p99':>12} {'sleep':>10}"
    print(header)
    for name, r in results.items():
        if isinstance(r, str):
            print(f"{name:10} {r}")
            continue
        print(
            f"{name:10} {_fmt(r.get('throughput_1p'), 'tasks/s'):>18} "
            f"{_fmt(r.get('throughput_2p'), 'tasks/s'):>18} "
            f"{_fmt(r.get('latency_p50_ms'), 'ms'):>12} {_fmt(r.get('latency_p99_ms'), 'ms'):>12} "
            f"{_fmt(r.get('sleep_s'), 's'):>10}" + (f"   ({r['note']})" if r.get("note") else "")
        )
    ours = results["turret"]
    assert isinstance(ours, dict)
    peers = [r for n, r in results.items() if n != "turret" and isinstance(r, dict)]
    best_tp = max((r["throughput_1p"] for r in peers if "throughput_1p" in r), default=None)
    best_p50 = min((r["latency_p50_ms"] for r in peers if "latency_p50_ms" in r), default=None)
    if best_tp:
        print(
            f"throughput 1 proc: turret / best peer = {ours['throughput_1p'] / best_tp:.2f}"
            " (goal >= 2)"
        )
    if best_p50:
        print(f"latency p50: turret {ours['latency_p50_ms']:.2f} ms vs best peer {best_p50:.2f} ms")
    print(
        f"sleep workload: {ours['sleep_s']:.3f} s, median of {SLEEP_RUNS} runs "
        f"({ours['sleep_min_s']:.3f}-{ours['sleep_max_s']:.3f}; goal <= 0.35 s)"
    )
    raw = raw_trio_sleep_s(SLEEP_RUNS)
    print(
        f"  the raw trio loop, no backend, now: {raw:.3f} s "
        f"(turret on Redis / raw = {ours['sleep_s'] / raw:.2f})"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        _worker_process(sys.argv[2], sys.argv[3])
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "latency":
        n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
        sys.exit(latency_rounds(n, sys.argv[3:] or ["taskiq"]))
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "all"))
