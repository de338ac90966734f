"""`turret db migrate`: creates the PostgreSQL schema, idempotently, never printing secrets."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from turret.backends import _pg_sql
from turret.cli import main


def test_db_migrate_creates_the_schema_and_is_idempotent(
    postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = f"turret_cli_{uuid.uuid4().hex[:8]}"
    try:
        assert main(["db", "migrate", "--dsn", postgres_dsn, "--schema", schema]) == 0
        assert main(["db", "migrate", "--dsn", postgres_dsn, "--schema", schema]) == 0
        out = capsys.readouterr().out
        assert out.count(f"schema {schema!r}") == 2
        assert f"is at version {_pg_sql.SCHEMA_VERSION}" in out
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchone()
        assert row is not None
        assert row[0] >= 2
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_db_migrate_errors_are_clear_and_hide_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TURRET_POSTGRES_URL", raising=False)
    assert main(["db", "migrate"]) == 2
    assert "pass --dsn or set TURRET_POSTGRES_URL" in capsys.readouterr().err
    assert main(["db", "migrate", "--dsn", "postgresql://app:hunter2@127.0.0.1:1/x"]) == 1
    err = capsys.readouterr().err
    assert "connection" in err
    assert "hunter2" not in err
