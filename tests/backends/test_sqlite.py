"""SQLite-specific behaviour beyond the conformance suite (which runs on it too).

Schema migrations: a database file written by an older turret is upgraded in place on
open and keeps its tasks, queue flags and fencing counter.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from turret import TaskId, TaskState
from turret.backends import SCHEMA_VERSION, SqliteBackend
from turret.backends import _sqlite as sqlite_backend
from turret.backends._sqlite import MIGRATIONS

NOW = 1_000_000.0


class Clock:
    """An injectable backend clock, moved by hand (no sleeps)."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def make_v1_database(path: Path) -> dict[str, TaskId]:
    """A file as turret with schema version 1 left it: a waiting task, a task whose
    lease expired (its worker died), a done task, a paused queue, token counter at 7."""
    ids = {name: TaskId.new() for name in ("waiting", "lost", "done")}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        t0 = NOW - 100

        def row(task_id: TaskId, queue: str, state: str, **fields: Any) -> dict[str, Any]:
            return {
                "id": task_id,
                "queue": queue,
                "state": state,
                "payload": b'"x"',
                "priority": 0,
                "attempt": 1,
                "max_attempts": 3,
                "run_at": t0,
                "enqueued_at": t0,
                "order_key": t0,
                "headers": "{}",
                "unique_key": None,
                "owner": None,
                "deadline": None,
                "token": 0,
                **fields,
            }

        rows = [
            row(ids["waiting"], "mail", "pending", attempt=0, unique_key="k1"),
            row(
                ids["lost"],
                "mail",
                "leased",
                order_key=t0 + 1,
                headers='{"traceparent": "00-x"}',
                owner="dead-worker",
                deadline=NOW - 10,
                token=7,
            ),
            row(ids["done"], "reports", "done", order_key=t0 + 2, token=6),
        ]
        conn.executemany(
            "INSERT INTO turret_tasks (id, queue, state, payload, priority, attempt, "
            "max_attempts, run_at, enqueued_at, order_key, headers, unique_key, live_key, "
            "owner, deadline, token) VALUES (:id, :queue, :state, :payload, :priority, "
            ":attempt, :max_attempts, :run_at, :enqueued_at, :order_key, :headers, "
            ":unique_key, :unique_key, :owner, :deadline, :token)",
            rows,
        )
        conn.execute("INSERT INTO turret_queues (name, paused) VALUES ('paused-q', 1)")
        conn.execute("UPDATE turret_meta SET value = 7 WHERE key = 'token'")
        conn.execute("COMMIT")
    finally:
        conn.close()
    return ids


def columns(path: Path, table: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_released_migrations_never_change() -> None:
    """A schema's version names its exact statements (``PRAGMA user_version``): a file
    migrated to version n by any turret has the same schema. A change is a new step."""
    import hashlib

    from turret.backends import _sqlite

    released = ["52002fc54e81cfc5", "e951ae8c426cad6a", "3d72b63dc611bced"]
    steps = [hashlib.sha256("\x00".join(s).encode()).hexdigest()[:16] for s in _sqlite.MIGRATIONS]
    assert steps[: len(released)] == released


async def test_v1_database_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    ids = make_v1_database(path)
    assert "reclaimed" not in columns(path, "turret_queues")
    clock = Clock()
    async with SqliteBackend.open(path, clock=clock) as backend:
        assert backend.statistics().schema_version == SCHEMA_VERSION == 3
        assert user_version(path) == 3
        assert "reclaimed" in columns(path, "turret_queues")
        assert "finished_at" in columns(path, "turret_tasks")
        # The done task counts as finished at the upgrade (wall clock): kept for now.
        done = await backend.get_task(ids["done"])
        assert done is not None
        assert done.state is TaskState.DONE
        # Every task and flag is still there, and the counter starts at 0.
        stats = {s.queue: s for s in await backend.stats()}
        assert sorted(stats) == ["mail", "paused-q", "reports"]
        assert (stats["mail"].pending, stats["mail"].leased) == (1, 1)
        assert stats["reports"].done == 1
        assert stats["paused-q"].paused
        assert {s.reclaimed for s in stats.values()} == {0}
        lost = await backend.get_task(ids["lost"])
        assert lost is not None
        assert (lost.state, lost.owner, lost.token) == (TaskState.LEASED, "dead-worker", 7)
        assert lost.headers == {"traceparent": "00-x"}
        # The unique key of the live task is still taken.
        assert await backend.push("again", queue="mail", unique_key="k1") == ids["waiting"]
        # The expired lease is reclaimed by the next claim and counted; tokens go on
        # from the old counter.
        tasks = await backend.claim("mail", owner="w", limit=10, lease_ttl=30)
        assert [t.id for t in tasks] == [ids["waiting"], ids["lost"]]
        assert [t.ctx.lease.token for t in tasks] == [8, 9]
        assert tasks[1].ctx.attempt == 2
        stats = {s.queue: s for s in await backend.stats()}
        assert (stats["mail"].reclaimed, stats["reports"].reclaimed) == (1, 0)
        assert stats["paused-q"].paused
    # Opening again is a no-op migration: the counter is durable.
    async with SqliteBackend.open(path, clock=clock) as backend:
        assert {s.queue: s.reclaimed for s in await backend.stats()}["mail"] == 1
    assert user_version(path) == 3


async def test_database_from_a_newer_turret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="upgrade turret"):
        async with SqliteBackend.open(path):
            pass


async def test_a_done_task_acked_by_an_older_turret_is_pruned_too(tmp_path: Path) -> None:
    """A worker of a turret from before schema 3, still running, acks without setting
    finished_at: the next prune starts that task's retention, a later one deletes it."""
    clock = Clock()
    path = tmp_path / "tasks.db"
    async with SqliteBackend.open(path, clock=clock, done_ttl=100.0) as backend:
        task_id = await backend.push("x")
        (task,) = await backend.claim("default", owner="w", limit=1, lease_ttl=30)
        await backend.ack(task_id, task.ctx.lease.token)
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("UPDATE turret_tasks SET finished_at = NULL")  # as the old ack did
        conn.close()
        clock.now += 1000
        assert await backend.prune() == 0  # adopted: finished now
        assert await backend.get_task(task_id) is not None
        clock.now += 100
        assert await backend.prune() == 1
        assert await backend.get_task(task_id) is None


async def test_acks_keep_pruning_while_a_backlog_is_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack deletes one batch; when the batch was full the next ack takes another,
    instead of waiting a minute (a backlog after an upgrade drains at the ack rate)."""
    monkeypatch.setattr(sqlite_backend, "PRUNE_BATCH", 2)
    clock = Clock()
    async with SqliteBackend.open(tmp_path / "t.db", clock=clock, done_ttl=10.0) as backend:

        async def ack_one() -> None:
            task_id = await backend.push("x")
            (task,) = await backend.claim("default", owner="w", limit=1, lease_ttl=30)
            await backend.ack(task_id, task.ctx.lease.token)

        for _ in range(5):
            await ack_one()  # the first ack's prune (nothing due) starts the minute
        clock.now += 61
        done = []
        for _ in range(3):
            await ack_one()
            (stats,) = await backend.stats()
            done.append(stats.done)
        assert done == [4, 3, 3]  # 5 old + 1 new - 2; +1 - 2; +1 - 1 (none left)
