"""Throughput of no-op tasks through the layer library, relative to the bare stack.

Run: python bench/bench_layers.py   (``make bench``). Finishes in well under a minute.

Every figure comes from this run: the bare worker (memory backend, no user layers) is
measured with the same task count and interleaved with the layered runs, and each
configuration keeps its best of several rounds (the bare and six-layer stacks, whose
ratio is the goal, alternate for more rounds than the single layers). Printed:

- the ratio of the six-layer stack's throughput to the bare stack's (goal >= 0.75), and
  the same ratio in CPU time, which other processes on a busy machine disturb less;
- each layer's overhead alone, in microseconds per task: end to end in a worker (its
  time minus the bare time), and for a direct reserve+call over a no-op service;
- for reference, trio's own cost of one ``CancelScope`` with a deadline around a call
  (what ``trio.fail_after`` costs, and so the floor of ``TimeoutLayer``).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

import turret
import turret.testing
from turret.backends import MemoryBackend
from turret.layers import (
    CatchPanicLayer,
    CircuitBreakerLayer,
    ConcurrencyLimitLayer,
    RateLimitLayer,
    RetryLayer,
    RetryPolicy,
    TimeoutLayer,
)

TASKS = 2000
ROUNDS = 5
HEADLINE_ROUNDS = 12  # bare and six layers alternate this many times in all
CONCURRENCY = 64
GOAL = 0.75

Layer = turret.Layer[turret.Task[Any], Any]

LAYERS: dict[str, Callable[[], Layer]] = {
    "concurrency": lambda: ConcurrencyLimitLayer(CONCURRENCY),
    "rate_limit": lambda: RateLimitLayer(1e9, per=1.0, burst=1_000_000),
    "timeout": lambda: TimeoutLayer(60),
    "retry": lambda: RetryLayer(RetryPolicy(max_attempts=3)),
    "catch_panic": lambda: CatchPanicLayer(),
    "circuit_breaker": lambda: CircuitBreakerLayer(failure_threshold=5, recovery_time=30),
}


async def _run(layers: list[Layer]) -> tuple[float, float]:
    """Wall-clock and CPU seconds for TASKS no-op tasks through a worker."""
    backend = MemoryBackend()
    await backend.push_many(turret.Job(i) for i in range(TASKS))
    done = 0
    finished = trio.Event()

    async def handler(n: int) -> None:
        nonlocal done
        done += 1
        if done == TASKS:
            finished.set()

    builder = turret.WorkerBuilder("bench").backend(backend).concurrency(CONCURRENCY)
    for layer in layers:
        builder = builder.layer(layer)
    worker = builder.build(handler)
    async with trio.open_nursery() as nursery:
        start = time.perf_counter()
        cpu = time.process_time()
        nursery.start_soon(worker.run)
        await finished.wait()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        worker.context.stop()
    assert backend.statistics().queues["default"].done == TASKS
    return elapsed, cpu


def measure(
    configs: dict[str, Callable[[], list[Layer]]],
    rounds: int,
    best: dict[str, float],
    best_cpu: dict[str, float],
) -> None:
    """Best wall-clock and CPU seconds per configuration (updated in ``best`` and
    ``best_cpu``), rounds interleaved so drift hits all alike."""
    for _ in range(rounds):
        for name, make in configs.items():
            gc.collect()
            elapsed, cpu = trio.run(_run, make())
            best[name] = min(best.get(name, float("inf")), elapsed)
            best_cpu[name] = min(best_cpu.get(name, float("inf")), cpu)


async def _direct(make: Callable[[], list[Layer]], calls: int = 20_000) -> float:
    """Seconds per reserve+call through the layers over a no-op service (no worker)."""

    async def noop(task: turret.Task[Any]) -> None:
        return None

    svc = turret.ServiceBuilder[turret.Task[Any], Any]()
    for layer in make():
        svc = svc.layer(layer)
    stack = svc.service(turret.service_fn(noop))
    task = turret.testing.make_task(None)
    start = time.perf_counter()
    for _ in range(calls):
        async with stack.ready():
            await stack(task)
    return (time.perf_counter() - start) / calls


async def _scope_floor(calls: int = 100_000) -> float:
    """Seconds per ``with trio.CancelScope(deadline=...)`` around an awaited no-op,
    minus the awaited no-op alone."""

    async def noop() -> None:
        return None

    start = time.perf_counter()
    for _ in range(calls):
        await noop()
    plain = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(calls):
        with trio.CancelScope(deadline=trio.current_time() + 60):
            await noop()
    return (time.perf_counter() - start - plain) / calls


def measure_direct(configs: dict[str, Callable[[], list[Layer]]]) -> dict[str, float]:
    best = {name: float("inf") for name in configs}
    for _ in range(ROUNDS):
        for name, make in configs.items():
            best[name] = min(best[name], trio.run(_direct, make))
    return best


def main() -> int:
    t0 = time.perf_counter()
    configs: dict[str, Callable[[], list[Layer]]] = {"bare": list}
    configs["six layers"] = lambda: [make() for make in LAYERS.values()]
    for name, make in LAYERS.items():
        configs[name] = lambda make=make: [make()]  # type: ignore[misc]
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    measure(configs, ROUNDS, best, best_cpu)
    headline = {name: configs[name] for name in ("bare", "six layers")}
    measure(headline, HEADLINE_ROUNDS - ROUNDS, best, best_cpu)
    bare = best["bare"]
    stacked = best["six layers"]
    ratio = bare / stacked
    print(
        f"{TASKS} no-op tasks, worker concurrency {CONCURRENCY}, best of {ROUNDS} rounds "
        f"({HEADLINE_ROUNDS} for bare and six layers)"
    )
    print(f"  bare stack        {TASKS / bare:10.0f} tasks/s   {bare / TASKS * 1e6:7.1f} us/task")
    print(
        f"  six layers        {TASKS / stacked:10.0f} tasks/s   "
        f"{stacked / TASKS * 1e6:7.1f} us/task"
    )
    verdict = "OK" if ratio >= GOAL else "BELOW GOAL"
    print(f"  ratio six-layer / bare throughput: {ratio:.2f}  (goal >= {GOAL}: {verdict})")
    cpu_ratio = best_cpu["bare"] / best_cpu["six layers"]
    print(f"  the same ratio in CPU time:        {cpu_ratio:.2f}")
    direct = measure_direct(configs)
    print("  per-layer overhead, us/task (layer alone minus bare):")
    print(f"    {'layer':<16} {'in a worker':>12} {'direct call':>12}")
    for name in [*LAYERS, "six layers"]:
        in_worker = (best[name] - bare) / TASKS * 1e6
        alone = (direct[name] - direct["bare"]) * 1e6
        print(f"    {name:<16} {in_worker:+12.2f} {alone:+12.2f}")
    print(
        "  ('in a worker' is the end-to-end difference and is noisy on a busy machine;\n"
        "   'direct call' reserves and calls the layer over a no-op service, no worker)"
    )
    floor = min(trio.run(_scope_floor) for _ in range(ROUNDS)) * 1e6
    print(
        f"  reference: one trio.CancelScope with a deadline around a call costs {floor:.2f} us\n"
        "   on its own (trio.fail_after's cost; TimeoutLayer's floor)"
    )
    print(f"  (bench took {time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
