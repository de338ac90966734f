"""PrometheusLayer and Metrics on a known workload (autojump clock, registry in memory)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

import turret
import turret.testing
from turret.backends import MemoryBackend
from turret.layers import PrometheusLayer
from turret.observability import Metrics, log_events

from ._workload import QUEUE, make_handler, push_workload, wait_settled


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def build(backend: MemoryBackend, metrics: Metrics, *extra: Any) -> turret.Worker:
    builder = (
        turret.WorkerBuilder("w")
        .backend(backend)
        .queue(QUEUE)
        .concurrency(4)
        .layer(metrics.layer())
        .backoff(turret.ConstantBackoff(0.0))
        .on_event(metrics.on_event)
    )
    for callback in extra:
        builder = builder.on_event(callback)
    return builder.build(make_handler())


async def test_known_workload(
    autojump_clock: trio.testing.MockClock, registry: CollectorRegistry
) -> None:
    backend = MemoryBackend()
    await push_workload(backend)
    await trio.sleep(2)  # 2 s in the queue before the worker starts
    metrics = Metrics(registry)
    worker = build(backend, metrics)
    metrics.watch(worker)
    wl = {"worker": "w", "queue": QUEUE}
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.run)
        assert value(registry, "turret_queue_tasks", queue=QUEUE, state="pending") == 11
        async with trio.open_nursery() as workers:
            workers.start_soon(worker.run)
            await wait_settled(worker)
            assert value(registry, "turret_worker_concurrency_limit", worker="w") == 4
            assert value(registry, "turret_worker_ready", worker="w") == 1
            assert value(registry, "turret_worker_state", worker="w", state="running") == 1
            await metrics.refresh()
            worker.context.stop()
        nursery.cancel_scope.cancel()
    assert value(registry, "turret_worker_state", worker="w", state="running") == 0
    assert value(registry, "turret_worker_state", worker="w", state="stopped") == 1

    processed = "turret_tasks_processed_total"
    assert value(registry, processed, **wl, outcome="succeeded") == 10
    assert value(registry, processed, **wl, outcome="retried") == 2
    assert value(registry, processed, **wl, outcome="dead_lettered") == 1
    assert value(registry, processed, **wl, outcome="released") == 0  # pre-created
    assert value(registry, "turret_task_retries_total", **wl, reason="error") == 1
    assert value(registry, "turret_task_retries_total", **wl, reason="requested") == 1
    assert value(registry, "turret_lease_rejections_total", **wl) == 0

    duration = "turret_task_duration_seconds_count"
    assert value(registry, duration, **wl, outcome="success") == 10
    assert value(registry, duration, **wl, outcome="error") == 1
    assert value(registry, duration, **wl, outcome="retry") == 1
    assert value(registry, duration, **wl, outcome="abort") == 1
    # every call sleeps 10 ms (on the mock clock)
    total = value(registry, "turret_task_duration_seconds_sum", **wl, outcome="success")
    assert total == pytest.approx(0.1)
    assert value(registry, "turret_tasks_in_progress", **wl) == 0

    # 11 first deliveries waited >= 2 s; the 2 retries were due at once
    assert value(registry, "turret_task_queue_time_seconds_count", **wl) == 13
    assert value(registry, "turret_task_queue_time_seconds_bucket", **wl, le="1.0") == 2
    assert value(registry, "turret_task_queue_time_seconds_bucket", **wl, le="5.0") == 13

    assert value(registry, "turret_queue_tasks", queue=QUEUE, state="done") == 10
    assert value(registry, "turret_queue_tasks", queue=QUEUE, state="dead") == 1
    assert value(registry, "turret_queue_tasks", queue=QUEUE, state="pending") == 0


async def test_in_progress_and_explicit_clock(
    autojump_clock: trio.testing.MockClock, registry: CollectorRegistry
) -> None:
    backend = MemoryBackend()
    release = trio.Event()

    async def handler(n: int) -> None:
        await release.wait()

    worker = (
        turret.WorkerBuilder("slow")
        .backend(backend)
        .layer(PrometheusLayer(registry, clock=backend.now))
        .build(handler)
    )
    Metrics(registry).watch(worker)  # in progress is read live from the worker
    for i in range(3):
        await backend.push(i)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(1)
        labels = {"worker": "slow", "queue": "default"}
        assert value(registry, "turret_tasks_in_progress", **labels) == 3
        release.set()
        await trio.sleep(1)
        assert value(registry, "turret_tasks_in_progress", **labels) == 0
        assert value(registry, "turret_task_queue_time_seconds_count", **labels) == 3
        worker.context.stop()


def test_layers_share_families_per_registry(registry: CollectorRegistry) -> None:
    a = PrometheusLayer(registry)
    b = PrometheusLayer(registry)
    assert a.layer(turret.service_fn(_noop)).families is b.layer(turret.service_fn(_noop)).families
    Metrics(registry)  # and Metrics on the same registry does not clash


async def _noop(_: Any) -> None:
    return None


async def test_log_events_structured_fields(
    autojump_clock: trio.testing.MockClock,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemoryBackend()
    await push_workload(backend)
    metrics = Metrics(registry)
    worker = build(backend, metrics, log_events("test.events", task_level=logging.INFO))
    caplog.set_level(logging.DEBUG, logger="test.events")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await wait_settled(worker)
        worker.context.stop()
    dead = [r for r in caplog.records if getattr(r, "event", None) == "TaskDeadLettered"]
    assert len(dead) == 1
    record: Any = dead[0]
    assert record.levelno == logging.WARNING
    assert record.queue == QUEUE
    assert record.attempt == 1
    assert record.worker == "w"
    assert len(record.task_id) == 26
    assert any(getattr(r, "event", None) == "WorkerStarted" for r in caplog.records)


async def test_two_metrics_on_one_registry_count_each_event_once(
    autojump_clock: trio.testing.MockClock, registry: CollectorRegistry
) -> None:
    """A worker's own Metrics plus a Monitor's serve_metrics() one: no double counts."""
    backend = MemoryBackend()
    for i in range(3):
        await backend.push(i, queue=QUEUE)
    mine, monitors = Metrics(registry), Metrics(registry)

    done = trio.Event()

    async def handler(n: int) -> None:
        if n == 2:
            done.set()

    worker = (
        turret.WorkerBuilder("w")
        .backend(backend)
        .queue(QUEUE)
        .concurrency(1)
        .on_event(mine.on_event)
        .on_event(monitors.on_event)
        .build(handler)
    )

    await worker.run_until(done)  # a graceful stop: the last task is settled too
    processed = "turret_tasks_processed_total"
    labels = {"worker": "w", "queue": QUEUE, "outcome": "succeeded"}
    assert value(registry, processed, **labels) == 3
    # A second registry is counted on its own.
    other = CollectorRegistry()
    separate = Metrics(other)
    event = turret.TaskSucceeded("w", 0.0, turret.testing.make_task(None, queue=QUEUE).ctx, 0.01)
    separate.on_event(event)
    mine.on_event(event)
    assert value(other, processed, **labels) == 1
    assert value(registry, processed, **labels) == 4
