"""The scrape endpoint over a real socket, next to a Monitor (real clock, bounded)."""

from __future__ import annotations

import functools

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import turret
from turret.backends import MemoryBackend
from turret.observability import Metrics, MetricsServer, serve_metrics

from ._workload import QUEUE, make_handler, push_workload, wait_settled


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_monitor_scrape_after_known_workload(registry: CollectorRegistry) -> None:
    backend = MemoryBackend()
    await push_workload(backend)
    metrics = Metrics(registry)

    def factory(index: int) -> turret.Worker:
        return (
            turret.WorkerBuilder("mail")
            .backend(backend)
            .queue(QUEUE)
            .concurrency(4)
            .poll_interval(0.05)
            .layer(metrics.layer())
            .backoff(turret.ConstantBackoff(0.0))
            .build(make_handler())
        )

    monitor = turret.Monitor().register(factory).serve_metrics(port=0, metrics=metrics)
    server = monitor.metrics_server
    assert server is not None
    with trio.fail_after(20):
        async with monitor.open() as handle:
            url = await server.wait_started()
            assert url.startswith("http://127.0.0.1:")
            await handle.wait_status("mail", turret.WorkerStatus.HEALTHY)
            worker = handle.worker("mail")
            assert worker is not None
            await wait_settled(worker)
            await metrics.refresh()
            found = samples(await scrape(url))
            handle.shutdown()
    # the endpoint lives in the Monitor's nursery: gone with it
    with trio.fail_after(5), pytest.raises(httpx.ConnectError):
        await scrape(url)

    wl = {"worker": "mail", "queue": QUEUE}
    processed = "turret_tasks_processed_total"
    assert get(found, processed, **wl, outcome="succeeded") == 10
    assert get(found, processed, **wl, outcome="retried") == 2
    assert get(found, processed, **wl, outcome="dead_lettered") == 1
    assert get(found, "turret_task_retries_total", **wl, reason="error") == 1
    assert get(found, "turret_task_retries_total", **wl, reason="requested") == 1
    assert get(found, "turret_task_duration_seconds_count", **wl, outcome="success") == 10
    assert get(found, "turret_task_duration_seconds_count", **wl, outcome="abort") == 1
    assert get(found, "turret_task_queue_time_seconds_count", **wl) == 13
    assert get(found, "turret_tasks_in_progress", **wl) == 0
    assert get(found, "turret_queue_tasks", queue=QUEUE, state="done") == 10
    assert get(found, "turret_queue_tasks", queue=QUEUE, state="dead") == 1
    assert get(found, "turret_queue_tasks", queue=QUEUE, state="pending") == 0
    assert get(found, "turret_worker_status", worker="mail", status="healthy") == 1
    assert get(found, "turret_worker_status", worker="mail", status="failed") == 0
    assert get(found, "turret_worker_state", worker="mail", state="running") == 1
    assert get(found, "turret_worker_restarts_total", worker="mail") == 0
    assert get(found, "turret_worker_concurrency_limit", worker="mail") == 4
    assert get(found, "turret_worker_ready", worker="mail") == 1
    assert get(found, "turret_event_loop_lag_seconds", monitor="monitor") >= 0
    assert get(found, "turret_queue_stats_age_seconds") < 5
    assert get(found, "turret_leases_reclaimed_total", queue=QUEUE) == 0  # always exported


async def test_serve_metrics_plain_registry(registry: CollectorRegistry) -> None:
    from prometheus_client import Counter

    Counter("app_things", "Things.", registry=registry).inc(3)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_metrics, registry, port=0))
            found = samples(await scrape(url))
            nursery.cancel_scope.cancel()
    assert get(found, "app_things_total") == 3


async def test_metrics_server_without_monitor(registry: CollectorRegistry) -> None:
    backend = MemoryBackend()
    await backend.push(1, queue=QUEUE)
    metrics = Metrics(registry)
    metrics.watch_backend(backend)
    server = MetricsServer(metrics, port=0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.run)
            found = samples(await scrape(url))
            nursery.cancel_scope.cancel()
    assert get(found, "turret_queue_tasks", queue=QUEUE, state="pending") == 1


async def test_scrape_counts_reclaimed_leases(registry: CollectorRegistry) -> None:
    now = [1000.0]
    backend = MemoryBackend(clock=lambda: now[0])
    await backend.push(1, queue=QUEUE)
    await backend.push(2, queue="other")
    await backend.claim(QUEUE, owner="dead-worker", limit=1, lease_ttl=30)
    now[0] += 31  # the lease expires: its worker is gone
    (task,) = await backend.claim(QUEUE, owner="w", limit=1, lease_ttl=30)  # reclaims it
    assert task.ctx.attempt == 2
    metrics = Metrics(registry)
    metrics.watch_backend(backend)
    server = MetricsServer(metrics, port=0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.run)
            await metrics.refresh()
            before = samples(await scrape(url))
            now[0] += 31  # that claim's lease expires too; reclaim() takes it back
            assert await backend.reclaim() == 1
            await metrics.refresh()
            after = samples(await scrape(url))
            nursery.cancel_scope.cancel()
    assert get(before, "turret_leases_reclaimed_total", queue=QUEUE) == 1
    assert get(before, "turret_leases_reclaimed_total", queue="other") == 0
    assert get(after, "turret_leases_reclaimed_total", queue=QUEUE) == 2
    assert get(after, "turret_leases_reclaimed_total", queue="other") == 0
    assert get(after, "turret_queue_tasks", queue=QUEUE, state="pending") == 1


def test_cli_has_metrics_options() -> None:
    from turret.cli._main import _parser

    args = _parser().parse_args(["worker", "app:monitor", "--metrics-port", "9464"])
    assert (args.metrics_host, args.metrics_port) == ("127.0.0.1", 9464)
