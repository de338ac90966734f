"""A PostgreSQL backend: many worker processes on many machines sharing one queue.

psycopg 3's async API is asyncio-only, so statements run psycopg's own non-blocking
protocol generators driven from trio (``wait_readable``/``wait_writable`` on the
socket, see :mod:`._pg_conn`): one pooled connection per concurrent call under a
bounded :class:`trio.CapacityLimiter`, no thread per statement (a thread hand-off cost
up to the GIL switch interval, 5 ms, per reply on a busy worker). Only opening a
connection runs in ``trio.to_thread.run_sync``; connections are made on demand and
closed when the backend closes. The LISTEN connection is driven from trio the same way,
so the event loop never blocks.

Design, in brief:

* **Claims** are one call of the ``claim()`` SQL function: it reclaims the queue's
  expired leases (adding them to the queue's ``reclaimed`` counter in ``queues``, a
  write made only when there were some), then leases up to ``limit`` due tasks with
  ``FOR UPDATE SKIP LOCKED`` in the contract's order (``order_key = eligible_at -
  priority * aging``, then the time-sortable id), each with a token from one sequence.
* **Acks in bulk**: ``ack_many`` (a worker's settler) is one ``UPDATE ... FROM
  unnest(...) RETURNING id, token`` per ``max_ack_batch`` acks, each with its own
  outcome (``LeaseLost`` for a stale token); concurrent ``ack`` calls in one process are
  coalesced into the same statement (up to two batches in flight). **Renewals** of
  all a worker's leases are one statement. Acks and renewals commit without waiting
  for the WAL flush (losing one in a server crash only re-runs a task or ends a lease
  early, which at-least-once allows); claims, pushes and other settles are durable.
* **Wake-ups**: pushes (and retries, releases, resumes) ``NOTIFY`` a channel named
  after the schema; one listening connection per backend object fans the
  notifications out to waiting workers through ``trio.Event`` objects. Polling is only
  the fallback, and ``wait_for_work`` never sleeps past the next run_at or lease
  deadline it knows of.
* **Connection loss** (server restart, ``pg_terminate_backend``): the call is retried
  on a fresh connection with capped exponential backoff; it is logged and counted in
  :meth:`PostgresBackend.statistics`. Pushes are idempotent (ids are made before the
  insert) and settles recognise their own earlier success, so a retry loses nothing.
* **Schema**: its own PostgreSQL schema (default ``turret``), versioned migrations
  applied under an advisory lock, automatically on open unless ``migrate=False``
  (then run ``turret db migrate``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar, cast

import attrs
import psycopg
import trio
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from ..core._backend import Job, QueueStats, Renewal, TaskInfo, TaskState, check_queue_name
from ..core._codec import Codec
from ..core._errors import LeaseLost
from ..core._task import Lease, Task, TaskContext, TaskId
from . import _pg_sql as sql
from ._pg_conn import TrioConnection
from ._producer import PRUNE_BATCH, PRUNE_EVERY, Producer
from ._riding import AckRides, Riders

__all__ = ["PostgresBackend", "PostgresStatistics", "redact_dsn"]

#: A float8 in PostgreSQL's binary format (network order).
_FLOAT8 = struct.Struct("!d").unpack

log = logging.getLogger("turret.postgres")

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

ENV_VAR = "TURRET_POSTGRES_URL"
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
# SQLSTATEs after which the statement may simply be run again on a fresh connection.
_TRANSIENT = {"40001", "40P01", "57P01", "57P02", "57P03", "55000"}
# Ack batches flushed at once (each on its own connection).
_ACK_FLIGHTS = 2


#: How long (ms) sent data may stay unacknowledged before the kernel drops the
#: connection (libpq's ``tcp_user_timeout``; Linux only, ignored elsewhere).
_TCP_USER_TIMEOUT_MS = 60_000


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password, as ``host=... port=... dbname=... user=...``.

    Example::

        >>> redact_dsn("postgresql://app:s3cret@db:5432/jobs")
        'host=db port=5432 dbname=jobs user=app'
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparseable dsn>"
    shown = [f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k)]
    return " ".join(shown) or "<default libpq settings>"


def _secrets(dsn: str) -> list[str]:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    return [s for s in (str(password) if password else None, dsn) if s]


@attrs.frozen
class PostgresStatistics:
    """A snapshot of a :class:`PostgresBackend` (see ``statistics()``).

    ``connection_errors`` counts calls that failed because a connection broke (each is
    retried); ``reconnects`` counts connections made to replace broken ones;
    ``listening`` tells whether the LISTEN connection is up (else workers poll);
    ``acks`` counts acks stored, ``ack_batches`` the statements that stored only acks,
    and ``acks_with_claims`` the acks that rode on a claim.

    Example::

        s = backend.statistics()
        print(s.dsn, s.connections, s.connection_errors, s.ack_batches)
    """

    dsn: str
    schema: str
    open: bool
    schema_version: int
    connections: int
    calls_in_flight: int
    max_connections: int
    connection_errors: int
    reconnects: int
    listening: bool
    listener_reconnects: int
    notifications: int
    acks: int
    ack_batches: int
    acks_with_claims: int


class _AckRequest:
    __slots__ = (
        "error",
        "event",
        "expires",
        "finished",
        "now",
        "result",
        "taken",
        "task_id",
        "token",
    )

    def __init__(
        self, task_id: TaskId, token: int, result: bytes | None, expires: float | None, now: float
    ) -> None:
        self.task_id = task_id
        self.token = token
        self.result = result
        self.expires = expires
        self.now = now
        self.finished = False
        self.taken = False  # in a batch being flushed
        self.error: BaseException | None = None
        self.event = trio.Event()


def _row_info(row: tuple[Any, ...], now: float) -> TaskInfo:
    (
        task_id,
        queue,
        state_name,
        payload,
        priority,
        attempt,
        max_attempts,
        run_at,
        enqueued_at,
        headers,
        unique_key,
        owner,
        deadline,
        token,
        lost,
        result,
        result_expires_at,
        last_error,
        dead_reason,
        cancel_reason,
    ) = row
    if state_name == "scheduled" and run_at <= now:
        state_name = "pending"  # promoted lazily: claimable since run_at
    state = TaskState(state_name)
    leased = state is TaskState.LEASED
    expired = result_expires_at is not None and result_expires_at <= now
    return TaskInfo(
        id=TaskId(task_id),
        queue=queue,
        state=state,
        args=bytes(payload),
        attempt=attempt,
        max_attempts=max_attempts,
        priority=priority,
        run_at=run_at,
        enqueued_at=enqueued_at,
        headers=dict(headers),
        unique_key=unique_key,
        owner=owner if leased else None,
        lease_deadline=deadline if leased else None,
        token=token,
        lost=lost,
        result=None if expired or result is None else bytes(result),
        result_expires_at=None if expired else result_expires_at,
        last_error=last_error,
        dead_reason=dead_reason,
        cancel_requested=cancel_reason is not None,
    )


@asynccontextmanager
async def _transaction(conn: TrioConnection) -> AsyncIterator[None]:
    """``BEGIN`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection.

    A body interrupted mid-statement leaves the connection unusable (it is then closed,
    which rolls back), so the rollback is only attempted while the connection is
    reusable.
    """
    await conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        if conn.reusable and not conn.broken:
            with trio.CancelScope(shield=True):
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


def _is_transient(exc: BaseException, conn: Conn | None) -> bool:
    """True when ``exc`` means "the connection broke" (or a retryable conflict)."""
    if not isinstance(exc, psycopg.Error):
        return False
    if getattr(exc, "sqlstate", None) in _TRANSIENT:
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate.startswith("08"):
        return True
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return conn is None or conn.broken or conn.closed
    return False


class PostgresBackend(Producer):
    """Tasks in PostgreSQL, shared by any number of worker processes on any machines.

    Open it with ``async with`` (or :meth:`open`); every connection is closed on exit and
    no thread or task of the backend outlives the block. The DSN comes from ``dsn`` or,
    when omitted, the ``TURRET_POSTGRES_URL`` environment variable; its password never
    appears in a repr, a log line or an error raised here (see :func:`redact_dsn`).

    Time comes from ``clock`` (default ``time.time``: the machines' clocks should agree,
    e.g. with NTP; skew shortens or lengthens leases by as much). ``schema`` names the
    PostgreSQL schema holding turret's tables (default ``turret``); with ``migrate=True``
    the schema is created or upgraded on open, under an advisory lock so that
    concurrent starters do not race. A broken connection is replaced and the call
    retried with backoff up to ``reconnect_timeout`` seconds (``None``: for ever). A
    statement with no reply for ``response_timeout`` seconds (a server that hangs, or a
    host or network gone silent) counts as a broken connection too; migrations, which
    may wait for another starter's lock, are exempt.
    Up to ``max_connections`` pooled connections; ``min_connections`` (default
    ``min(4, max_connections)``) are opened with the backend. A done task's row is kept
    ``done_ttl`` seconds (at least as long as its result; ``None``: forever), then
    deleted by a background prune about once a minute; dead letters stay until replayed.

    Example::

        async with PostgresBackend.open("postgresql://app@db/jobs") as backend:
            await backend.push({"to": "a@b.c"}, queue="mail")
            worker = WorkerBuilder("mail").backend(backend).queue("mail").build(send)
            await worker.run()
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = "turret",
        codec: Codec | None = None,
        clock: Callable[[], float] = time.time,
        default_max_attempts: int = 3,
        max_payload_bytes: int = 1 << 20,
        aging: float = 60.0,
        max_lost: int = 3,
        result_ttl: float | None = 7 * 86400.0,
        done_ttl: float | None = 7 * 86400.0,
        poll_interval: float = 5.0,
        max_connections: int = 8,
        min_connections: int | None = None,
        migrate: bool = True,
        listen: bool = True,
        connect_timeout: float = 10.0,
        reconnect_timeout: float | None = None,
        response_timeout: float | None = 30.0,
        max_ack_batch: int = 1000,
        application_name: str = "turret",
    ) -> None:
        if dsn is None:
            dsn = os.environ.get(ENV_VAR)
            if not dsn:
                raise ValueError(
                    f"no PostgreSQL DSN: pass PostgresBackend(dsn=...) or set {ENV_VAR}"
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
        if not _SCHEMA_RE.match(schema):
            raise ValueError(
                f"schema must be a lower-case SQL identifier of at most 40 characters "
                f"(letters, digits, _), got {schema!r}"
            )
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        if min_connections is None:
            min_connections = min(4, max_connections)
        if not 0 <= min_connections <= max_connections:
            raise ValueError(
                f"min_connections must be between 0 and max_connections ({max_connections}), "
                f"got {min_connections!r}"
            )
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout!r}")
        if response_timeout is not None and not response_timeout > 0:
            raise ValueError(
                f"response_timeout must be > 0 seconds or None, got {response_timeout!r} (it "
                "bounds the wait for one statement's reply; migrations are exempt)"
            )
        if reconnect_timeout is not None and reconnect_timeout < 0:
            raise ValueError(
                f"reconnect_timeout must be >= 0 seconds or None, got {reconnect_timeout!r}"
            )
        if max_ack_batch < 1:
            raise ValueError(f"max_ack_batch must be >= 1, got {max_ack_batch!r}")
        self._dsn = dsn
        self._secrets = _secrets(dsn)
        self.dsn = redact_dsn(dsn)
        self.schema = schema
        self._q = f'"{schema}"'
        self.channel = f"turret_wake_{schema}"
        self.poll_interval = poll_interval
        self.migrate_on_open = migrate
        self.listen = listen
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.response_timeout = response_timeout
        self.max_ack_batch = max_ack_batch
        self.application_name = application_name
        self._limiter = trio.CapacityLimiter(max_connections)
        self.min_connections = min_connections
        self._free: list[TrioConnection] = []
        self._connections = 0
        self._in_flight = 0
        self._open = False
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        self._wakeups: dict[str, trio.Event] = {}
        self._listener: _Listener | None = None
        self._acks: list[_AckRequest] = []
        self._ack_flights = 0
        self._rides = AckRides()
        self._connection_errors = 0
        self._reconnects = 0
        self._ack_count = 0
        self._ack_batches = 0
        self._sql: dict[str, str] = {}
        self._next_prune = -math.inf  # when an ack flush next starts forgetting done tasks
        self._pruning = False
        self._prune_again = False  # a prune came due while one was running

    def __repr__(self) -> str:
        state = "open" if self._open else ("closed" if self._closed else "new")
        return f"<PostgresBackend {self.dsn!r} schema={self.schema!r} {state}>"

    def _s(self, template: str) -> str:
        """A statement template with the schema filled in (cached)."""
        text = self._sql.get(template)
        if text is None:
            text = self._sql[template] = template.replace("{s}", self._q)
        return text

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text

    # --- lifetime -------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(cls, dsn: str | None = None, **options: Any) -> AsyncIterator[PostgresBackend]:
        """Connect (migrating the schema if needed) and close everything on exit.

        Takes the same keyword options as the constructor.

        Example::

            async with PostgresBackend.open(schema="jobs", max_connections=4) as backend:
                ...
        """
        async with cls(dsn, **options) as backend:
            yield backend

    async def __aenter__(self) -> PostgresBackend:
        if self._open or self._closed:
            raise RuntimeError(
                f"{self!r} was already opened; make a new PostgresBackend for each "
                "`async with` block"
            )
        self._open = True
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        try:
            # The first connection fails fast (a wrong DSN is not a blip to wait out).
            version = await self._run(self._current_version, retry=False)
            if version != sql.SCHEMA_VERSION:
                if not self.migrate_on_open:
                    raise RuntimeError(
                        f"schema {self.schema!r} is at version {version}, this turret needs "
                        f"{sql.SCHEMA_VERSION}: run `turret db migrate --schema {self.schema}` "
                        "or open with migrate=True"
                    )
                await self.migrate()
            await self._warm_up()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _warm_up(self) -> None:
        """Open ``min_connections`` now, so a burst of work right after open (a worker's
        first claims and acks) does not wait for new server processes to fork."""
        missing = self.min_connections - len(self._free)

        async def connect() -> None:
            async with self._limiter:
                self._free.append(await self._new_connection())

        async with trio.open_nursery() as nursery:
            for _ in range(missing):
                nursery.start_soon(connect)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._closed:
            return False
        self._open = False
        self._closed = True
        for event in self._wakeups.values():
            event.set()
        manager, self._nursery_manager = self._nursery_manager, None
        try:
            if manager is not None and self._nursery is not None:
                self._nursery.cancel_scope.cancel()
                # Only our own nursery's cancellation belongs to it; anything else the
                # body raised propagates unchanged (not wrapped in a group).
                if isinstance(exc, trio.Cancelled):
                    await manager.__aexit__(exc_type, exc, tb)
                else:
                    await manager.__aexit__(None, None, None)
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                async with self._limiter:  # every call has returned its connection
                    pass
                free, self._free = self._free, []
                for conn in free:
                    conn.close()
                self._connections -= len(free)
        return False

    def statistics(self) -> PostgresStatistics:
        """A frozen snapshot: connections, calls in flight, reconnects, ack batching.

        Example::

            assert backend.statistics().calls_in_flight == 0
        """
        listener = self._listener
        return PostgresStatistics(
            dsn=self.dsn,
            schema=self.schema,
            open=self._open,
            schema_version=sql.SCHEMA_VERSION,
            connections=self._connections,
            calls_in_flight=self._in_flight,
            max_connections=int(self._limiter.total_tokens),
            connection_errors=self._connection_errors,
            reconnects=self._reconnects,
            listening=listener is not None and listener.connected,
            listener_reconnects=0 if listener is None else listener.reconnects,
            notifications=0 if listener is None else listener.notifications,
            acks=self._ack_count,
            ack_batches=self._ack_batches,
            acks_with_claims=self._rides.carried,
        )

    # --- connections ----------------------------------------------------------------

    def _connect(self) -> Conn:
        try:
            conn: Conn = psycopg.Connection.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name=self.application_name,
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
                # a request the server never acknowledges (its host or the network gone)
                # fails after this long instead of TCP's ~15 minutes of retransmissions
                tcp_user_timeout=_TCP_USER_TIMEOUT_MS,
            )
        except psycopg.Error as exc:
            text = str(exc)
            scrubbed = self._scrub(text)
            if scrubbed != text:
                raise type(exc)(scrubbed) from None
            raise
        return conn

    async def _new_connection(self) -> TrioConnection:
        """A new pool connection, counted; connecting is the only step run in a thread."""
        conn = await trio.to_thread.run_sync(self._open_connection)
        self._connections += 1
        return conn

    def _open_connection(self) -> TrioConnection:
        conn = self._connect()
        conn.pgconn.nonblocking = 1  # flushes wait on trio (Wait.W), never block the loop
        return TrioConnection(conn)

    async def _run(
        self,
        fn: Callable[[TrioConnection, bool], Awaitable[T]],
        *,
        retry: bool = True,
        bounded: bool = True,
    ) -> T:
        """Run ``await fn(conn, retried)`` on a pooled connection, on trio.

        Statements are driven from the event loop (see :mod:`._pg_conn`); only making a
        new connection runs in a thread. ``fn`` runs shielded from cancellation; a
        connection left mid-statement or mid-transaction (an unexpected error) or broken
        is closed, never pooled. A broken connection is replaced and the call retried
        with capped exponential backoff (``retried`` is then True, so ``fn`` can
        recognise its own earlier success when the first attempt committed but the
        reply was lost). ``bounded``: a reply that takes longer than ``response_timeout``
        is given up on, the connection closed and the call retried, as if it had broken.
        """
        if not self._open:
            raise RuntimeError(
                "PostgresBackend is not open; use `async with PostgresBackend.open(dsn) as "
                "backend:` and call it inside the block"
            )
        failures = 0
        started = trio.current_time()
        limiter = self._limiter
        while True:
            # A free connection slot is taken without a schedule point, so the statement
            # is sent now, not after every other task runnable in this batch (a claim
            # led in the middle of a burst of finishing tasks would wait for all of them).
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                await limiter.acquire()
            try:
                conn = self._free.pop() if self._free else None
                self._in_flight += 1
                try:
                    if conn is None:
                        conn = await self._new_connection()
                        if failures:
                            self._reconnects += 1
                    # Once sent, a statement runs to its reply (as it did in a thread):
                    # abandoning it could leave its effect applied unbeknown to the caller
                    # (an ack flushed twice would report a false LeaseLost). Cancellation
                    # takes effect at the caller's next checkpoint.
                    deadline = math.inf
                    if bounded and self.response_timeout is not None:
                        deadline = trio.current_time() + self.response_timeout
                    with trio.CancelScope(shield=True, deadline=deadline) as scope:
                        result = await fn(conn, failures > 0)
                    if scope.cancelled_caught:  # abandoned mid-statement: conn is closed below
                        raise psycopg.errors.ConnectionFailure(
                            f"no reply from PostgreSQL within {self.response_timeout:g}s "
                            "(response_timeout)"
                        )
                except BaseException as exc:
                    transient = _is_transient(exc, None if conn is None else conn.conn)
                    if conn is not None:
                        if conn.idle and not transient:
                            self._free.append(conn)  # LeaseLost and friends: it is fine
                        else:
                            conn.close()
                            self._connections -= 1
                    if not isinstance(exc, psycopg.Error):
                        raise
                    if not (retry and transient):
                        if transient:
                            raise type(exc)(self._scrub(str(exc))) from None
                        raise
                    failures += 1
                    self._connection_errors += 1
                    log.warning(
                        "postgres %s: %s: %s (retry %d)",
                        self.dsn,
                        type(exc).__name__,
                        self._scrub(str(exc)).strip(),
                        failures,
                    )
                else:
                    if conn.idle:
                        self._free.append(conn)
                    else:  # fn left a transaction open (a bug): never pool that
                        conn.close()
                        self._connections -= 1
                    return result
                finally:
                    self._in_flight -= 1
            finally:
                limiter.release()
            if (
                self.reconnect_timeout is not None
                and trio.current_time() - started > self.reconnect_timeout
            ):
                raise ConnectionError(
                    f"PostgreSQL at {self.dsn} unreachable for more than "
                    f"{self.reconnect_timeout:g}s; check the server"
                )
            # Stale pooled connections fail at once: retry the first failure immediately.
            delay = 0.0 if failures == 1 else min(2.0, 0.05 * 2 ** (failures - 2))
            if delay:
                await trio.sleep(delay)

    def _wake(self, queue: str) -> None:
        event = self._wakeups.pop(queue, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        wakeups, self._wakeups = self._wakeups, {}
        for event in wakeups.values():
            event.set()

    # --- schema ---------------------------------------------------------------------

    async def _current_version(self, conn: TrioConnection, retried: bool = False) -> int:
        rows = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{self._q}.migrations",))
        if not rows or not rows[0][0]:
            return 0
        found = await conn.execute(self._s("SELECT coalesce(max(version), 0) FROM {s}.migrations"))
        return int(found[0][0]) if found else 0

    async def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema; return ``(version before, version after)``.

        Safe to run from many processes at once: migrations run in one transaction
        under a transaction-level advisory lock keyed by the schema name.

        Example::

            async with PostgresBackend.open(dsn, migrate=False) as backend:
                before, after = await backend.migrate()
        """

        async def migrate(conn: TrioConnection, retried: bool) -> tuple[int, int]:
            async with _transaction(conn):
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"turret:{self.schema}",)
                )
                await conn.execute(self._s("CREATE SCHEMA IF NOT EXISTS {s}"))
                await conn.execute(
                    self._s(
                        "CREATE TABLE IF NOT EXISTS {s}.migrations (version integer PRIMARY "
                        "KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                )
                before = await self._current_version(conn)
                if before > sql.SCHEMA_VERSION:
                    raise RuntimeError(
                        f"schema {self.schema!r} is at version {before}, newer than this "
                        f"turret's {sql.SCHEMA_VERSION}; upgrade turret"
                    )
                for number in range(before, sql.SCHEMA_VERSION):
                    for statement in sql.MIGRATIONS[number]:
                        await conn.execute(self._s(statement))
                    await conn.execute(
                        self._s("INSERT INTO {s}.migrations (version) VALUES (%s)"),
                        (number + 1,),
                    )
                if before != sql.SCHEMA_VERSION:
                    log.info(
                        "postgres %s: schema %s migrated from version %d to %d",
                        self.dsn,
                        self.schema,
                        before,
                        sql.SCHEMA_VERSION,
                    )
                return before, sql.SCHEMA_VERSION

        return await self._run(migrate, bounded=False)  # may wait for another starter

    # --- producing ------------------------------------------------------------------

    async def _store(self, encoded: Sequence[tuple[Job, bytes]]) -> list[TaskId]:
        if not encoded:
            return []
        now = self.now()
        aging = self.aging
        ids = [TaskId.new() for _ in encoded]  # made here: a retried insert is idempotent
        run_ats = [now + job.delay for job, _ in encoded]
        params = {
            "now": now,
            "ids": ids,
            "queues": [job.queue for job, _ in encoded],
            "states": ["pending" if r <= now else "scheduled" for r in run_ats],
            "payloads": [payload for _, payload in encoded],
            "priorities": [job.priority for job, _ in encoded],
            "max_attempts": [job.max_attempts or self.default_max_attempts for job, _ in encoded],
            "run_ats": run_ats,
            "order_keys": [
                max(now, r) - job.priority * aging
                for (job, _), r in zip(encoded, run_ats, strict=True)
            ],
            "headers": [json.dumps(dict(job.headers)) for job, _ in encoded],
            "unique_keys": [job.unique_key for job, _ in encoded],
            "channel": self.channel,
        }
        keys = {i: job.unique_key for i, (job, _) in enumerate(encoded) if job.unique_key}
        push_sql = self._s(sql.PUSH)
        by_key_sql = self._s(sql.LIVE_BY_KEY)

        async def insert(conn: TrioConnection, retried: bool) -> list[TaskId]:
            out = list(ids)
            inserted: set[str] = set()
            for _ in range(100):
                rows = await conn.execute(push_sql, params)
                inserted.update(rows[0][0] or () if rows else ())
                # A job whose unique key is live returns that task's id instead (a
                # retried call finds its own rows this way too).
                waiting = {i: k for i, k in keys.items() if ids[i] not in inserted}
                if not waiting:
                    return out
                found = await conn.execute(by_key_sql, (sorted(set(waiting.values())),))
                live = {key: TaskId(task_id) for key, task_id in found}
                if all(key in live for key in waiting.values()):
                    for i, key in waiting.items():
                        out[i] = live[key]
                    return out
                # The live task finished between the insert and the look-up: run the
                # (idempotent) insert again, its key is free now.
            raise RuntimeError("unique keys kept changing hands during push; try again")

        result = await self._run(insert)
        for queue in {job.queue for job, _ in encoded}:
            self._wake(queue)
        return result

    # --- consuming ------------------------------------------------------------------

    async def claim(
        self, queue: str, *, owner: str, limit: int, lease_ttl: float
    ) -> list[Task[bytes]]:
        if limit < 1:
            return []
        now = self.now()
        deadline = now + lease_ttl
        params = [
            queue.encode(),
            owner.encode(),
            b"%d" % limit,
            repr(now).encode(),
            repr(deadline).encode(),
            b"%d" % self.max_lost,
        ]
        riders = self._rides.take(self.max_ack_batch)
        if riders:
            name, query, first = b"turret_claim_acking", self._s(sql.CLAIM_ACKING).encode(), 1
            keys = AckRides.keys(riders)
            params += [
                ",".join(task_id for task_id, _ in keys).encode(),
                ",".join(str(token) for _, token in keys).encode(),
            ]
        else:
            name, query, first = b"turret_claim", self._s(sql.CLAIM).encode(), 0

        async def claim(conn: TrioConnection, retried: bool) -> pq.abc.PGresult:
            res = await conn.run_prepared(name, query, params)
            if riders:  # answered here, shielded with the statement (see ``_run``)
                await self._answer_riders(conn, res, riders, now, retried)
            return res

        with self._rides.claiming(riders):
            res = await self._run(claim)
        # Every column of a claimed task is NOT NULL: raw bytes in the binary format.
        value = cast(Callable[[int, int], bytes], res.get_value)
        tasks = []
        for r in range(res.ntuples):
            if first and value(r, 0) != b"\x00\x00\x00\x00":
                break  # the acks' rows come after the claimed tasks
            headers = value(r, first + 7)
            tasks.append(
                Task(
                    value(r, first + 1),
                    TaskContext(
                        id=TaskId(value(r, first).decode()),
                        queue=queue,
                        attempt=int.from_bytes(value(r, first + 2), signed=True),
                        max_attempts=int.from_bytes(value(r, first + 3), signed=True),
                        priority=int.from_bytes(value(r, first + 4), signed=True),
                        run_at=_FLOAT8(value(r, first + 5))[0],
                        enqueued_at=_FLOAT8(value(r, first + 6))[0],
                        headers={} if headers == b"{}" else json.loads(headers),
                        lease=Lease(
                            owner, deadline, int.from_bytes(value(r, first + 8), signed=True)
                        ),
                    ),
                )
            )
        return tasks

    async def _answer_riders(
        self,
        conn: TrioConnection,
        res: pq.abc.PGresult,
        riders: list[Riders],
        now: float,
        retried: bool,
    ) -> None:
        # An ack row's id and token are NOT NULL: raw bytes in the binary format.
        value = cast(Callable[[int, int], bytes], res.get_value)
        done = {
            (value(r, 1).decode(), int.from_bytes(value(r, 9), signed=True))
            for r in range(res.ntuples)
            if value(r, 0) == b"\x00\x00\x00\x01"
        }
        keys = AckRides.keys(riders)
        failed = await self._refused(conn, ((i, t, now) for i, t in keys), done, retried)
        AckRides.answer(riders, [failed.get(key) for key in keys])
        self._ack_count += len(keys)

    async def _refused(
        self,
        conn: TrioConnection,
        acks: Iterable[tuple[str, int, float]],
        done: set[tuple[str, int]],
        retried: bool,
    ) -> dict[tuple[str, int], LeaseLost | None]:
        """Why each ack (id, token, time) that is not in ``done`` matched no row."""
        return {
            (i, t): await self._lease_error(conn, TaskId(i), t, now, retried, "done")
            for i, t, now in acks
            if (i, t) not in done
        }

    async def wait_for_work(self, queue: str) -> None:
        if self.listen and self._listener is None and self._nursery is not None:
            self._listener = _Listener(self)
            try:
                await self._nursery.start(self._listener.run)
            except BaseException:
                self._listener = None  # cancelled while starting: the next wait retries
                raise
        # The event exists before we look, so a push made while we look still wakes us.
        event = self._wakeups.get(queue)
        if event is None:
            event = self._wakeups[queue] = trio.Event()
        now = self.now()
        statement = self._s(sql.NEXT_DUE)

        async def next_due(conn: TrioConnection, retried: bool) -> tuple[Any, ...]:
            rows = await conn.execute(statement, {"queue": queue})
            return rows[0]

        row = await self._run(next_due)
        paused, pending, scheduled, lease = row
        if paused:
            due: float | None = None  # only a resume (or the poll) makes work claimable
        elif pending:
            return
        else:
            times = [t for t in (scheduled, lease) if t is not None]
            due = min(times) if times else None
        listening = self._listener is not None and self._listener.connected
        span = self.poll_interval if listening else min(self.poll_interval, 1.0)
        if due is not None:
            span = min(span, due - now)
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
        params = {
            "ids": [task_id for task_id, _ in pairs],
            "tokens": [token for _, token in pairs],
            "deadline": now + lease_ttl,
            "now": now,
        }
        statement = self._s(sql.RENEW)

        async def renew(conn: TrioConnection, retried: bool) -> list[tuple[Any, ...]]:
            return await conn.execute(statement, params)

        rows = await self._run(renew)
        verdicts = {
            (r[0], r[1]): Renewal.CANCEL_REQUESTED if r[2] else Renewal.RENEWED for r in rows
        }
        return [verdicts.get((task_id, token), Renewal.LOST) for task_id, token in pairs]

    async def _lease_error(
        self,
        conn: TrioConnection,
        task_id: TaskId,
        token: int,
        now: float,
        retried: bool,
        done_state: str,
    ) -> LeaseLost | None:
        """Why a settle matched no row; ``None`` when it was our own earlier success."""
        rows = await conn.execute(
            self._s("SELECT state, token, deadline FROM {s}.tasks WHERE id = %s"), (task_id,)
        )
        if not rows:
            return LeaseLost(f"task {task_id} is unknown to this backend")
        state, current, deadline = rows[0]
        if retried and current == token and state == done_state:
            return None  # the first attempt committed; only its reply was lost
        if state != "leased" or current != token:
            return LeaseLost(
                f"task {task_id}: lease token {token} is stale (task is {state}, "
                f"current token {current})"
            )
        return LeaseLost(f"task {task_id}: lease expired at {deadline:.3f}")

    async def ack(self, task_id: TaskId, token: int, *, result: bytes | None = None) -> None:
        now = self.now()
        expires = None if result is None or self.result_ttl is None else now + self.result_ttl
        req = _AckRequest(task_id, token, result, expires, now)
        self._acks.append(req)
        try:
            while not req.finished:
                if req.taken or self._ack_flights >= _ACK_FLIGHTS:
                    await req.event.wait()
                    req.event = trio.Event()
                    continue
                await self._lead_acks(req)
        except BaseException:
            if not req.finished and req in self._acks:
                self._acks.remove(req)
            raise
        if req.error is not None:
            raise req.error

    async def _lead_acks(self, mine: _AckRequest) -> None:
        """Flush the queued acks (``mine`` among them, unless another flush took it).

        Up to ``_ACK_FLIGHTS`` flushes run at once on separate connections, so acks
        queued while one batch is in flight need not wait for its round trip.
        """
        self._ack_flights += 1
        batch: list[_AckRequest] = []
        try:
            await trio.lowlevel.checkpoint()  # let acks finishing right now join the batch
            batch = self._acks[: self.max_ack_batch]
            del self._acks[: len(batch)]
            for r in batch:
                r.taken = True
            if batch:
                await self._flush_acks(batch)
            batch = []
        finally:
            self._ack_flights -= 1
            # Not flushed (cancelled while retrying): back in line for the next leader.
            back = [r for r in batch if not r.finished and r is not mine]
            for r in back:
                r.taken = False
            self._acks[:0] = back
            if self._acks:
                self._acks[0].event.set()

    async def _flush_acks(self, batch: list[_AckRequest]) -> None:
        try:
            failed = await self._store_acks(
                [r.task_id for r in batch],
                [r.token for r in batch],
                [r.now for r in batch],
                [r.result for r in batch],
                [r.expires for r in batch],
            )
        except trio.Cancelled:
            raise
        except BaseException as exc:
            for r in batch:
                r.finished = True
                r.error = exc
                r.event.set()
            return
        for r in batch:
            r.finished = True
            r.error = failed.get((r.task_id, r.token))
            r.event.set()

    async def ack_many(
        self, acks: Sequence[tuple[TaskId, int, bytes | None]]
    ) -> list[LeaseLost | None]:
        """Ack several tasks, one statement per ``max_ack_batch`` of them; one outcome each.

        Example::

            outcomes = await backend.ack_many([(task.ctx.id, task.ctx.lease.token, None)])
        """
        rode = await self._rides.ride(acks, self.max_ack_batch)
        if rode is not None:
            return rode
        now = self.now()
        expires = None if self.result_ttl is None else now + self.result_ttl
        outcomes: list[LeaseLost | None] = []
        for start in range(0, len(acks), self.max_ack_batch):
            chunk = acks[start : start + self.max_ack_batch]
            ids = [task_id for task_id, _, _ in chunk]
            tokens = [token for _, token, _ in chunk]
            results = [result for _, _, result in chunk]
            failed = await self._store_acks(
                ids,
                tokens,
                [now] * len(chunk),
                results,
                [None if r is None else expires for r in results],
            )
            outcomes += [failed.get(key) for key in zip(ids, tokens, strict=True)]
        return outcomes

    async def _store_acks(
        self,
        ids: list[TaskId],
        tokens: list[int],
        nows: list[float],
        results: list[bytes | None],
        expires: list[float | None],
    ) -> dict[tuple[str, int], LeaseLost | None]:
        """Ack the tasks in one statement; the refused ones, by (task id, token)."""
        if any(r is not None for r in results):
            params: dict[str, Any] = {
                "ids": ids,
                "tokens": tokens,
                "nows": nows,
                "results": results,
                "expires": expires,
            }
            statement = self._s(sql.ACK)

            async def store(conn: TrioConnection) -> set[tuple[str, int]]:
                return {(row[0], row[1]) for row in await conn.execute(statement, params)}

        else:  # the usual batch: the leaner prepared statement
            query = self._s(sql.ACK_NO_RESULTS).encode()
            stamps = {now: repr(now) for now in set(nows)}  # one, from ack_many: repr is dear
            texts = [
                ",".join(ids).encode(),
                ",".join(map(str, tokens)).encode(),
                ",".join([stamps[now] for now in nows]).encode(),
            ]

            async def store(conn: TrioConnection) -> set[tuple[str, int]]:
                res = await conn.run_prepared(b"turret_ack", query, texts)
                value = cast(Callable[[int, int], bytes], res.get_value)
                return {
                    (value(r, 0).decode(), int.from_bytes(value(r, 1), signed=True))
                    for r in range(res.ntuples)
                }

        async def flush(
            conn: TrioConnection, retried: bool
        ) -> dict[tuple[str, int], LeaseLost | None]:
            done = await store(conn)
            return await self._refused(conn, zip(ids, tokens, nows, strict=True), done, retried)

        failed = await self._run(flush)
        self._ack_batches += 1
        self._ack_count += len(ids)
        self._maybe_prune()
        return failed

    def _maybe_prune(self) -> None:
        """At most once a minute, forget old done tasks in the background (the backend's
        own nursery), never on an ack's path."""
        if self._forget_after is None or self._nursery is None:
            return
        now = self.now()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            if self._pruning:  # due while the last one still runs: it goes round again
                self._prune_again = True
                return
            self._pruning = True
            self._nursery.start_soon(self._prune_in_background)

    async def _prune_in_background(self) -> None:
        try:
            while True:
                # Closing the backend cancels this task: stop before the next statement.
                await trio.lowlevel.checkpoint_if_cancelled()
                if await self._prune_batch() < PRUNE_BATCH:
                    if not self._prune_again:
                        return
                    self._prune_again = False
        finally:
            self._pruning = False
            self._prune_again = False

    async def prune(self) -> int:
        """Forget the done tasks past their retention now; how many. Workers also do it
        about once a minute, in batches of short transactions.

        Example::

            async with PostgresBackend.open(dsn, done_ttl=86400) as backend:
                forgotten = await backend.prune()
        """
        total = 0
        while True:
            n = await self._prune_batch()
            total += n
            if n < PRUNE_BATCH:
                return total

    async def _prune_batch(self) -> int:
        """Delete up to PRUNE_BATCH done tasks past their retention, in one statement."""
        if self._forget_after is None:
            await trio.lowlevel.checkpoint()
            return 0
        now = self.now()
        params = {"cutoff": now - self._forget_after, "now": now, "limit": PRUNE_BATCH}
        statement = self._s(sql.PRUNE)

        async def prune(conn: TrioConnection, retried: bool) -> int:
            rows = await conn.execute(statement, params)
            return int(rows[0][0])

        return await self._run(prune)

    async def _settle(
        self,
        template: str,
        params: dict[str, Any],
        task_id: TaskId,
        token: int,
        now: float,
        done_states: tuple[str, ...],
    ) -> tuple[Any, ...]:
        statement = self._s(template)

        async def settle(conn: TrioConnection, retried: bool) -> tuple[Any, ...]:
            rows = await conn.execute(statement, params)
            if rows:
                return tuple(rows[0])
            for state in done_states:
                error = await self._lease_error(conn, task_id, token, now, retried, state)
                if error is None:
                    return ()
            assert error is not None
            raise error

        return await self._run(settle)

    async def retry(self, task_id: TaskId, token: int, *, delay: float, error: str) -> None:
        now = self.now()
        params = {
            "id": task_id,
            "token": token,
            "now": now,
            "run_at": now + max(0.0, delay),
            "error": error,
            "aging": self.aging,
            "channel": self.channel,
        }
        row = await self._settle(
            sql.RETRY, params, task_id, token, now, ("pending", "scheduled", "dead")
        )
        if row and row[1] != "dead":
            self._wake(row[0])

    async def dead(self, task_id: TaskId, token: int, *, reason: str) -> None:
        now = self.now()
        params = {"id": task_id, "token": token, "now": now, "reason": reason}
        await self._settle(sql.DEAD, params, task_id, token, now, ("dead",))

    async def release(self, task_id: TaskId, token: int) -> None:
        now = self.now()
        params = {"id": task_id, "token": token, "now": now, "channel": self.channel}
        row = await self._settle(sql.RELEASE, params, task_id, token, now, ("pending", "dead"))
        if row and row[1] != "dead":
            self._wake(row[0])

    # --- producers and operators ----------------------------------------------------

    async def get_task(self, task_id: TaskId) -> TaskInfo | None:
        now = self.now()
        params: dict[str, Any] = {"id": task_id}
        where = "id = %(id)s"
        if self._forget_after is not None:  # done and past retention, not yet deleted: gone
            params.update(cutoff=now - self._forget_after, now=now)
            where += f" AND NOT {sql.KEPT_PAST}"
        statement = self._s(f"SELECT {sql.COLUMNS} FROM {{s}}.tasks WHERE {where}")

        async def get(conn: TrioConnection, retried: bool) -> tuple[Any, ...] | None:
            rows = await conn.execute(statement, params)
            return rows[0] if rows else None

        row = await self._run(get)
        return None if row is None else _row_info(row, now)

    async def cancel(self, task_id: TaskId, *, reason: str = "cancel requested") -> bool:
        statement = self._s(sql.CANCEL)

        async def cancel(conn: TrioConnection, retried: bool) -> bool:
            return bool(await conn.execute(statement, {"id": task_id, "reason": reason}))

        return await self._run(cancel)

    async def reclaim(self) -> int:
        now = self.now()
        statement = self._s(sql.RECLAIM_COUNTED)

        async def reclaim(conn: TrioConnection, retried: bool) -> int:
            rows = await conn.execute(statement, {"now": now, "max_lost": self.max_lost})
            return int(rows[0][0]) if rows else 0

        return await self._run(reclaim)

    async def _set_paused(self, queue: str, paused: bool) -> None:
        check_queue_name(queue)
        statement = self._s(sql.SET_PAUSED)
        params = {"queue": queue, "paused": paused, "channel": self.channel}

        async def pause(conn: TrioConnection, retried: bool) -> None:
            await conn.execute(statement, params)

        await self._run(pause)
        if not paused:
            self._wake(queue)

    async def pause_queue(self, queue: str) -> None:
        await self._set_paused(queue, True)

    async def resume_queue(self, queue: str) -> None:
        await self._set_paused(queue, False)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[TaskInfo]:
        now = self.now()
        statement = self._s(
            f"SELECT {sql.COLUMNS} FROM {{s}}.tasks WHERE queue = %s AND state = 'dead' "
            "ORDER BY id LIMIT %s"
        )

        async def dead(conn: TrioConnection, retried: bool) -> list[tuple[Any, ...]]:
            return await conn.execute(statement, (queue, limit))

        return [_row_info(r, now) for r in await self._run(dead)]

    async def replay(self, task_ids: Sequence[TaskId], *, delay: float = 0.0) -> list[TaskId]:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        now = self.now()
        run_at = now + delay
        ids = list(task_ids)
        statement = self._s(sql.REPLAY_ONE)
        notify = "SELECT pg_notify(%s, q) FROM unnest(%s::text[]) AS q"

        async def replay(conn: TrioConnection, retried: bool) -> list[tuple[TaskId, str]]:
            out: list[tuple[TaskId, str]] = []
            async with _transaction(conn):
                for task_id in ids:
                    rows = await conn.execute(
                        statement,
                        {
                            "id": task_id,
                            "state": "pending" if run_at <= now else "scheduled",
                            "run_at": run_at,
                            "aging": self.aging,
                        },
                    )
                    if rows:
                        out.append((TaskId(task_id), rows[0][0]))
                if out:
                    await conn.execute(notify, (self.channel, sorted({q for _, q in out})))
            return out

        replayed = await self._run(replay)
        for queue in {q for _, q in replayed}:
            self._wake(queue)
        return [task_id for task_id, _ in replayed]

    async def stats(self) -> list[QueueStats]:
        now = self.now()
        statement = self._s(sql.STATS)
        flags_sql = self._s(sql.QUEUE_FLAGS)

        async def stats(
            conn: TrioConnection, retried: bool
        ) -> tuple[list[tuple[Any, ...]], dict[str, tuple[bool, int]]]:
            rows = await conn.execute(statement, {"now": now})
            flags = {r[0]: (bool(r[1]), int(r[2])) for r in await conn.execute(flags_sql)}
            return rows, flags

        rows, flags = await self._run(stats)
        counts: dict[str, dict[str, int]] = {}
        for queue, state, n, due in rows:
            c = counts.setdefault(queue, {})
            if state == "scheduled":
                c["pending"] = c.get("pending", 0) + due
                c["scheduled"] = c.get("scheduled", 0) + n - due
            else:
                c[state] = c.get(state, 0) + n
        return [
            QueueStats(
                queue=queue,
                pending=counts.get(queue, {}).get("pending", 0),
                scheduled=counts.get(queue, {}).get("scheduled", 0),
                leased=counts.get(queue, {}).get("leased", 0),
                done=counts.get(queue, {}).get("done", 0),
                dead=counts.get(queue, {}).get("dead", 0),
                paused=flags.get(queue, (False, 0))[0],
                reclaimed=flags.get(queue, (False, 0))[1],
            )
            for queue in sorted(set(counts) | set(flags))
        ]


class _Listener:
    """The one LISTEN connection of a backend: notifications wake waiting workers.

    Driven from trio (``wait_readable`` on the socket, libpq's non-blocking input), so
    it holds no thread. On connection loss it reconnects with backoff and wakes every
    waiter (a notification may have been missed); waiters poll meanwhile.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self.connected = False
        self.reconnects = 0
        self.notifications = 0

    def _connect(self) -> Conn:
        conn = self.backend._connect()
        try:
            conn.execute(f'LISTEN "{self.backend.channel}"')
            conn.pgconn.nonblocking = 1
        except BaseException:
            conn.close()
            raise
        return conn

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backend = self.backend
        failures = 0
        first = True
        while True:
            conn: Conn | None = None
            fd = -1
            try:
                try:
                    conn = await trio.to_thread.run_sync(self._connect)
                except psycopg.Error as exc:
                    if not _is_transient(exc, None):
                        raise
                    failures += 1
                    log.warning(
                        "postgres %s: listener cannot connect: %s (retry %d)",
                        backend.dsn,
                        backend._scrub(str(exc)).strip(),
                        failures,
                    )
                else:
                    if not first:
                        self.reconnects += 1
                        log.info("postgres %s: listener reconnected", backend.dsn)
                    failures = 0
                    self.connected = True
                    backend._wake_all()  # anything may have happened while we were away
                if first:
                    first = False
                    task_status.started()
                if conn is not None:
                    fd = conn.pgconn.socket
                    await self._listen(conn, fd)
            except psycopg.OperationalError as exc:
                failures += 1
                log.warning(
                    "postgres %s: listener connection lost: %s",
                    backend.dsn,
                    backend._scrub(str(exc)).strip(),
                )
            finally:
                self.connected = False
                if conn is not None:
                    if fd >= 0:
                        trio.lowlevel.notify_closing(fd)
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(conn.close)
            backend._wake_all()
            await trio.sleep(min(2.0, 0.05 * 2 ** max(0, failures - 1)))

    async def _listen(self, conn: Conn, fd: int) -> None:
        pgconn = conn.pgconn
        backend = self.backend
        while True:
            await trio.lowlevel.wait_readable(fd)
            pgconn.consume_input()
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the listening connection was closed")
            while (note := pgconn.notifies()) is not None:
                self.notifications += 1
                backend._wake(note.extra.decode())
