"""The conformance kit for :class:`~turret.backends.PostgresBackend` (registered in conftest).

Every kit key gets its own PostgreSQL schema under one per-session prefix
(``tt_<random>_``), so parallel runs never collide; the session's schemas are dropped
at interpreter exit.
"""

from __future__ import annotations

import atexit
import itertools
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import services
from turret import Backend

PREFIX = f"tt_{uuid.uuid4().hex[:8]}_"
_counter = itertools.count()
_used: list[str] = []


def drop_session_schemas(dsn: str | None = None, prefix: str = PREFIX) -> None:
    """Drop every schema this session made (``DROP SCHEMA ... CASCADE``)."""
    if dsn is None:
        if not _used:
            return
        dsn = _used[0]
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,)
                ).fetchall()
            ]
            for name in names:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    except Exception as exc:  # the run is over; say why schemas may be left behind
        print(f"postgres_kit: could not drop test schemas {prefix}*: {exc!r}")


atexit.register(drop_session_schemas)


def postgres_test_dsn() -> str:
    """The server the tests use (tests/services.py policy), or skip / fail."""
    pytest.importorskip("psycopg")
    if "postgres" in services.RESOLVED:
        return services.RESOLVED["postgres"]
    if services.reachable(services.PG_URL, 5432):
        return services.PG_URL
    if services.IN_CI:
        pytest.fail(f"PostgreSQL is not reachable at {services.PG_URL}; CI must provide it")
    pytest.skip(
        services.UNAVAILABLE.get(
            "postgres", f"PostgreSQL tests skipped: nothing at {services.PG_URL}"
        )
    )


class PostgresKit:
    name = "postgres"

    def __init__(self, tmp_path: Path) -> None:
        self.dsn = postgres_test_dsn()
        self.root = f"{PREFIX}{next(_counter)}_"
        if not _used:
            _used.append(self.dsn)

    def schema(self, key: str) -> str:
        return self.root + re.sub(r"[^a-z0-9_]", "_", key.lower())

    @asynccontextmanager
    async def open(self, key: str = "main", **options: Any) -> AsyncIterator[Backend]:
        from turret.backends import PostgresBackend

        options.setdefault("poll_interval", 1.0)
        async with PostgresBackend.open(self.dsn, schema=self.schema(key), **options) as backend:
            yield backend

    def process_spec(self, key: str = "main") -> str | None:
        return f"postgres:{self.schema(key)}|{self.dsn}"
