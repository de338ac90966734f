"""Memory-backend throughput of no-op tasks vs a raw trio loop, measured in one run.

The raw loop is what a careful trio programmer writes by hand: a memory channel as the
queue, a CapacityLimiter for concurrency 100, and a nursery. turret does more per task
(JSON payloads, leases with fencing tokens, settle, events, readiness through the stack),
so the figure that matters is the ratio. Goal: >= 0.5.

    make bench            # or: .venv/bin/python bench/bench_worker.py
"""

from __future__ import annotations

import statistics
import sys
import time

import trio
from _raw import raw_loop

import turret
from turret.backends import MemoryBackend

N = 20_000
CONCURRENCY = 100
ROUNDS = 9


async def raw_trio() -> float:
    return N / await raw_loop(N, CONCURRENCY, trio.lowlevel.checkpoint)


async def turret_memory() -> float:
    backend = MemoryBackend()
    await backend.push_many(turret.Job(i) for i in range(N))
    done = trio.Event()
    count = 0

    async def handler(n: int) -> None:
        nonlocal count
        await trio.lowlevel.checkpoint()
        count += 1
        if count == N:
            done.set()

    worker = turret.WorkerBuilder("bench").backend(backend).concurrency(CONCURRENCY).build(handler)
    start = time.perf_counter()
    await worker.run_until(done)
    elapsed = time.perf_counter() - start
    assert backend.statistics().queues["default"].done == N
    return N / elapsed


def main() -> int:
    raw, ours, ratios = [], [], []
    for _ in range(ROUNDS):
        # Each round measures both back to back and keeps their ratio, so a burst of
        # load on this shared machine skews one round, not the figure (the median).
        raw.append(trio.run(raw_trio))
        ours.append(trio.run(turret_memory))
        ratios.append(ours[-1] / raw[-1])
    r, t = statistics.median(raw), statistics.median(ours)
    print(f"no-op tasks, concurrency {CONCURRENCY}, {N} tasks, {ROUNDS} rounds (medians)")
    print(f"  raw trio loop      {r:10.0f} tasks/s")
    print(f"  turret (memory)    {t:10.0f} tasks/s")
    print(
        f"  ratio turret/raw   {statistics.median(ratios):10.2f}   (goal >= 0.50; "
        f"rounds {min(ratios):.2f}-{max(ratios):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
