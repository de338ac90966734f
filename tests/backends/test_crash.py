"""Crash recovery across real processes: SIGKILL workers at random, nothing is lost.

This test waits on real processes (bounded timeouts). Locally the chaos lasts ~10 s;
with ``CI=true`` ~40 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import Kit
from .crashkit import run_crash_test

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def process_spec(kit: Kit) -> str:
    """How a worker process opens the kit's store (a sync fixture keeps the skip reason)."""
    spec = kit.process_spec("crash")
    if spec is None:
        pytest.skip(f"crash test: the {kit.name} backend cannot be shared by several processes")
    return spec


async def test_workers_killed_at_random_lose_nothing(
    kit: Kit, process_spec: str, tmp_path: Path
) -> None:
    spec = process_spec
    async with kit.open("crash") as backend:
        report = await run_crash_test(
            backend,
            spec,
            tmp_path,
            processes=3,
            chaos_seconds=40.0 if CI else 10.0,
            seed=int.from_bytes(os.urandom(4), "big"),
        )
    print(report)
    assert report.kills >= 5
    assert report.tasks == report.exactly_once + report.redelivered + report.poisoned
    assert report.lost_leases >= 1  # the kills hit workers holding leases
