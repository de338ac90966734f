"""A known workload: 10 tasks succeed (2 of them after one retry), 1 is dead-lettered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

import turret
from turret.backends import MemoryBackend

QUEUE = "mail"


async def push_workload(backend: MemoryBackend) -> None:
    for i in range(8):
        await backend.push(f"ok-{i}", queue=QUEUE)
    await backend.push("flaky", queue=QUEUE)  # raises once: retry reason=error
    await backend.push("later", queue=QUEUE)  # Retry once: retry reason=requested
    await backend.push("abort", queue=QUEUE)  # Abort: dead at once


def make_handler() -> Callable[[str], Awaitable[None]]:
    seen: set[str] = set()

    async def handler(what: str) -> None:
        await trio.sleep(0.01)
        first = what not in seen
        seen.add(what)
        if what == "flaky" and first:
            raise ConnectionError("flaky")
        if what == "later" and first:
            raise turret.Retry(after=0, reason="not yet")
        if what == "abort":
            raise turret.Abort("invalid")

    return handler


async def wait_settled(worker: turret.Worker, limit: float = 30) -> None:
    with trio.fail_after(limit):
        while True:
            s = worker.context.statistics()
            if s.succeeded == 10 and s.dead_lettered == 1:
                return
            await trio.sleep(0.01)
