"""The crash kit: worker processes on one store, SIGKILLed at random and restarted.

:func:`run_crash_test` starts ``processes`` worker processes (``crash_worker.py``),
keeps pushing work, SIGKILLs a random worker at random moments and restarts it, then
lets the survivors drain the queue and checks the at-least-once contract:

* every task is done, or dead with a "worker lost" reason (poison);
* a task ran exactly once, or every extra delivery is explained by a recorded lease
  loss: ``starts <= attempt == lost + 1`` (a claim ends in a lease loss, an ack, or a
  release that gives the attempt back).

Any backend whose kit has a ``process_spec`` can run it (see ``conftest.py``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import attrs
import trio

from turret import Backend, Job, TaskId, TaskState

from . import crash_worker

WORKER = Path(crash_worker.__file__).resolve()


@attrs.frozen
class CrashReport:
    """What a crash run did and found."""

    tasks: int
    kills: int
    exactly_once: int
    redelivered: int
    lost_leases: int
    poisoned: int
    elapsed: float


async def run_crash_test(
    backend: Backend,
    spec: str,
    workdir: Path,
    *,
    processes: int = 3,
    chaos_seconds: float = 10.0,
    drain_timeout: float = 60.0,
    seed: int | None = None,
) -> CrashReport:
    """Run the chaos, then drain and check; raise AssertionError on a violation."""
    rng = random.Random(seed)
    ledger = workdir / "ledger.txt"
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[trio.Process | None] = [None] * processes
    spawned = 0
    ids: list[TaskId] = []
    kills = 0
    start = trio.current_time()
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent)}

    async def spawn(i: int) -> None:
        nonlocal spawned
        spawned += 1
        with (logs / f"w{i}-{spawned}.log").open("wb") as log:
            procs[i] = await trio.lowlevel.open_process(
                [sys.executable, str(WORKER), spec, str(ledger), f"w{i}"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )

    async def push_some(n: int) -> None:
        ids.extend(
            await backend.push_many(
                [Job(len(ids) + k, queue=crash_worker.QUEUE, max_attempts=1000) for k in range(n)]
            )
        )

    try:
        await push_some(100)
        for i in range(processes):
            await spawn(i)
        while trio.current_time() - start < chaos_seconds:
            await push_some(rng.randint(20, 80))
            await trio.sleep(rng.uniform(0.2, 0.9))  # kill while work is in flight
            victim = procs[rng.randrange(processes)]
            assert victim is not None
            if victim.returncode is not None:
                raise AssertionError(f"a worker exited by itself ({victim.returncode}); see {logs}")
            victim.kill()  # SIGKILL: no cleanup, no release, leases left to expire
            await victim.wait()
            kills += 1
            await spawn(procs.index(victim))
        with trio.fail_after(drain_timeout):
            while True:
                stats = {s.queue: s for s in await backend.stats()}
                s = stats[crash_worker.QUEUE]
                if s.pending + s.scheduled + s.leased == 0:
                    break
                await trio.sleep(0.1)
        for p in procs:
            if p is not None:
                p.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            for p in procs:
                if p is not None:
                    await p.wait()
                    # -SIGTERM: stopped while starting, before it could claim anything.
                    if p.returncode not in (0, -signal.SIGTERM):
                        raise AssertionError(f"a worker failed to stop cleanly; see {logs}")
    finally:
        with trio.CancelScope(shield=True):
            for p in procs:
                if p is not None and p.returncode is None:
                    p.kill()
                    await p.wait()

    starts: Counter[str] = Counter()
    for line in ledger.read_text().splitlines():
        kind, task_id, _attempt, _pid = line.split()
        if kind == "S":
            starts[task_id] += 1
    exactly_once = redelivered = lost_leases = poisoned = 0
    for task_id in ids:
        info = await backend.get_task(task_id)
        assert info is not None, f"task {task_id} was lost"
        lost_leases += info.lost
        if info.state is TaskState.DEAD:
            assert "worker lost" in (info.dead_reason or ""), info
            poisoned += 1
            continue
        assert info.state is TaskState.DONE, info
        n = starts[task_id]
        assert n >= 1, f"task {task_id} is done but never ran"
        assert n <= info.attempt == info.lost + 1, (
            f"task {task_id}: {n} starts, attempt {info.attempt}, {info.lost} lost leases: "
            "a redelivery without a recorded worker loss"
        )
        if n == 1:
            exactly_once += 1
        else:
            redelivered += 1
    return CrashReport(
        tasks=len(ids),
        kills=kills,
        exactly_once=exactly_once,
        redelivered=redelivered,
        lost_leases=lost_leases,
        poisoned=poisoned,
        elapsed=trio.current_time() - start,
    )
