"""prometheus_client multiprocess mode: two real worker processes, one aggregate.

The workers run in subprocesses (``_mp_worker.py``) with ``PROMETHEUS_MULTIPROC_DIR``
set before they import prometheus_client, over one SQLite queue. The test process then
builds the scrape registry as ``docs/observability.md`` says (``scrape_registry()`` with
the variable set) and checks that the counters and histograms are the sums over both
processes, and that the ``livesum`` gauges count live processes only.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from turret import Job
from turret.backends import SqliteBackend
from turret.observability import Metrics, scrape_registry, serve_metrics

from . import _mp_worker
from .test_scrape import get, samples, scrape

HELPER = Path(_mp_worker.__file__).resolve()
QUEUE = _mp_worker.QUEUE
TOTAL = 20
FLAKY = sum(_mp_worker.flaky(n) for n in range(TOTAL))  # fail once each: 5 retries
WQ = {"worker": "mp", "queue": QUEUE}


@attrs.define
class Run:
    """Worker processes that drained the queue and wait (alive) for :meth:`exit`."""

    folder: Path  # PROMETHEUS_MULTIPROC_DIR
    db: Path
    procs: list[trio.Process]
    reports: list[dict[str, Any]]

    async def exit(self) -> None:
        """Close their stdin; wait for them to exit cleanly."""
        for p in self.procs:
            assert p.stdin is not None
            await p.stdin.aclose()
        with trio.fail_after(15):
            for p in self.procs:
                await p.wait()
        assert [p.returncode for p in self.procs] == [0] * len(self.procs)


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            raise AssertionError(f"worker process closed stdout early: {data!r}")
        data += chunk
    return data


@asynccontextmanager
async def drained_by_processes(tmp_path: Path) -> AsyncIterator[Run]:
    """Push the workload, drain it with two worker processes, yield them alive."""
    folder = tmp_path / "prometheus"
    meeting = tmp_path / "rendezvous"
    folder.mkdir()
    meeting.mkdir()
    db = tmp_path / "tasks.db"
    async with SqliteBackend.open(db) as backend:
        await backend.push_many([Job(n, queue=QUEUE) for n in range(TOTAL)])
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    procs: list[trio.Process] = []
    try:
        for _ in range(_mp_worker.PROCESSES):
            procs.append(
                await trio.lowlevel.open_process(
                    [sys.executable, str(HELPER), str(db), str(TOTAL), str(meeting)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                )
            )
        reports = []
        with trio.fail_after(30):
            for p in procs:
                assert p.stdout is not None
                reports.append(json.loads(await read_line(p.stdout)))
        yield Run(folder, db, procs, reports)
    finally:
        with trio.CancelScope(shield=True):
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    await p.wait()


def check_reports(run: Run) -> None:
    """Each process wrote files and did part of the work; together all of it."""
    assert all(r["multiprocess"] for r in run.reports)
    assert all(r["succeeded"] >= 1 for r in run.reports)  # the rendezvous sees to it
    assert sum(r["succeeded"] for r in run.reports) == TOTAL
    assert sum(r["retried"] for r in run.reports) == FLAKY
    assert sum(r["dead_lettered"] for r in run.reports) == 0


def check_totals(get_value: Any) -> None:
    """The counters and histograms are summed over both processes."""
    processed = "turret_tasks_processed_total"
    assert get_value(processed, {**WQ, "outcome": "succeeded"}) == TOTAL
    assert get_value(processed, {**WQ, "outcome": "retried"}) == FLAKY
    assert get_value(processed, {**WQ, "outcome": "dead_lettered"}) == 0
    assert get_value("turret_task_retries_total", {**WQ, "reason": "error"}) == FLAKY
    assert get_value("turret_task_retries_total", {**WQ, "reason": "requested"}) == 0
    duration = "turret_task_duration_seconds_count"
    assert get_value(duration, {**WQ, "outcome": "success"}) == TOTAL
    assert get_value(duration, {**WQ, "outcome": "error"}) == FLAKY
    assert get_value("turret_task_queue_time_seconds_count", WQ) == TOTAL + FLAKY


async def test_scrape_registry_sums_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with drained_by_processes(tmp_path) as run:
        check_reports(run)
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(run.folder))

        # Both alive, their workers stopped: livesum adds one per live process.
        alive = scrape_registry()
        check_totals(alive.get_sample_value)
        state = "turret_worker_state"
        assert alive.get_sample_value(state, {"worker": "mp", "state": "stopped"}) == 2
        assert alive.get_sample_value(state, {"worker": "mp", "state": "running"}) == 0

        await run.exit()

    # Gone: their counters stay, their livesum gauges go with them.
    scraped = scrape_registry()
    check_totals(scraped.get_sample_value)
    assert scraped.get_sample_value(state, {"worker": "mp", "state": "stopped"}) is None
    assert scraped.get_sample_value(state, {"worker": "mp", "state": "running"}) is None
    for report in run.reports:
        pid = report["pid"]
        assert not (run.folder / f"gauge_livesum_{pid}.db").exists()
        # each process's own file holds its own part of the total
        own_file = str(run.folder / f"counter_{pid}.db")
        merged = MultiProcessCollector.merge([own_file])  # type: ignore[no-untyped-call]
        (own,) = [m for m in merged if m.name == "turret_tasks_processed"]
        counts = {s.labels["outcome"]: s.value for s in own.samples}
        assert counts["succeeded"] == report["succeeded"]
        assert counts["retried"] == report["retried"]


async def test_serve_metrics_exposes_the_aggregate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with drained_by_processes(tmp_path) as run:
        check_reports(run)
        await run.exit()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(run.folder))

    # The serving process: its live collectors (queue depth) plus every process's files.
    metrics = Metrics(CollectorRegistry())
    async with SqliteBackend.open(run.db) as backend:
        metrics.watch_backend(backend)
        await metrics.refresh()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_metrics, metrics.registry, port=0))
            text = await scrape(url)
            nursery.cancel_scope.cancel()
    metrics.close()

    found = samples(text)
    check_totals(lambda name, labels: found.get((name, frozenset(labels.items()))))
    assert get(found, "turret_queue_tasks", queue=QUEUE, state="done") == TOTAL
    assert get(found, "turret_queue_tasks", queue=QUEUE, state="pending") == 0
    assert not any(name == "turret_worker_state" for name, _ in found)  # all exited
    assert text.count("# TYPE turret_tasks_processed_total counter") == 1
