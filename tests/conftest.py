"""Shared fixtures. Tests run under pytest-trio (trio_mode = true in pyproject)."""

from __future__ import annotations

import pytest

from tests import services

try:  # throwaway servers, only started when no running server is reachable
    from pytest_postgresql import factories as _pg_factories

    turret_postgresql_proc = _pg_factories.postgresql_proc(
        port=None, executable=services.pg_ctl() or "pg_ctl", dbname="test"
    )
except ImportError:  # pragma: no cover - the dev extra installs it
    pass

try:
    from pytest_redis import factories as _redis_factories

    turret_redis_proc = _redis_factories.redis_proc(port=None)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def postgres_dsn(request: pytest.FixtureRequest) -> str:
    """A DSN of a real PostgreSQL server (see tests/services.py for the policy)."""
    return services.postgres_dsn(request)


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """A URL of a real Redis server (see tests/services.py for the policy)."""
    return services.redis_url(request)
