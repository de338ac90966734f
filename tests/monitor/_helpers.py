"""Helpers for the Monitor tests: workers over MemoryBackend, and misbehaving backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

import turret
from turret.backends import MemoryBackend
from turret.core._task import Task


class FailingBackend(MemoryBackend):
    """``claim`` raises ``error`` (after ``after`` seconds): the worker itself crashes."""

    def __init__(self, error: Exception, after: float = 0.0) -> None:
        super().__init__()
        self.error = error
        self.after = after

    async def claim(
        self, queue: str, *, owner: str, limit: int, lease_ttl: float
    ) -> list[Task[bytes]]:
        await trio.sleep(self.after)
        raise type(self.error)(*self.error.args)  # a fresh one each time


class HangingBackend(MemoryBackend):
    """While ``hang`` is set, ``claim`` never returns (a hung connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = True
        self.hung_calls = 0

    async def claim(
        self, queue: str, *, owner: str, limit: int, lease_ttl: float
    ) -> list[Task[bytes]]:
        if self.hang:
            self.hung_calls += 1
            await trio.sleep_forever()
        return await super().claim(queue, owner=owner, limit=limit, lease_ttl=lease_ttl)


class Recorder:
    """Collects events; ``of(cls)`` filters them."""

    def __init__(self) -> None:
        self.events: list[turret.Event] = []

    def __call__(self, event: turret.Event) -> None:
        self.events.append(event)

    def of(self, cls: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


async def until(predicate: Callable[[], bool], step: float = 0.1) -> None:
    """Poll ``predicate`` on the (mock) clock; for conditions without an event."""
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(step)
