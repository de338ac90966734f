"""PostgreSQL-specific behaviour beyond the conformance suite (which runs on it too).

Connection loss (``pg_terminate_backend`` mid-run), the DSN's password never shown,
concurrent migrations, coalesced acks, wake-ups through LISTEN/NOTIFY between two
backend objects (two processes' view), and the lazy import.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
import trio.testing

from turret import Job, LeaseLost, TaskContext, TaskId, TaskState, WorkerBuilder

from .postgres_kit import PREFIX, postgres_test_dsn
from .silent_proxy import SilencingProxy

psycopg = pytest.importorskip("psycopg")

from turret.backends import PostgresBackend, redact_dsn  # noqa: E402

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def dsn() -> str:
    return postgres_test_dsn()


@pytest.fixture
async def schema(dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh schema for one test, dropped afterwards."""
    name = f"{PREFIX}pg_{os.urandom(4).hex()}"
    yield name

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    await trio.to_thread.run_sync(drop)


def with_password(dsn: str) -> str:
    """The test DSN with a password added (the test server trusts and ignores it)."""
    scheme, rest = dsn.split("://", 1)
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo or "postgres"
    return f"{scheme}://{user}:{SECRET}@{hostpart}"


async def terminate(dsn: str, application_name: str) -> int:
    def kill() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application_name,),
            ).fetchone()
            return int(row[0]) if row else 0

    return await trio.to_thread.run_sync(kill)


async def test_connections_killed_mid_run_lose_nothing(dsn: str, schema: str) -> None:
    app = f"turret-kill-{os.urandom(4).hex()}"
    n = 400
    seen: dict[str, int] = {}
    killed_enough = trio.Event()  # tasks finish only after three kills: they land mid-run

    async def handler(i: int, ctx: TaskContext) -> int:
        seen[ctx.id] = seen.get(ctx.id, 0) + 1
        await killed_enough.wait()
        await trio.sleep(0.005)
        return i

    async with PostgresBackend.open(
        dsn, schema=schema, application_name=app, poll_interval=0.5
    ) as backend:
        ids = await backend.push_many([Job(i, queue="k") for i in range(n)])
        workers = [
            WorkerBuilder(f"w{k}")
            .backend(backend)
            .queue("k")
            .concurrency(20)
            .lease_ttl(2.0)
            .poll_interval(0.2)
            .build(handler)
            for k in range(2)
        ]
        kills = 0
        async with trio.open_nursery() as nursery:
            for w in workers:
                nursery.start_soon(w.run)
            with trio.fail_after(60):  # a bound on a real server, not a sleep to wait
                while True:
                    stats = {s.queue: s for s in await backend.stats()}
                    s = stats["k"]
                    if s.pending + s.scheduled + s.leased == 0:
                        break
                    if kills < 6:
                        kills += await terminate(dsn, app) > 0
                    if kills >= 3:
                        killed_enough.set()
                    await trio.sleep(0.1)
            for w in workers:
                w.context.stop()
        assert kills >= 3
        infos = [await backend.get_task(i) for i in ids]
        assert all(info is not None and info.state is TaskState.DONE for info in infos)
        assert set(seen) == set(ids)  # every task ran; a lost reply may run one twice
        stats = backend.statistics()
        assert stats.connection_errors >= 1
        assert stats.listener_reconnects + stats.reconnects >= 1


async def test_push_survives_a_killed_connection(dsn: str, schema: str) -> None:
    app = f"turret-kill-{os.urandom(4).hex()}"
    async with PostgresBackend.open(dsn, schema=schema, application_name=app) as backend:
        first = await backend.push(1)
        assert await terminate(dsn, app) >= 1  # the pooled connection dies idle
        second = await backend.push(2, unique_key="u")
        assert await backend.push(3, unique_key="u") == second
        tasks = await backend.claim("default", owner="w", limit=10, lease_ttl=30)
        assert [t.id for t in tasks] == [first, second]
        assert backend.statistics().connection_errors >= 1


async def test_password_never_shown(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_dsn = with_password(dsn)
    app = f"turret-pw-{os.urandom(4).hex()}"
    caplog.set_level(logging.DEBUG, logger="turret")
    assert SECRET not in redact_dsn(secret_dsn)
    async with PostgresBackend.open(secret_dsn, schema=schema, application_name=app) as backend:
        await backend.push(1)
        await terminate(dsn, app)
        await backend.push(2)  # reconnects, logging a warning
        assert SECRET not in repr(backend)
        assert SECRET not in repr(backend.statistics())
        assert SECRET not in str(vars(backend).get("dsn"))
    assert any("retry" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    # A server that is not there: the error names the host, never the password.
    bad = secret_dsn.replace(dsn.rsplit(":", 1)[0].rsplit("@", 1)[-1], "127.0.0.1") + "x"
    with pytest.raises(psycopg.Error) as info:
        async with PostgresBackend.open(
            f"postgresql://u:{SECRET}@127.0.0.1:1/db", schema=schema, connect_timeout=2
        ):
            pass
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    del bad
    # The DSN from the environment when none is passed.
    monkeypatch.setenv("TURRET_POSTGRES_URL", secret_dsn)
    async with PostgresBackend.open(schema=schema) as backend:
        assert (await backend.get_task(await backend.push(3))) is not None
        assert SECRET not in repr(backend)
    monkeypatch.delenv("TURRET_POSTGRES_URL")
    with pytest.raises(ValueError, match="TURRET_POSTGRES_URL"):
        PostgresBackend()


async def test_concurrent_starters_migrate_once(dsn: str, schema: str) -> None:
    versions: list[tuple[int, int]] = []

    async def start() -> None:
        async with PostgresBackend.open(dsn, schema=schema, migrate=False) as _:
            pass

    async def migrate() -> None:
        backend = PostgresBackend(dsn, schema=schema)
        async with backend:
            versions.append(await backend.migrate())

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(migrate)
    assert all(after == versions[0][1] for _, after in versions)
    await start()  # migrated: opening without migrate=True works now


async def test_unmigrated_schema_refused_without_migrate(dsn: str, schema: str) -> None:
    with pytest.raises(RuntimeError, match="turret db migrate"):
        async with PostgresBackend.open(dsn, schema=schema, migrate=False):
            pass
    with pytest.raises(ValueError, match="schema"):
        PostgresBackend(dsn, schema="Bad-Name")


def make_v1_schema(dsn: str, schema: str, now: float) -> dict[str, str]:
    """A schema as turret with schema version 1 left it: a waiting task, a task whose
    lease expired (its worker died), a done task, a paused queue, the token sequence at 7."""
    from turret import TaskId
    from turret.backends import _pg_sql as sql

    ids = {"waiting": TaskId.new(), "lost": TaskId.new(), "done": TaskId.new()}
    q = f'"{schema}"'
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(f"CREATE SCHEMA {q}")
        conn.execute(
            f"CREATE TABLE {q}.migrations (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for statement in sql.MIGRATIONS[0]:
            conn.execute(statement.replace("{s}", q))
        conn.execute(f"INSERT INTO {q}.migrations (version) VALUES (1)")
        insert = (
            f"INSERT INTO {q}.tasks (id, queue, state, payload, priority, attempt, "
            "max_attempts, run_at, enqueued_at, order_key, headers, owner, deadline, token) "
            "VALUES (%s, 'mail', %s, %s, 0, %s, 3, %s, %s, %s, '{}', %s, %s, %s)"
        )
        t0 = now - 100
        conn.execute(insert, (ids["waiting"], "pending", b'"a"', 0, t0, t0, t0, None, None, 0))
        conn.execute(
            insert, (ids["lost"], "leased", b'"b"', 1, t0, t0, t0 + 1, "gone", now - 10, 7)
        )
        conn.execute(insert, (ids["done"], "done", b'"c"', 1, t0, t0, t0 + 2, None, None, 6))
        conn.execute(f"INSERT INTO {q}.queues (name, paused) VALUES ('paused-q', true)")
        conn.execute(f"SELECT setval('{q}.token', 7)")
    return ids


def queue_columns(dsn: str, schema: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'queues' ORDER BY ordinal_position",
            (schema,),
        ).fetchall()
    return [r[0] for r in rows]


def test_released_migrations_never_change() -> None:
    """A schema's version names its exact statements: a database migrated to version n
    by any turret has the same schema. A change is a new step at the end; a template
    shared with released steps is kept for them as it was (``_RECLAIM_V1``)."""
    import hashlib

    from turret.backends import _pg_sql as sql

    released = [
        "8704c24c18afb2a4",
        "db9c41cdf5703506",
        "d13265f5f6356263",
        "a5385fd2fa5c67ca",
        "d543451f64561813",
    ]
    steps = [hashlib.sha256("\x00".join(s).encode()).hexdigest()[:16] for s in sql.MIGRATIONS]
    assert steps[: len(released)] == released


async def test_v1_schema_upgrades_in_place(dsn: str, schema: str) -> None:
    now = 1_000_000.0
    ids = await trio.to_thread.run_sync(make_v1_schema, dsn, schema, now)
    assert await trio.to_thread.run_sync(queue_columns, dsn, schema) == ["name", "paused"]
    with pytest.raises(RuntimeError, match="at version 1, this turret needs 5"):
        async with PostgresBackend.open(dsn, schema=schema, migrate=False):
            pass
    async with PostgresBackend.open(dsn, schema=schema, clock=lambda: now) as backend:
        assert backend.statistics().schema_version == 5
        assert await backend.migrate() == (5, 5)
        stats = {s.queue: s for s in await backend.stats()}
        assert stats["paused-q"].paused
        assert (stats["mail"].pending, stats["mail"].leased, stats["mail"].reclaimed) == (1, 1, 0)
        # The done task counts as finished at the upgrade (server clock): kept for now.
        done = await backend.get_task(TaskId(ids["done"]))
        assert done is not None
        assert done.state is TaskState.DONE
        # claim() is v2's now: it reclaims the expired lease and counts it.
        tasks = await backend.claim("mail", owner="w", limit=10, lease_ttl=30)
        assert [t.id for t in tasks] == [ids["waiting"], ids["lost"]]
        assert [t.ctx.lease.token for t in tasks] == [8, 9]
        stats = {s.queue: s for s in await backend.stats()}
        assert (stats["mail"].reclaimed, stats["paused-q"].reclaimed) == (1, 0)
        assert stats["paused-q"].paused

    def versions() -> list[int]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(f'SELECT version FROM "{schema}".migrations ORDER BY 1')
            return [r[0] for r in rows.fetchall()]

    assert await trio.to_thread.run_sync(versions) == [1, 2, 3, 4, 5]
    columns = await trio.to_thread.run_sync(queue_columns, dsn, schema)
    assert columns == ["name", "paused", "reclaimed"]


async def test_concurrent_reclaims_count_each_lease_once(dsn: str, schema: str) -> None:
    now = [1_000_000.0]
    queues = ["a", "b", "c"]
    async with PostgresBackend.open(dsn, schema=schema, clock=lambda: now[0]) as backend:
        await backend.push_many([Job(i, queue=queues[i % 3]) for i in range(60)])
        for q in queues:
            assert len(await backend.claim(q, owner="w", limit=20, lease_ttl=30)) == 20
        now[0] += 31
        reclaimed: list[int] = []

        async def reclaim() -> None:
            reclaimed.append(await backend.reclaim())

        async def claim(q: str) -> None:
            await backend.claim(q, owner="v", limit=1, lease_ttl=30)

        async with trio.open_nursery() as nursery:
            for q in queues * 2:
                nursery.start_soon(reclaim)
                nursery.start_soon(claim, q)
        stats = {s.queue: s.reclaimed for s in await backend.stats()}
        assert stats == {"a": 20, "b": 20, "c": 20}
        assert sum(reclaimed) <= 60


async def test_concurrent_acks_are_coalesced_and_fenced(dsn: str, schema: str) -> None:
    async with PostgresBackend.open(dsn, schema=schema) as backend:
        await backend.push_many([Job(i) for i in range(50)])
        tasks = await backend.claim("default", owner="w", limit=50, lease_ttl=30)
        errors: list[Any] = []

        async def ack(i: int) -> None:
            token = tasks[i].ctx.lease.token + (1 if i == 7 else 0)  # one stale token
            try:
                await backend.ack(tasks[i].id, token, result=backend.codec.encode(i))
            except LeaseLost as exc:
                errors.append((i, exc))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(ack, i)
        assert [i for i, _ in errors] == [7]
        assert "stale" in str(errors[0][1])
        stats = backend.statistics()
        assert stats.acks == 50 and stats.ack_batches < 10
        info = await backend.get_task(tasks[3].id)
        assert info is not None and info.state is TaskState.DONE
        assert info.result is not None and backend.codec.decode(info.result) == 3
        leased = await backend.get_task(tasks[7].id)
        assert leased is not None and leased.state is TaskState.LEASED


async def test_notify_wakes_another_backend_object(dsn: str, schema: str) -> None:
    # poll_interval of an hour: only LISTEN/NOTIFY can wake the waiter in time.
    async with (
        PostgresBackend.open(dsn, schema=schema, poll_interval=3600) as consumer,
        PostgresBackend.open(dsn, schema=schema) as producer,
    ):
        woke = trio.Event()

        async def waiter() -> None:
            await consumer.wait_for_work("n")
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            with trio.fail_after(10):
                while not consumer.statistics().listening:  # noqa: ASYNC110 - real server
                    await trio.sleep(0.01)
            await trio.sleep(0.05)  # real time: let the waiter reach its wait
            await producer.push("x", queue="n")
            with trio.fail_after(5):
                await woke.wait()
        assert consumer.statistics().notifications >= 1


async def test_listener_reconnects_after_kill(dsn: str, schema: str) -> None:
    app = f"turret-listen-{os.urandom(4).hex()}"
    async with PostgresBackend.open(
        dsn, schema=schema, application_name=app, poll_interval=3600
    ) as consumer:
        with trio.move_on_after(1):
            await consumer.wait_for_work("n")  # starts the listener
        assert consumer.statistics().listening
        await terminate(dsn, app)
        with trio.fail_after(10):
            while consumer.statistics().listener_reconnects < 1:  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert consumer.statistics().listening


def test_import_without_psycopg() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "import turret.backends as b\n"
        "try:\n    b.PostgresBackend\nexcept ImportError as e:\n    print('ok', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ok") and "turret[postgres]" in out.stdout


async def test_statement_runs_to_its_reply_when_cancelled(dsn: str, schema: str) -> None:
    # A statement blocked on a row lock is not abandoned by cancellation: it completes
    # (its effect is never applied behind the caller's back) and its connection stays
    # pooled; the backend keeps working. No thread runs the statement.
    async with PostgresBackend.open(dsn, schema=schema) as backend:
        task_id = await backend.push("x")
        locked, release = trio.Event(), trio.Event()
        token = trio.lowlevel.current_trio_token()

        def hold_lock() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
                conn.execute(f'SELECT 1 FROM "{schema}".tasks WHERE id = %s FOR UPDATE', (task_id,))
                trio.from_thread.run_sync(locked.set, trio_token=token)
                trio.from_thread.run(release.wait, trio_token=token)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, hold_lock)
            await locked.wait()
            connections = backend.statistics().connections
            start = trio.current_time()
            nursery.start_soon(_release_later, release)
            with trio.move_on_after(0.1):
                assert await backend.cancel(task_id, reason="stop")
            assert trio.current_time() - start >= 0.25  # waited for the reply
        info = await backend.get_task(task_id)
        assert info is not None and info.state is TaskState.DEAD
        stats = backend.statistics()
        assert stats.connections == connections and stats.calls_in_flight == 0


async def _release_later(release: trio.Event) -> None:
    await trio.sleep(0.3)
    release.set()


def explain(dsn: str, schema: str, statement: str, values: dict[str, Any] | list[Any]) -> str:
    """The plans of ``statement`` (an ``_pg_sql`` template) prepared as the backend runs
    it, one custom and one generic: ``values`` by position for ``$n`` statements, by name
    for ``%(name)s`` ones (each name becomes ``$n``, in order of first use)."""
    import re

    from psycopg import sql as psql

    text = statement.replace("{s}", f'"{schema}"')
    if isinstance(values, dict):
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        text = re.sub(r"%\((\w+)\)[sb]", number, text)
        values = [values[name] for name in names]
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(psql.SQL("PREPARE probe AS {}").format(psql.SQL(text)))  # type: ignore[arg-type]
        args = psql.SQL(", ").join(psql.Literal(v) for v in values)
        for mode in ("force_custom_plan", "force_generic_plan"):
            conn.execute(psql.SQL("SET plan_cache_mode = {}").format(psql.SQL(mode)))
            rows = conn.execute(psql.SQL("EXPLAIN EXECUTE probe({})").format(args)).fetchall()
            out.append("\n".join(r[0] for r in rows))
    return "\n".join(out)


async def test_settles_and_renewals_find_leases_by_key_however_many_are_open(
    dsn: str, schema: str
) -> None:
    """A settle or renewal by (id, token) probes the primary key per task. Tested by
    ``state = 'leased'`` it could be answered from the partial index ``tasks_leased``:
    every lease of every worker, and every entry left by settled ones, read per batch
    (about 2.5x the server's CPU per claim with 8 000 leases open, in a benchmark)."""
    from turret.backends import _pg_sql as sql

    async with PostgresBackend.open(dsn, schema=schema) as backend:
        await backend.push_many([Job(i) for i in range(400)])
        tasks = await backend.claim("default", owner="w", limit=400, lease_ttl=30)
        assert len(tasks) == 400
        leases = [(t.id, t.ctx.lease.token) for t in tasks if t.ctx.lease is not None]
        await backend.ack_many([(i, token, None) for i, token in leases[:300]])
        (task_id, token), now = leases[-1], backend.now()
    ids, tokens = [i for i, _ in leases[-5:]], [t for _, t in leases[-5:]]
    one = {"id": task_id, "token": token, "now": now}
    cases: dict[str, tuple[str, dict[str, Any] | list[Any]]] = {
        "ack": (sql.ACK_NO_RESULTS, [",".join(ids), ",".join(map(str, tokens)), repr(now)]),
        "ack with results": (
            sql.ACK,
            {
                "ids": ids,
                "tokens": tokens,
                "results": [b"1"] * 5,
                "expires": [now] * 5,
                "nows": [now] * 5,
            },
        ),
        "claim carrying acks": (
            sql.CLAIM_ACKING,
            ["default", "w", 1, now, now + 30, 3, ",".join(ids), ",".join(map(str, tokens))],
        ),
        "renew": (sql.RENEW, {"ids": ids, "tokens": tokens, "deadline": now + 30, "now": now}),
        "retry": (sql.RETRY, {**one, "error": "e", "run_at": now, "aging": 1.0, "channel": "c"}),
        "release": (sql.RELEASE, {**one, "channel": "c"}),
        "dead": (sql.DEAD, {**one, "reason": "r"}),
    }
    for name, (statement, values) in cases.items():
        plans = await trio.to_thread.run_sync(explain, dsn, schema, statement, values)
        assert "tasks_leased" not in plans, f"{name}:\n{plans}"
        if isinstance(values, dict) and "id" in values:
            assert "tasks_pkey" in plans, f"{name}:\n{plans}"


async def test_reclaims_find_expired_leases_by_key_not_by_reading_every_lease(
    dsn: str, schema: str
) -> None:
    """The reclaim inside ``claim()`` (one queue) and ``reclaim()`` (every queue) update
    the leases they locked by primary key. Rechecked by ``state = 'leased'``, the update
    could read the whole ``tasks_leased`` index, every open lease of every queue, on
    each claim with nothing expired (its generic plan did, in a benchmark)."""
    from turret.backends import _pg_sql as sql

    async with PostgresBackend.open(dsn, schema=schema) as backend:
        await backend.push_many([Job(i, queue="other") for i in range(300)])
        await backend.push_many([Job(i) for i in range(20)])
        assert len(await backend.claim("other", owner="w", limit=300, lease_ttl=30)) == 300
        assert len(await backend.claim("default", owner="w", limit=10, lease_ttl=30)) == 10
        now = backend.now()
    values = {"queue": "default", "now": now, "max_lost": 3}
    in_claim = sql.RECLAIM.format(
        s="{s}",
        now="%(now)s",
        max_lost="%(max_lost)s",
        where="AND t.queue = %(queue)s",
        returning="1",
    )
    cases = {
        "claim()": (in_claim + "SELECT count(*) FROM moved", values),
        "reclaim()": (sql.RECLAIM_COUNTED, {"now": now, "max_lost": 3}),
    }
    for name, (statement, params) in cases.items():
        plans = await trio.to_thread.run_sync(explain, dsn, schema, statement, params)
        # Once per plan (custom, generic): the `expired` scan, not the update's.
        assert plans.count("tasks_leased") == 2, f"{name}:\n{plans}"
        assert "tasks_pkey" in plans, f"{name}:\n{plans}"


async def test_tasks_without_a_unique_key_stay_out_of_its_index(dsn: str, schema: str) -> None:
    """Most tasks have no unique key: pushing and claiming them writes no entry in
    ``tasks_unique`` (schema 5), which still finds and enforces the keys there are."""
    from turret.backends import _pg_sql as sql

    async with PostgresBackend.open(dsn, schema=schema) as backend:
        first = await backend.push(1, unique_key="k")
        await backend.push_many([Job(i) for i in range(2000)])
        assert len(await backend.claim("default", owner="w", limit=2001, lease_ttl=30)) == 2001
        assert await backend.push(2, unique_key="k") == first  # still live: the same task

    def pages() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_relation_size(%s) / current_setting('block_size')::int",
                (f'"{schema}".tasks_unique',),
            ).fetchone()
        assert row is not None
        return int(row[0])

    # The metapage and one leaf (with an entry per keyless task, as before, 7 pages).
    assert await trio.to_thread.run_sync(pages) == 2
    live_by_key = sql.LIVE_BY_KEY.replace("%s", "$1")
    plans = await trio.to_thread.run_sync(explain, dsn, schema, live_by_key, [["k"]])
    assert "tasks_unique" in plans, plans


async def test_a_lease_deadline_exists_exactly_while_leased(dsn: str, schema: str) -> None:
    async with PostgresBackend.open(dsn, schema=schema) as backend:
        await backend.push(1)
        (task,) = await backend.claim("default", owner="w", limit=1, lease_ttl=30)

    def break_it(statement: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement.replace("{s}", f'"{schema}"'), (task.id,))

    for statement in (
        "UPDATE {s}.tasks SET state = 'done' WHERE id = %s",  # deadline left behind
        "UPDATE {s}.tasks SET deadline = NULL WHERE id = %s",  # leased without one
    ):
        with pytest.raises(psycopg.errors.CheckViolation, match="tasks_deadline_while_leased"):
            await trio.to_thread.run_sync(break_it, statement)


async def test_acks_commit_asynchronously_only_for_themselves(dsn: str, schema: str) -> None:
    async with PostgresBackend.open(dsn, schema=schema, max_connections=1) as backend:
        await backend.push_many([Job(i) for i in range(3)])
        tasks = await backend.claim("default", owner="w", limit=3, lease_ttl=30)
        for t in tasks:
            assert t.ctx.lease is not None
            await backend.ack(t.id, t.ctx.lease.token)
        assert await backend.renew([], lease_ttl=30) == []

        async def setting(conn: Any, retried: bool) -> Any:
            return (await conn.execute("SHOW synchronous_commit"))[0][0]

        # One pooled connection: the ack ran on it, and the setting did not leak.
        assert await backend._run(setting) == "on"
        for t in tasks:
            info = await backend.get_task(t.id)
            assert info is not None and info.state is TaskState.DONE


async def test_min_connections_are_opened_with_the_backend(dsn: str, schema: str) -> None:
    async with PostgresBackend.open(dsn, schema=schema) as backend:
        assert backend.statistics().connections == 4  # the default: min(4, max_connections)
        # The warm connections serve concurrent calls: none is opened on demand.
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(backend.stats)
        assert backend.statistics().connections == 4
    async with PostgresBackend.open(dsn, schema=schema, max_connections=2) as backend:
        assert backend.statistics().connections == 2
    async with PostgresBackend.open(dsn, schema=schema, min_connections=0) as backend:
        assert backend.statistics().connections == 1  # the one that checked the schema


async def test_a_silent_server_is_abandoned_after_response_timeout(
    dsn: str, schema: str, patient_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    parts = urlsplit(dsn)
    if parts.hostname is None:
        pytest.skip("the PostgreSQL under test is not a TCP URL; the proxy speaks TCP")
    proxy = SilencingProxy(parts.hostname, parts.port or 5432)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        user = f"{parts.username}@" if parts.username else ""
        proxied = urlunsplit((parts.scheme, f"{user}127.0.0.1:{proxy.port}", parts.path, "", ""))
        async with PostgresBackend.open(
            proxied, schema=schema, response_timeout=5.0, min_connections=1
        ) as backend:
            await backend.push(1)  # the pooled connection is up
            proxy.silence()
            start = trio.current_time()
            pushed = trio.Event()

            async def push_again() -> None:
                await backend.push(2)
                pushed.set()

            nursery.start_soon(push_again)
            with trio.move_on_after(60):
                await pushed.wait()
            if not pushed.is_set():
                proxy.reset()  # a statement is shielded from cancellation: end it this way
                pytest.fail("the statement still waits after 60 s: no response_timeout")
            waited = trio.current_time() - start
            assert backend.statistics().connection_errors >= 1
        nursery.cancel_scope.cancel()
    assert waited >= 5.0
    assert "no reply from PostgreSQL within 5s (response_timeout)" in caplog.text
    async with PostgresBackend.open(dsn, schema=schema) as direct:
        (stats,) = await direct.stats()
        assert stats.pending == 2  # the push the server ran, retried: stored once


def test_response_timeout_must_be_positive_or_none() -> None:
    with pytest.raises(ValueError, match="response_timeout must be > 0 seconds or None, got 0"):
        PostgresBackend("postgresql://x@localhost/db", response_timeout=0)


def test_a_silent_server_is_detected_by_tcp_keepalives_and_user_timeout(dsn: str) -> None:
    # A host or network gone silent resets nothing: without these a call would wait
    # for TCP's retransmissions (~15 minutes) or, once idle, for ever.
    conn = PostgresBackend(dsn)._connect()
    try:
        options = {o.keyword: o.val for o in conn.pgconn.info}
    finally:
        conn.close()
    assert options[b"keepalives"] == b"1"
    assert (options[b"keepalives_idle"], options[b"keepalives_count"]) == (b"30", b"3")
    assert options[b"tcp_user_timeout"] == b"60000"


def test_min_connections_is_checked() -> None:
    with pytest.raises(ValueError, match="min_connections must be between 0 and max_connections"):
        PostgresBackend("postgresql://x@h/db", max_connections=2, min_connections=3)


async def test_a_done_task_acked_by_an_older_turret_is_pruned_too(dsn: str, schema: str) -> None:
    """A worker of a turret from before schema 3, still running, acks without setting
    finished_at: the next prune starts that task's retention, a later one deletes it."""
    now = [1_000_000.0]
    async with PostgresBackend.open(
        dsn, schema=schema, clock=lambda: now[0], done_ttl=100.0
    ) as backend:
        task_id = await backend.push("x")
        (task,) = await backend.claim("default", owner="w", limit=1, lease_ttl=30)
        await backend.ack(task_id, task.ctx.lease.token)

        def forget_finish() -> None:  # what the old ack statement left
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'UPDATE "{schema}".tasks SET finished_at = NULL')

        await trio.to_thread.run_sync(forget_finish)
        now[0] += 1000
        assert await backend.prune() == 0  # adopted: finished now
        assert await backend.get_task(task_id) is not None
        now[0] += 100
        assert await backend.prune() == 1
        assert await backend.get_task(task_id) is None


async def test_closing_right_after_an_ack_stops_its_background_prune(dsn: str, schema: str) -> None:
    """The first ack flush starts a prune in the backend's nursery; closing the backend
    before it has run cancels it cleanly (no call on a closed backend)."""
    async with PostgresBackend.open(dsn, schema=schema) as backend:
        task_id = await backend.push("x")
        (task,) = await backend.claim("default", owner="w", limit=1, lease_ttl=30)
        await backend.ack(task_id, task.ctx.lease.token)
        assert backend.statistics().open
    assert not backend.statistics().open


async def test_a_background_prune_goes_on_while_a_backlog_is_due(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One background prune deletes batch after batch until fewer than a batch are due."""
    from turret.backends import _postgres

    monkeypatch.setattr(_postgres, "PRUNE_BATCH", 2)
    now = [1_000_000.0]
    async with PostgresBackend.open(
        dsn, schema=schema, clock=lambda: now[0], done_ttl=10.0
    ) as backend:
        for _ in range(5):
            task_id = await backend.push("x")
            (task,) = await backend.claim("default", owner="w", limit=1, lease_ttl=30)
            await backend.ack(task_id, task.ctx.lease.token)
        now[0] += 61
        task_id = await backend.push("y")
        (task,) = await backend.claim("default", owner="w", limit=1, lease_ttl=30)
        await backend.ack(task_id, task.ctx.lease.token)  # starts the prune
        give_up = time.monotonic() + 30  # it runs in the backend's nursery: let it finish
        while True:
            (stats,) = await backend.stats()
            if (stats.done == 1 and not backend._pruning) or time.monotonic() > give_up:
                break
            await trio.lowlevel.checkpoint()
        assert stats.done == 1  # 5 old ones in batches of 2, 2 and 1


async def test_prepared_statements_run_once_prepared_and_raise_errors_without_breaking(
    dsn: str,
) -> None:
    from turret.backends._pg_conn import TrioConnection

    conn = TrioConnection(
        await trio.to_thread.run_sync(lambda: psycopg.connect(dsn, autocommit=True))
    )
    try:
        query = b"SELECT $1::int8 * 2, $2::text, $3::float8"
        for n in range(3):
            res = await conn.run_prepared(b"turret_t", query, [b"%d" % n, "é".encode(), b"0.1"])
            assert int.from_bytes(res.get_value(0, 0) or b"", "big", signed=True) == 2 * n
            assert bytes(res.get_value(0, 1) or b"").decode() == "é"
        assert conn.reusable
        rows = await conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'turret_t'"
        )
        assert rows == [(1,)]  # prepared once, on first use

        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.run_prepared(b"turret_div", b"SELECT 1 / $1::int", [b"0"])
        assert conn.reusable  # an error reply leaves the connection fit for the next one
        res = await conn.run_prepared(b"turret_div", b"SELECT 1 / $1::int", [b"1"])
        assert int.from_bytes(res.get_value(0, 0) or b"", "big") == 1
    finally:
        conn.close()


async def test_acks_made_while_a_claim_is_in_flight_ride_on_the_next_claim(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from turret.backends import _riding

    monkeypatch.setattr(_riding, "ACK_RIDE", 60.0)  # here the next claim always comes
    async with PostgresBackend.open(dsn, schema=schema) as backend:
        await backend.push_many([Job(i) for i in range(6)])
        leased = await backend.claim("default", owner="w", limit=3, lease_ttl=30)
        acks = [(t.id, t.ctx.lease.token, None) for t in leased if t.ctx.lease is not None]
        acks.append((leased[0].id, leased[0].ctx.lease.token + 1000, None))  # type: ignore[union-attr]
        before = backend.statistics()
        locked, release = trio.Event(), trio.Event()
        token = trio.lowlevel.current_trio_token()

        def hold_lock() -> None:  # claims (UPDATEs) wait behind it: one stays in flight
            with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
                conn.execute(f'LOCK TABLE "{schema}".tasks IN EXCLUSIVE MODE')
                trio.from_thread.run_sync(locked.set, trio_token=token)
                trio.from_thread.run(release.wait, trio_token=token)

        claimed: list[int] = []
        outcomes: list[Any] = []

        async def claim() -> None:
            claimed.append(len(await backend.claim("default", owner="w", limit=2, lease_ttl=30)))

        async def ack() -> None:
            outcomes.extend(await backend.ack_many(acks))

        with trio.fail_after(10):
            await _claim_twice_acking_between(backend, hold_lock, locked, release, claim, ack)

        assert outcomes[:3] == [None, None, None]
        assert isinstance(outcomes[3], LeaseLost) and "stale" in str(outcomes[3])
        assert sorted(claimed) == [1, 2]  # the three tasks left
        stats = backend.statistics()
        assert stats.acks_with_claims - before.acks_with_claims == 4
        assert stats.ack_batches == before.ack_batches  # no statement stored only acks
        for t in leased:
            info = await backend.get_task(t.id)
            assert info is not None and info.state is TaskState.DONE


async def _claim_twice_acking_between(
    backend: PostgresBackend,
    hold_lock: Any,
    locked: trio.Event,
    release: trio.Event,
    claim: Any,
    ack: Any,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, hold_lock)
        await locked.wait()
        try:
            nursery.start_soon(claim)  # blocked: in flight
            while not backend._rides.claims_in_flight:
                await trio.lowlevel.checkpoint()
            nursery.start_soon(ack)  # waits for the next claim
            while not backend._rides.waiting:
                await trio.lowlevel.checkpoint()
            nursery.start_soon(claim)  # carries the acks
            while backend._rides.waiting:
                await trio.lowlevel.checkpoint()
        finally:
            release.set()


async def test_acks_store_themselves_when_no_claim_follows(dsn: str, schema: str) -> None:
    async with PostgresBackend.open(dsn, schema=schema) as backend:
        await backend.push_many([Job(i) for i in range(2)])
        leased = await backend.claim("default", owner="w", limit=2, lease_ttl=30)
        backend._rides.claims_in_flight += 1  # as if a claim were under way, but none follows
        try:
            before = backend.statistics()
            outcomes = await backend.ack_many(
                [(t.id, t.ctx.lease.token, None) for t in leased if t.ctx.lease is not None]
            )
        finally:
            backend._rides.claims_in_flight -= 1
        assert outcomes == [None, None]
        stats = backend.statistics()
        assert stats.ack_batches == before.ack_batches + 1
        assert stats.acks_with_claims == before.acks_with_claims
        assert not backend._rides.waiting


async def test_a_prune_due_while_one_runs_is_not_dropped(
    dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_000_000.0]
    async with PostgresBackend.open(dsn, schema=schema, clock=lambda: now[0], done_ttl=10) as b:
        real = b._prune_batch
        release, pruned_again = trio.Event(), trio.Event()
        calls = 0

        async def held_first(*args: Any) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                await release.wait()  # the first prune is still running...
            n = await real(*args)
            if calls == 2:
                pruned_again.set()
            return n

        monkeypatch.setattr(b, "_prune_batch", held_first)
        await b.push_many([Job(1), Job(2)])
        for task in await b.claim("default", owner="w", limit=2, lease_ttl=30):
            assert task.ctx.lease is not None
            await b.ack(task.id, task.ctx.lease.token)  # the first prune starts (held)
        now[0] += 61  # ...when the next one comes due
        await b.push(3)
        (task,) = await b.claim("default", owner="w", limit=1, lease_ttl=30)
        assert task.ctx.lease is not None
        await b.ack(task.id, task.ctx.lease.token)
        release.set()
        with trio.fail_after(10):  # a guard: the prune runs round once more
            await pruned_again.wait()
        (stats,) = await b.stats()
        assert stats.done == 1
