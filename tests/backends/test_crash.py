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


async def test_workers_killed_at_random_lose_nothing(kit: Kit, tmp_path: Path) -> None:
    spec = kit.process_spec("crash")
    if spec is None:
        pytest.skip(f"{kit.name} cannot be shared by several processes")
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
