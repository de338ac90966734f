"""A durable backend on one SQLite file: the embedded default.

Several worker processes on one host may share the file. Durability: the database runs
in WAL mode with ``synchronous=NORMAL``: a committed push/settle survives any crash of
the *process* (SIGKILL included); after a power loss or OS crash the last transactions
before the crash may be rolled back (the file is never corrupted). Pass
``synchronous="FULL"`` to make every commit survive power loss too, at some cost in
throughput.

Every call runs in ``trio.to_thread.run_sync`` under a bounded ``trio.CapacityLimiter``;
each concurrent call has its own connection. Claims, settles and renewals are short
``BEGIN IMMEDIATE`` transactions, so writers queue on SQLite's lock (``busy_timeout``)
instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs
import trio

from ..core._backend import Job, QueueStats, Renewal, TaskInfo, TaskState, check_queue_name
from ..core._codec import Codec
from ..core._errors import LeaseLost
from ..core._task import Lease, Task, TaskContext, TaskId
from ._producer import PRUNE_BATCH, PRUNE_EVERY, Producer

__all__ = ["SCHEMA_VERSION", "SqliteBackend", "SqliteStatistics"]

T = TypeVar("T")

#: Migrations, applied in order on open; ``PRAGMA user_version`` is how many ran. A
#: released step never changes: a new schema is a new step at the end (a test pins the
#: text of every released step).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: tasks, queues (paused flags), the token counter.
    (
        """
        CREATE TABLE turret_tasks (
            id TEXT PRIMARY KEY,
            queue TEXT NOT NULL,
            state TEXT NOT NULL,
            payload BLOB NOT NULL,
            priority INTEGER NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            run_at REAL NOT NULL,
            enqueued_at REAL NOT NULL,
            order_key REAL NOT NULL,
            headers TEXT NOT NULL,
            unique_key TEXT,
            live_key TEXT UNIQUE,
            owner TEXT,
            deadline REAL,
            token INTEGER NOT NULL DEFAULT 0,
            lost INTEGER NOT NULL DEFAULT 0,
            result BLOB,
            result_expires_at REAL,
            last_error TEXT,
            dead_reason TEXT,
            cancel_reason TEXT
        )
        """,
        "CREATE INDEX turret_tasks_claim ON turret_tasks (queue, state, order_key, id)",
        "CREATE INDEX turret_tasks_due ON turret_tasks (queue, state, run_at)",
        "CREATE INDEX turret_tasks_lease ON turret_tasks (state, deadline)",
        "CREATE TABLE turret_queues (name TEXT PRIMARY KEY, paused INTEGER NOT NULL)",
        # Fencing tokens: one counter for the whole store, so a token names one claim.
        "CREATE TABLE turret_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO turret_meta (key, value) VALUES ('token', 0)",
    ),
    # 2: per-queue count of reclaimed leases (QueueStats.reclaimed); existing rows
    # start at 0, queues without a row get one at their first reclaim.
    ("ALTER TABLE turret_queues ADD COLUMN reclaimed INTEGER NOT NULL DEFAULT 0",),
    # 3: done tasks are forgotten ``done_ttl`` after they finish; the done tasks already
    # stored count as finished at the upgrade.
    (
        "ALTER TABLE turret_tasks ADD COLUMN finished_at REAL",
        "UPDATE turret_tasks SET finished_at = CAST(strftime('%s', 'now') AS REAL) "
        "WHERE state = 'done'",
        "CREATE INDEX turret_tasks_finished ON turret_tasks (finished_at) WHERE state = 'done'",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "id, queue, state, payload, priority, attempt, max_attempts, run_at, enqueued_at, "
    "order_key, headers, unique_key, owner, deadline, token, lost, result, "
    "result_expires_at, last_error, dead_reason, cancel_reason, finished_at"
)
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


@attrs.frozen
class SqliteStatistics:
    """A snapshot of a :class:`SqliteBackend` (see ``statistics()``).

    Example::

        stats = backend.statistics()
        print(stats.path, stats.connections, stats.calls_in_flight)
    """

    path: str
    open: bool
    schema_version: int
    connections: int
    calls_in_flight: int
    max_threads: int


class _Row:
    """A row of turret_tasks by column name (sqlite3.Row without the factory cost)."""

    __slots__ = (
        "attempt",
        "cancel_reason",
        "dead_reason",
        "deadline",
        "enqueued_at",
        "finished_at",
        "headers",
        "id",
        "last_error",
        "lost",
        "max_attempts",
        "order_key",
        "owner",
        "payload",
        "priority",
        "queue",
        "result",
        "result_expires_at",
        "run_at",
        "state",
        "token",
        "unique_key",
    )

    def __init__(self, row: tuple[Any, ...]) -> None:
        (
            self.id,
            self.queue,
            self.state,
            self.payload,
            self.priority,
            self.attempt,
            self.max_attempts,
            self.run_at,
            self.enqueued_at,
            self.order_key,
            self.headers,
            self.unique_key,
            self.owner,
            self.deadline,
            self.token,
            self.lost,
            self.result,
            self.result_expires_at,
            self.last_error,
            self.dead_reason,
            self.cancel_reason,
            self.finished_at,
        ) = row

    def info(self, now: float) -> TaskInfo:
        state = TaskState(self.state)
        expired = self.result_expires_at is not None and self.result_expires_at <= now
        leased = state is TaskState.LEASED
        return TaskInfo(
            id=TaskId(self.id),
            queue=self.queue,
            state=state,
            args=bytes(self.payload),
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            priority=self.priority,
            run_at=self.run_at,
            enqueued_at=self.enqueued_at,
            headers=json.loads(self.headers),
            unique_key=self.unique_key,
            owner=self.owner if leased else None,
            lease_deadline=self.deadline if leased else None,
            token=self.token,
            lost=self.lost,
            result=None if expired or self.result is None else bytes(self.result),
            result_expires_at=None if expired else self.result_expires_at,
            last_error=self.last_error,
            dead_reason=self.dead_reason,
            cancel_requested=self.cancel_reason is not None,
        )


def _fetch_row(conn: sqlite3.Connection, task_id: str) -> _Row | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM turret_tasks WHERE id = ?", (task_id,)).fetchone()
    return None if row is None else _Row(row)


class _Tx:
    """``with _Tx(conn):`` runs a BEGIN IMMEDIATE transaction; rolls back on error."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


class SqliteBackend(Producer):
    """Tasks in one SQLite file (WAL), shared safely by several processes on one host.

    Open it with ``async with``; every connection is closed on exit and no task of the
    backend outlives the block. Time comes from ``clock`` (default ``time.time``, wall
    clock, so several processes agree); it is always read on the trio thread, so a
    test may pass ``trio.current_time`` and run on a ``MockClock``.

    Idle workers in this process wake at once on a push/retry/release/resume made
    through the same backend object; work made by other processes is found by polling
    every ``poll_interval`` seconds (and exactly when a scheduled task or a lease falls
    due).

    Example::

        async with SqliteBackend.open("tasks.db") as backend:
            await backend.push({"to": "a@b.c"}, queue="mail")
            worker = WorkerBuilder("mail").backend(backend).queue("mail").build(send)
            await worker.run()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        codec: Codec | None = None,
        clock: Callable[[], float] = time.time,
        default_max_attempts: int = 3,
        max_payload_bytes: int = 1 << 20,
        aging: float = 60.0,
        max_lost: int = 3,
        result_ttl: float | None = 7 * 86400.0,
        done_ttl: float | None = 7 * 86400.0,
        poll_interval: float = 1.0,
        max_threads: int = 4,
        busy_timeout: float = 30.0,
        synchronous: str = "NORMAL",
    ) -> None:
        text = os.fspath(path)
        if not text or text == ":memory:" or text.startswith("file::memory:"):
            raise ValueError(
                f"SqliteBackend needs a file path, got {text!r}: every connection to an "
                "in-memory database is a separate database; use a file (e.g. in a temp "
                "directory) or MemoryBackend"
            )
        self._configure(
            codec=codec,
            clock=clock,
            default_max_attempts=default_max_attempts,
            max_payload_bytes=max_payload_bytes,
            aging=aging,
            max_lost=max_lost,
            result_ttl=result_ttl,
            done_ttl=done_ttl,
        )
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads!r}")
        if busy_timeout <= 0:
            raise ValueError(f"busy_timeout must be > 0 seconds, got {busy_timeout!r}")
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
            )
        self.path = Path(text)
        self.poll_interval = poll_interval
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous.upper()
        self._limiter = trio.CapacityLimiter(max_threads)
        self._free: list[sqlite3.Connection] = []
        self._connections = 0
        self._in_flight = 0
        self._open = False
        self._closed = False
        self._wakeups: dict[str, trio.Event] = {}
        self._next_prune = -math.inf  # when an ack next forgets old done tasks

    def __repr__(self) -> str:
        state = "open" if self._open else ("closed" if self._closed else "new")
        return f"<SqliteBackend {str(self.path)!r} {state}>"

    # --- lifetime -------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: str | os.PathLike[str], **options: Any
    ) -> AsyncIterator[SqliteBackend]:
        """Open (creating and migrating if needed) and close on exit.

        Takes the same keyword options as the constructor.

        Example::

            async with SqliteBackend.open("tasks.db", poll_interval=0.5) as backend:
                ...
        """
        async with cls(path, **options) as backend:
            yield backend

    async def __aenter__(self) -> SqliteBackend:
        if self._open or self._closed:
            raise RuntimeError(
                f"{self!r} was already opened; make a new SqliteBackend for each `async with` block"
            )
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(
                f"directory {str(self.path.parent)!r} of the SQLite database does not exist; "
                "create it first"
            )
        self._open = True
        try:
            await self._run(self._migrate)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        self._open = False
        self._closed = True
        for event in self._wakeups.values():
            event.set()  # nobody should still wait, but never strand a waiter
        # All calls have returned (each holds the limiter while its thread runs), so the
        # pool holds every connection.
        with trio.CancelScope(shield=True):
            async with self._limiter:
                pass
        while self._free:
            self._free.pop().close()
            self._connections -= 1

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # one thread at a time, handed over by the pool
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise RuntimeError(
                f"cannot put {str(self.path)!r} in WAL mode (got {mode!r}); the file must be "
                "on a local file system that supports shared memory"
            )
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a worker thread with a pooled connection."""
        if not self._open:
            raise RuntimeError(
                "SqliteBackend is not open; use `async with SqliteBackend.open(path) as "
                "backend:` and call it inside the block"
            )
        async with self._limiter:
            conn = self._free.pop() if self._free else None
            self._in_flight += 1
            box: list[sqlite3.Connection] = []

            def call() -> T:
                c = conn if conn is not None else self._connect()
                box.append(c)
                return fn(c)

            try:
                return await trio.to_thread.run_sync(call)
            finally:
                self._in_flight -= 1
                if box:
                    if conn is None:
                        self._connections += 1
                    self._free.append(box[0])

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with _Tx(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{str(self.path)!r} has schema version {version}, newer than this "
                    f"turret's {SCHEMA_VERSION}; upgrade turret"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def statistics(self) -> SqliteStatistics:
        """A frozen snapshot: path, open, schema version, connections, calls in flight.

        Example::

            assert backend.statistics().calls_in_flight == 0
        """
        return SqliteStatistics(
            path=str(self.path),
            open=self._open,
            schema_version=SCHEMA_VERSION,
            connections=self._connections,
            calls_in_flight=self._in_flight,
            max_threads=int(self._limiter.total_tokens),
        )

    def _wake(self, queue: str) -> None:
        event = self._wakeups.pop(queue, None)
        if event is not None:
            event.set()

    # --- producing ------------------------------------------------------------------

    async def _store(self, encoded: Sequence[tuple[Job, bytes]]) -> list[TaskId]:
        rows = [(job, payload, json.dumps(dict(job.headers))) for job, payload in encoded]
        if not rows:
            return []
        now = self.now()
        aging = self.aging
        default_attempts = self.default_max_attempts

        def insert(conn: sqlite3.Connection) -> list[TaskId]:
            ids: list[TaskId] = []
            with _Tx(conn):
                for job, payload, headers in rows:
                    if job.unique_key is not None:
                        found = conn.execute(
                            "SELECT id FROM turret_tasks WHERE live_key = ?", (job.unique_key,)
                        ).fetchone()
                        if found is not None:
                            ids.append(TaskId(found[0]))
                            continue
                    task_id = TaskId.new()
                    run_at = now + job.delay
                    state = "pending" if run_at <= now else "scheduled"
                    conn.execute(
                        "INSERT INTO turret_tasks (id, queue, state, payload, priority, "
                        "max_attempts, run_at, enqueued_at, order_key, headers, unique_key, "
                        "live_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            task_id,
                            job.queue,
                            state,
                            payload,
                            job.priority,
                            job.max_attempts or default_attempts,
                            run_at,
                            now,
                            max(now, run_at) - job.priority * aging,
                            headers,
                            job.unique_key,
                            job.unique_key,
                        ),
                    )
                    ids.append(task_id)
            return ids

        ids = await self._run(insert)
        for queue in {job.queue for job, _, _ in rows}:
            self._wake(queue)
        return ids

    # --- consuming ------------------------------------------------------------------

    def _reclaim_in(self, conn: sqlite3.Connection, now: float) -> int:
        """Reclaim every expired lease (inside the caller's transaction).

        Each one, dead-lettered or not, adds one to its queue's ``reclaimed`` counter;
        the counter rows are only written when something was reclaimed.
        """
        expired = conn.execute(
            "SELECT id, queue, attempt, max_attempts, lost, cancel_reason FROM turret_tasks "
            "WHERE state = 'leased' AND deadline <= ?",
            (now,),
        ).fetchall()
        if not expired:
            return 0
        per_queue: dict[str, int] = {}
        for task_id, queue, attempt, max_attempts, lost, cancel_reason in expired:
            per_queue[queue] = per_queue.get(queue, 0) + 1
            lost += 1
            if cancel_reason is not None:
                reason: str | None = f"cancelled: {cancel_reason} (worker lost)"
            elif lost >= self.max_lost:
                reason = f"worker lost {lost} times"
            elif attempt >= max_attempts:
                reason = f"worker lost on the last attempt ({attempt})"
            else:
                reason = None
            if reason is None:
                # Back in line at its old place (order_key unchanged), due now.
                conn.execute(
                    "UPDATE turret_tasks SET state = 'pending', lost = ?, run_at = ?, "
                    "owner = NULL, deadline = NULL, last_error = 'worker lost' WHERE id = ?",
                    (lost, now, task_id),
                )
            else:
                conn.execute(
                    "UPDATE turret_tasks SET state = 'dead', lost = ?, owner = NULL, "
                    "deadline = NULL, last_error = 'worker lost', dead_reason = ?, "
                    "live_key = NULL, cancel_reason = NULL WHERE id = ?",
                    (lost, reason, task_id),
                )
        conn.executemany(
            "INSERT INTO turret_queues (name, paused, reclaimed) VALUES (?, 0, ?) "
            "ON CONFLICT (name) DO UPDATE SET reclaimed = reclaimed + excluded.reclaimed",
            sorted(per_queue.items()),
        )
        return len(expired)

    async def claim(
        self, queue: str, *, owner: str, limit: int, lease_ttl: float
    ) -> list[Task[bytes]]:
        if limit < 1:
            return []
        now = self.now()
        deadline = now + lease_ttl

        def claim(conn: sqlite3.Connection) -> list[Task[bytes]]:
            with _Tx(conn):
                self._reclaim_in(conn, now)
                paused = conn.execute(
                    "SELECT paused FROM turret_queues WHERE name = ?", (queue,)
                ).fetchone()
                if paused is not None and paused[0]:
                    return []
                conn.execute(
                    "UPDATE turret_tasks SET state = 'pending' "
                    "WHERE queue = ? AND state = 'scheduled' AND run_at <= ?",
                    (queue, now),
                )
                ids = conn.execute(
                    "SELECT id FROM turret_tasks WHERE queue = ? AND state = 'pending' "
                    "ORDER BY order_key, id LIMIT ?",
                    (queue, limit),
                ).fetchall()
                if not ids:
                    return []
                (last,) = conn.execute(
                    "UPDATE turret_meta SET value = value + ? WHERE key = 'token' RETURNING value",
                    (len(ids),),
                ).fetchone()
                rows = [
                    conn.execute(
                        "UPDATE turret_tasks SET state = 'leased', attempt = attempt + 1, "
                        "token = ?, owner = ?, deadline = ? WHERE id = ? "
                        "RETURNING id, payload, attempt, max_attempts, priority, run_at, "
                        "enqueued_at, headers, token",
                        (last - len(ids) + i + 1, owner, deadline, task_id),
                    ).fetchone()
                    for i, (task_id,) in enumerate(ids)
                ]
            return [
                Task(
                    bytes(r[1]),
                    TaskContext(
                        id=TaskId(r[0]),
                        queue=queue,
                        attempt=r[2],
                        max_attempts=r[3],
                        priority=r[4],
                        run_at=r[5],
                        enqueued_at=r[6],
                        headers=json.loads(r[7]),
                        lease=Lease(owner, deadline, r[8]),
                    ),
                )
                for r in rows
            ]

        return await self._run(claim)

    async def wait_for_work(self, queue: str) -> None:
        # The event exists before we look, so a push made while we look still wakes us.
        event = self._wakeups.get(queue)
        if event is None:
            event = self._wakeups[queue] = trio.Event()
        now = self.now()

        def next_due(conn: sqlite3.Connection) -> float | None:
            paused = conn.execute(
                "SELECT paused FROM turret_queues WHERE name = ?", (queue,)
            ).fetchone()
            if paused is not None and paused[0]:
                return None  # only a resume (or the poll) can make work claimable
            if conn.execute(
                "SELECT 1 FROM turret_tasks WHERE queue = ? AND state = 'pending' LIMIT 1",
                (queue,),
            ).fetchone():
                return now
            due = conn.execute(
                "SELECT min(run_at) FROM turret_tasks WHERE queue = ? AND state = 'scheduled'",
                (queue,),
            ).fetchone()[0]
            lease = conn.execute(
                "SELECT min(deadline) FROM turret_tasks WHERE state = 'leased'"
            ).fetchone()[0]
            times = [t for t in (due, lease) if t is not None]
            return min(times) if times else None

        due = await self._run(next_due)
        span = self.poll_interval if due is None else min(self.poll_interval, due - now)
        # The backend's clock may be a user's; sleep on trio's for the same span.
        with trio.move_on_after(max(0.0, span)):
            await event.wait()

    async def renew(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_ttl: float
    ) -> list[Renewal]:
        if not leases:
            return []
        now = self.now()
        pairs = list(leases)

        def renew(conn: sqlite3.Connection) -> list[Renewal]:
            out: list[Renewal] = []
            with _Tx(conn):
                for task_id, token in pairs:
                    row = conn.execute(
                        "UPDATE turret_tasks SET deadline = ? WHERE id = ? AND token = ? "
                        "AND state = 'leased' AND deadline > ? RETURNING cancel_reason",
                        (now + lease_ttl, task_id, token, now),
                    ).fetchone()
                    if row is None:
                        out.append(Renewal.LOST)
                    elif row[0] is not None:
                        out.append(Renewal.CANCEL_REQUESTED)
                    else:
                        out.append(Renewal.RENEWED)
            return out

        return await self._run(renew)

    def _check_lease(
        self, conn: sqlite3.Connection, task_id: TaskId, token: int, now: float
    ) -> _Row:
        row = _fetch_row(conn, task_id)
        if row is None:
            raise LeaseLost(f"task {task_id} is unknown to this backend")
        if row.state != "leased" or row.token != token:
            raise LeaseLost(
                f"task {task_id}: lease token {token} is stale (task is {row.state}, "
                f"current token {row.token})"
            )
        if row.deadline <= now:
            raise LeaseLost(f"task {task_id}: lease expired at {row.deadline:.3f}")
        return row

    async def ack(self, task_id: TaskId, token: int, *, result: bytes | None = None) -> None:
        (lost,) = await self.ack_many([(task_id, token, result)])
        if lost is not None:
            raise lost

    async def ack_many(
        self, acks: Sequence[tuple[TaskId, int, bytes | None]]
    ) -> list[LeaseLost | None]:
        """Ack several tasks in one transaction (one fsync for all); one outcome each.

        Example::

            outcomes = await backend.ack_many([(task.ctx.id, task.ctx.lease.token, None)])
        """
        now = self.now()
        ttl = self.result_ttl
        rows = [
            (result, None if result is None or ttl is None else now + ttl, now, task_id, token, now)
            for task_id, token, result in acks
        ]
        # At most once a minute, an ack also forgets one batch of old done tasks.
        prune = self._forget_after is not None and now >= self._next_prune
        if prune:
            self._next_prune = now + PRUNE_EVERY

        def ack(conn: sqlite3.Connection) -> tuple[list[LeaseLost | None], int]:
            outcomes: list[LeaseLost | None] = []
            with _Tx(conn):
                for row in rows:
                    changed = conn.execute(
                        "UPDATE turret_tasks SET state = 'done', result = ?, "
                        "result_expires_at = ?, finished_at = ?, owner = NULL, deadline = NULL, "
                        "live_key = NULL, cancel_reason = NULL "
                        "WHERE id = ? AND token = ? AND state = 'leased' AND deadline > ?",
                        row,
                    ).rowcount
                    outcomes.append(None if changed else self._refusal(conn, row[3], row[4], now))
                return outcomes, self._prune_in(conn, now) if prune else 0

        outcomes, pruned = await self._run(ack)
        if pruned == PRUNE_BATCH:
            self._next_prune = now  # more are due: the next ack takes another batch
        return outcomes

    def _refusal(
        self, conn: sqlite3.Connection, task_id: TaskId, token: int, now: float
    ) -> LeaseLost:
        """Why a settle of ``(task_id, token)`` changed no row."""
        try:
            self._check_lease(conn, task_id, token, now)
        except LeaseLost as exc:
            return exc
        return LeaseLost(f"task {task_id}: lease token {token} refused")

    def _prune_in(self, conn: sqlite3.Connection, now: float) -> int:
        """Delete up to PRUNE_BATCH done tasks past their retention (in the caller's
        transaction, which stays short: SQLite has one writer at a time)."""
        assert self._forget_after is not None
        conn.execute(  # acked by an older turret still running: retention starts now
            "UPDATE turret_tasks SET finished_at = ? WHERE rowid IN (SELECT rowid FROM "
            "turret_tasks WHERE state = 'done' AND finished_at IS NULL LIMIT ?)",
            (now, PRUNE_BATCH),
        )
        return conn.execute(
            "DELETE FROM turret_tasks WHERE rowid IN (SELECT rowid FROM turret_tasks "
            "WHERE state = 'done' AND finished_at <= ? "
            "AND (result_expires_at IS NULL OR result_expires_at <= ?) LIMIT ?)",
            (now - self._forget_after, now, PRUNE_BATCH),
        ).rowcount

    async def prune(self) -> int:
        """Forget the done tasks past their retention now; how many. Acks also do it,
        a batch at a time, about once a minute.

        Example::

            async with SqliteBackend.open("tasks.db", done_ttl=3600) as backend:
                forgotten = await backend.prune()
        """
        if self._forget_after is None:
            await trio.lowlevel.checkpoint()
            return 0
        now = self.now()

        def prune(conn: sqlite3.Connection) -> int:
            with _Tx(conn):
                return self._prune_in(conn, now)

        total = 0
        while True:
            n = await self._run(prune)
            total += n
            if n < PRUNE_BATCH:
                return total

    def _dead_in(self, conn: sqlite3.Connection, task_id: str, reason: str) -> None:
        conn.execute(
            "UPDATE turret_tasks SET state = 'dead', dead_reason = ?, owner = NULL, "
            "deadline = NULL, live_key = NULL, cancel_reason = NULL WHERE id = ?",
            (reason, task_id),
        )

    async def retry(self, task_id: TaskId, token: int, *, delay: float, error: str) -> None:
        now = self.now()
        run_at = now + max(0.0, delay)
        aging = self.aging

        def retry(conn: sqlite3.Connection) -> str:
            with _Tx(conn):
                row = self._check_lease(conn, task_id, token, now)
                conn.execute(
                    "UPDATE turret_tasks SET last_error = ? WHERE id = ?", (error, task_id)
                )
                if row.cancel_reason is not None:
                    self._dead_in(conn, task_id, f"cancelled: {row.cancel_reason}")
                    return ""
                conn.execute(
                    "UPDATE turret_tasks SET state = ?, run_at = ?, order_key = ?, "
                    "owner = NULL, deadline = NULL WHERE id = ?",
                    (
                        "pending" if run_at <= now else "scheduled",
                        run_at,
                        run_at - row.priority * aging,
                        task_id,
                    ),
                )
                return str(row.queue)

        queue = await self._run(retry)
        if queue:
            self._wake(queue)

    async def dead(self, task_id: TaskId, token: int, *, reason: str) -> None:
        now = self.now()

        def dead(conn: sqlite3.Connection) -> None:
            with _Tx(conn):
                self._check_lease(conn, task_id, token, now)
                self._dead_in(conn, task_id, reason)

        await self._run(dead)

    async def release(self, task_id: TaskId, token: int) -> None:
        now = self.now()

        def release(conn: sqlite3.Connection) -> str:
            with _Tx(conn):
                row = self._check_lease(conn, task_id, token, now)
                if row.cancel_reason is not None:
                    conn.execute(
                        "UPDATE turret_tasks SET attempt = attempt - 1 WHERE id = ?", (task_id,)
                    )
                    self._dead_in(conn, task_id, f"cancelled: {row.cancel_reason}")
                    return ""
                # Keep its place in line: order_key is unchanged; due now.
                conn.execute(
                    "UPDATE turret_tasks SET state = 'pending', attempt = attempt - 1, "
                    "run_at = min(run_at, ?), owner = NULL, deadline = NULL WHERE id = ?",
                    (now, task_id),
                )
                return str(row.queue)

        queue = await self._run(release)
        if queue:
            self._wake(queue)

    # --- producers and operators ----------------------------------------------------

    async def get_task(self, task_id: TaskId) -> TaskInfo | None:
        now = self.now()

        def get(conn: sqlite3.Connection) -> TaskInfo | None:
            row = _fetch_row(conn, task_id)
            if row is None or (
                row.state == "done"
                and row.finished_at is not None
                and self.kept_until(row.finished_at, row.result_expires_at) <= now
            ):
                return None  # never stored, or done and past retention (not yet deleted)
            return row.info(now)

        return await self._run(get)

    async def cancel(self, task_id: TaskId, *, reason: str = "cancel requested") -> bool:
        def cancel(conn: sqlite3.Connection) -> bool:
            with _Tx(conn):
                row = conn.execute(
                    "SELECT state FROM turret_tasks WHERE id = ?", (task_id,)
                ).fetchone()
                if row is None or row[0] in ("done", "dead"):
                    return False
                if row[0] == "leased":
                    conn.execute(
                        "UPDATE turret_tasks SET cancel_reason = ? WHERE id = ?", (reason, task_id)
                    )
                else:
                    self._dead_in(conn, task_id, f"cancelled: {reason}")
                return True

        return await self._run(cancel)

    async def reclaim(self) -> int:
        now = self.now()

        def reclaim(conn: sqlite3.Connection) -> int:
            with _Tx(conn):
                return self._reclaim_in(conn, now)

        return await self._run(reclaim)

    async def _set_paused(self, queue: str, paused: bool) -> None:
        check_queue_name(queue)

        def pause(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO turret_queues (name, paused) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused",
                (queue, int(paused)),
            )

        await self._run(pause)
        if not paused:
            self._wake(queue)

    async def pause_queue(self, queue: str) -> None:
        await self._set_paused(queue, True)

    async def resume_queue(self, queue: str) -> None:
        await self._set_paused(queue, False)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[TaskInfo]:
        now = self.now()

        def dead(conn: sqlite3.Connection) -> list[TaskInfo]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM turret_tasks WHERE queue = ? AND state = 'dead' "
                "ORDER BY id LIMIT ?",
                (queue, limit),
            ).fetchall()
            return [_Row(r).info(now) for r in rows]

        return await self._run(dead)

    async def replay(self, task_ids: Sequence[TaskId], *, delay: float = 0.0) -> list[TaskId]:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        now = self.now()
        run_at = now + delay
        ids = list(task_ids)
        aging = self.aging

        def replay(conn: sqlite3.Connection) -> list[tuple[TaskId, str]]:
            out: list[tuple[TaskId, str]] = []
            with _Tx(conn):
                for task_id in ids:
                    row = _fetch_row(conn, task_id)
                    if row is None or row.state != "dead":
                        continue
                    key = row.unique_key
                    if (
                        key is not None
                        and conn.execute(
                            "SELECT 1 FROM turret_tasks WHERE live_key = ?", (key,)
                        ).fetchone()
                    ):
                        key = None  # a live task took the key meanwhile
                    conn.execute(
                        "UPDATE turret_tasks SET state = ?, attempt = 0, lost = 0, "
                        "dead_reason = NULL, run_at = ?, order_key = ?, unique_key = ?, "
                        "live_key = ? WHERE id = ?",
                        (
                            "pending" if run_at <= now else "scheduled",
                            run_at,
                            run_at - row.priority * aging,
                            key,
                            key,
                            task_id,
                        ),
                    )
                    out.append((TaskId(task_id), row.queue))
            return out

        replayed = await self._run(replay)
        for queue in {q for _, q in replayed}:
            self._wake(queue)
        return [task_id for task_id, _ in replayed]

    async def stats(self) -> list[QueueStats]:
        def stats(conn: sqlite3.Connection) -> list[QueueStats]:
            counts: dict[str, dict[str, int]] = {}
            for queue, state, n in conn.execute(
                "SELECT queue, state, count(*) FROM turret_tasks GROUP BY queue, state"
            ):
                counts.setdefault(queue, {})[state] = n
            flags = {
                name: (bool(paused), reclaimed)
                for name, paused, reclaimed in conn.execute(
                    "SELECT name, paused, reclaimed FROM turret_queues "
                    "WHERE paused OR reclaimed > 0"
                )
            }
            out = []
            for queue in sorted(set(counts) | set(flags)):
                c = counts.get(queue, {})
                paused, reclaimed = flags.get(queue, (False, 0))
                out.append(
                    QueueStats(
                        queue=queue,
                        pending=c.get("pending", 0),
                        scheduled=c.get("scheduled", 0),
                        leased=c.get("leased", 0),
                        done=c.get("done", 0),
                        dead=c.get("dead", 0),
                        paused=paused,
                        reclaimed=reclaimed,
                    )
                )
            return out

        return await self._run(stats)
