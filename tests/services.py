"""Real PostgreSQL and Redis servers for the tests, by one policy.

1. A server reachable at the usual address (127.0.0.1:5432 database ``test`` with trust
   auth; 127.0.0.1:6379) is used, or the one named by ``TURRET_TEST_POSTGRES_URL`` /
   ``TURRET_TEST_REDIS_URL``.
2. In CI (``CI=true``) a missing server is a failure, never a skip.
3. Otherwise, when the server binaries are installed, a throwaway server is started
   (pytest-postgresql, pytest-redis) for the session.
4. With neither, the tests that need it skip with one line saying why.

Tests ask for the ``postgres_dsn`` or ``redis_url`` fixture (registered in conftest.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
from urllib.parse import urlsplit

import pytest

PG_URL = os.environ.get("TURRET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TURRET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: The URLs chosen for this session ("postgres", "redis"), filled by the session fixture
#: in tests/backends/conftest.py, so kits built outside fixtures use the same servers.
RESOLVED: dict[str, str] = {}
#: Why a server could not be had this session, for the kits' skip lines.
UNAVAILABLE: dict[str, str] = {}


def reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def pg_ctl() -> str | None:
    found = shutil.which("pg_ctl") or sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if isinstance(found, list):
        return found[-1] if found else None
    return found


def postgres_dsn(request: pytest.FixtureRequest) -> str:
    if reachable(PG_URL, 5432):
        return PG_URL
    if IN_CI:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}; CI must provide it (CI=true)")
    if pg_ctl() is None:
        pytest.skip(f"PostgreSQL tests skipped: nothing at {PG_URL} and no pg_ctl to start one")
    try:
        proc = request.getfixturevalue("turret_postgresql_proc")
    except Exception as exc:  # e.g. initdb refuses to run as root
        pytest.skip(
            f"PostgreSQL tests skipped: no server at {PG_URL}, and a throwaway one "
            f"could not start: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        )
    return f"postgresql://{proc.user}@{proc.host}:{proc.port}/postgres"


def redis_url(request: pytest.FixtureRequest) -> str:
    if reachable(REDIS_URL, 6379):
        return REDIS_URL
    if IN_CI:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}; CI must provide it (CI=true)")
    if shutil.which("redis-server") is None:
        pytest.skip(f"Redis tests skipped: nothing at {REDIS_URL} and no redis-server to start one")
    try:
        proc = request.getfixturevalue("turret_redis_proc")
    except Exception as exc:
        pytest.skip(
            f"Redis tests skipped: no server at {REDIS_URL}, and a throwaway one "
            f"could not start: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        )
    return f"redis://{proc.host}:{proc.port}/0"
