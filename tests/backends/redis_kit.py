"""The conformance kit for :class:`~turret.backends.RedisBackend` (registered in conftest).

Every kit instance gets its own key prefix under one per-session root
(``turret-test:<random>:``), so parallel runs never collide; the session's keys are
deleted at interpreter exit (``SCAN`` + ``UNLINK`` on the root, never ``FLUSHALL``).
"""

from __future__ import annotations

import atexit
import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests import services
from turret import Backend

ROOT = f"turret-test:{uuid.uuid4().hex[:12]}:"
_counter = itertools.count()
_used = False


def _purge_session_keys() -> None:
    if not _used or services.RESOLVED.get("redis") != services.REDIS_URL:
        return  # nothing written, or a throwaway server that took its keys with it
    from turret.backends import RedisBackend

    async def purge() -> None:
        async with RedisBackend.open(services.REDIS_URL, prefix=ROOT) as backend:
            await backend.purge()

    try:
        trio.run(purge)
    except Exception as exc:  # the run is over; say why keys may be left behind
        print(f"redis_kit: could not delete test keys under {ROOT!r}: {exc!r}")


atexit.register(_purge_session_keys)


def redis_test_url() -> str:
    """The server the tests use (tests/services.py policy), or skip / fail."""
    if "redis" in services.RESOLVED:
        return services.RESOLVED["redis"]
    if services.reachable(services.REDIS_URL, 6379):
        return services.REDIS_URL
    if services.IN_CI:
        pytest.fail(f"Redis is not reachable at {services.REDIS_URL}; CI must provide it")
    pytest.skip(
        services.UNAVAILABLE.get("redis", f"Redis tests skipped: nothing at {services.REDIS_URL}")
    )


class RedisKit:
    name = "redis"

    def __init__(self, tmp_path: Path) -> None:
        global _used
        pytest.importorskip("coredis")
        self.url = redis_test_url()
        self.root = f"{ROOT}{next(_counter)}:"
        _used = True

    def prefix(self, key: str) -> str:
        return f"{self.root}{key}:"

    @asynccontextmanager
    async def open(self, key: str = "main", **options: Any) -> AsyncIterator[Backend]:
        from turret.backends import RedisBackend

        options.pop("poll_interval", None)
        async with RedisBackend.open(self.url, prefix=self.prefix(key), **options) as backend:
            yield backend

    def process_spec(self, key: str = "main") -> str | None:
        return f"redis:{self.prefix(key)}|{self.url}"
