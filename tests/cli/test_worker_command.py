"""``turret worker``: a real process, a real SIGTERM, tasks shared through SQLite.

These tests use real time; every wait is bounded, and readiness is read from a file the
app writes (never a fixed sleep).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from turret import QueueStats
from turret.backends import SqliteBackend
from turret.cli import main

APP = textwrap.dedent(
    """
    import gc
    import os
    from contextlib import asynccontextmanager
    from pathlib import Path

    import trio

    from turret import Monitor, WorkerBuilder
    from turret.backends import SqliteBackend

    DB = os.environ["TURRET_TEST_DB"]
    LOG = Path(os.environ["TURRET_TEST_LOG"])


    def note(line: str) -> None:
        with LOG.open("a") as f:
            f.write(line + "\\n")


    async def handle(n: int) -> int:
        note(f"start {n}")
        await trio.sleep(1.0)
        note(f"done {n}")
        return 2 * n


    @asynccontextmanager
    async def app():
        note(f"frozen {gc.get_freeze_count()}")
        async with SqliteBackend.open(DB, poll_interval=0.05) as backend:
            yield (
                Monitor(name="app")
                .register(lambda i: WorkerBuilder("sq").backend(backend).concurrency(3)
                          .build(handle))
                .shutdown_timeout(5)
            )
    """
)

FAILING_APP = textwrap.dedent(
    """
    from turret import Monitor, WorkerBuilder
    from turret.backends import MemoryBackend


    class Broken(MemoryBackend):
        async def claim(self, queue, *, owner, limit, lease_ttl):
            raise ConnectionError("database is down")


    async def handle(n: int) -> None:
        pass


    monitor = (
        Monitor()
        .register(lambda i: WorkerBuilder("broken").backend(Broken()).build(handle))
        .restart_policy(lambda ctx, error, attempt: False)
    )
    not_a_worker = 42
    """
)


async def _push(db: Path, n: int) -> None:
    async with SqliteBackend.open(db) as backend:
        for i in range(n):
            await backend.push(i)


async def _stats(db: Path) -> QueueStats:
    async with SqliteBackend.open(db) as backend:
        (stats,) = [s for s in await backend.stats() if s.queue == "default"]
        return stats


def _lines(path: Path, kind: str) -> list[int]:
    if not path.exists():
        return []
    complete = path.read_text().split("\n")[:-1]  # a line being written has no newline yet
    return [int(line.split()[1]) for line in complete if line.startswith(kind)]


def test_sigterm_finishes_in_flight_tasks(tmp_path: Path) -> None:
    db, log = tmp_path / "tasks.db", tmp_path / "handled.log"
    (tmp_path / "sigapp.py").write_text(APP)
    trio.run(_push, db, 8)
    env = {**os.environ, "TURRET_TEST_DB": str(db), "TURRET_TEST_LOG": str(log)}
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "turret", "worker", "sigapp:app", "--log-level", "INFO"],
            cwd=tmp_path,
            env=env,
            stdout=stderr,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 6
            while len(_lines(log, "start")) < 3:  # three tasks in flight (concurrency 3)
                assert proc.poll() is None, stderr_path.read_text()
                assert time.monotonic() < deadline, "the worker never started 3 tasks"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=6)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = stderr_path.read_text()
    assert code == 0, output
    assert "SIGTERM received" in output
    # The start-up objects (trio, turret, the app) were frozen out of the collector's way.
    assert _lines(log, "frozen")[0] > 10_000
    started, done = _lines(log, "start"), _lines(log, "done")
    assert len(started) >= 3
    assert sorted(started) == sorted(done)  # every in-flight task finished
    stats = trio.run(_stats, db)
    assert stats.leased == 0
    assert stats.dead == 0
    assert stats.done == len(done)
    assert stats.done + stats.pending == 8  # nothing lost: the rest is still queued


def test_bad_targets_exit_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "failapp.py").write_text(FAILING_APP)
    cases = {
        "nosuchmodule:app": "cannot import module 'nosuchmodule'",
        "failapp:missing": "module 'failapp' has no attribute 'missing'",
        "failapp:not_a_worker": "'failapp:not_a_worker' is a int; expected a turret.Monitor",
        "failapp": "not of the form 'module:attribute'",
    }
    for target, message in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "turret", "worker", target],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert proc.returncode == 2, (target, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert message in lines[0]


def test_failed_monitor_exits_1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "failapp_inproc.py").write_text(FAILING_APP)
    try:
        code = main(["worker", "failapp_inproc:monitor", "--app-dir", str(tmp_path)])
    finally:
        gc.unfreeze()  # the command froze this test process's objects
    assert code == 1
    assert "broken (ConnectionError: database is down" in caplog.text
