"""Overhead of PrometheusLayer + TracingLayer (no-op tracer provider) on the memory backend.

The same no-op workload runs on a bare stack and on a stack with both layers, interleaved
round by round so machine noise hits both alike; the figure is the ratio of the medians.
A third variant adds :class:`turret.observability.Metrics` fed by the worker's events.
Goal: instrumented/bare >= 0.80.

    .venv/bin/python bench/bench_observability.py
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import trio
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry

import turret
from turret.backends import MemoryBackend
from turret.layers import PrometheusLayer, TracingLayer
from turret.observability import Metrics

N = 20_000
CONCURRENCY = 100
ROUNDS = 7


def bare(builder: turret.WorkerBuilder) -> turret.WorkerBuilder:
    return builder


def layers(builder: turret.WorkerBuilder) -> turret.WorkerBuilder:
    return builder.layer(TracingLayer(NoOpTracerProvider())).layer(
        PrometheusLayer(CollectorRegistry())
    )


def layers_and_events(builder: turret.WorkerBuilder) -> turret.WorkerBuilder:
    metrics = Metrics(CollectorRegistry())
    return layers(builder).layer(metrics.layer()).on_event(metrics.on_event)


async def run(configure: Any) -> float:
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

    builder = turret.WorkerBuilder("bench").backend(backend).concurrency(CONCURRENCY)
    worker = configure(builder).build(handler)
    start = time.perf_counter()
    await worker.run_until(done)
    elapsed = time.perf_counter() - start
    assert backend.statistics().queues["default"].done == N
    return N / elapsed


def main() -> int:
    variants = {"bare": bare, "prometheus+tracing": layers, "+ Metrics events": layers_and_events}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):  # interleaved
        for name, configure in variants.items():
            results[name].append(trio.run(run, configure))
    medians = {name: statistics.median(values) for name, values in results.items()}
    base = medians["bare"]
    print(f"no-op tasks, concurrency {CONCURRENCY}, {N} tasks, median of {ROUNDS} rounds")
    for name, value in medians.items():
        print(f"  {name:<20} {value:10.0f} tasks/s   ratio {value / base:5.2f}")
    print("  goal: prometheus+tracing / bare >= 0.80")
    return 0


if __name__ == "__main__":
    sys.exit(main())
