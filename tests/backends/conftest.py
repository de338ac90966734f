"""The conformance suite's fixtures: one ``kit`` per backend, every test runs on each.

To plug in a new backend (PostgreSQL, Redis, ...), add a kit class with

* ``name``: the pytest id;
* ``open(key="main", **options)``: an async context manager yielding an open backend.
  Opening the same ``key`` twice must give two handles on *one* store (two processes'
  view: a second SQLite connection, a second pool on the same schema, the same Redis
  prefix); a new key is a fresh, empty store. ``options`` are the shared backend
  options: ``clock``, ``codec``, ``default_max_attempts``, ``max_payload_bytes``,
  ``aging``, ``max_lost``, ``result_ttl`` (plus ``poll_interval`` where it applies);
* ``process_spec(key)``: a string a worker *process* can open the store from (see
  ``crash_worker.open_spec``), or ``None`` if the store cannot be shared by processes;

and register it in ``KITS``. Skip it (``pytest.skip``) in its constructor when the
server is not reachable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio
import trio.testing

from tests import services
from turret import Backend
from turret.backends import MemoryBackend, SqliteBackend

from . import silent_proxy


class Kit(Protocol):
    name: str

    def open(self, key: str = "main", **options: Any) -> AbstractAsyncContextManager[Backend]: ...

    def process_spec(self, key: str = "main") -> str | None: ...


class MemoryKit:
    name = "memory"

    def __init__(self, tmp_path: Path) -> None:
        self._stores: dict[str, MemoryBackend] = {}

    @asynccontextmanager
    async def open(self, key: str = "main", **options: Any) -> AsyncIterator[Backend]:
        options.pop("poll_interval", None)
        if key not in self._stores:
            self._stores[key] = MemoryBackend(**options)
        yield self._stores[key]

    def process_spec(self, key: str = "main") -> str | None:
        return None


class SqliteKit:
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.db"

    @asynccontextmanager
    async def open(self, key: str = "main", **options: Any) -> AsyncIterator[Backend]:
        async with SqliteBackend.open(self.path(key), **options) as backend:
            yield backend

    def process_spec(self, key: str = "main") -> str | None:
        return f"sqlite:{self.path(key)}"


KITS: dict[str, Callable[[Path], Kit]] = {"memory": MemoryKit, "sqlite": SqliteKit}


# --- Redis (issue 7) ------------------------------------------------------------------
from tests.backends.redis_kit import RedisKit  # noqa: E402

KITS["redis"] = RedisKit
# --- end Redis ------------------------------------------------------------------------

# --- PostgreSQL (issue 6) -------------------------------------------------------------
from tests.backends.postgres_kit import PostgresKit  # noqa: E402

KITS["postgres"] = PostgresKit
# --- end PostgreSQL -------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _servers(request: pytest.FixtureRequest) -> None:
    """Pick the PostgreSQL and Redis servers once (tests/services.py policy).

    A reachable server is used; in CI a missing one fails; otherwise a throwaway one is
    started when the binaries exist. Kits read ``services.RESOLVED``, so the model test,
    which builds kits itself, uses the same servers. A server that cannot be had is left
    out here; its kit then skips (or fails in CI) with the reason.
    """
    for name, resolve in (("postgres", services.postgres_dsn), ("redis", services.redis_url)):
        try:
            services.RESOLVED[name] = resolve(request)
        except pytest.skip.Exception as exc:
            services.UNAVAILABLE[name] = str(exc.msg)


@pytest.fixture(params=sorted(KITS))
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    return KITS[request.param](tmp_path)


@pytest.fixture
async def backend(kit: Kit) -> AsyncIterator[Backend]:
    """An open backend on trio's clock (so ``mock_clock.jump()`` moves its time)."""
    async with kit.open(clock=trio.current_time) as b:
        yield b


@pytest.fixture
def vclock() -> trio.testing.MockClock:
    """Virtual time that jumps when every task is blocked for 20 ms of real time.

    ``autojump_clock`` (threshold 0) would also jump while a backend's thread runs a
    query (trio sees every task blocked), turning one SQLite call into minutes of
    virtual time; a small threshold keeps tests fast and faithful.
    """
    return trio.testing.MockClock(autojump_threshold=0.02)


@pytest.fixture(name="patient_clock")
def _patient_clock() -> trio.testing.MockClock:
    """trio's mock clock, jumping only after 0.5 s of real idleness (see silent_proxy)."""
    return silent_proxy.patient_clock()
