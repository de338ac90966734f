"""A MemoryBackend whose acks take time: settles in flight, for worker and Monitor tests."""

from __future__ import annotations

from typing import Any

import trio

import turret
from turret.backends import MemoryBackend


class SlowAckBackend(MemoryBackend):
    """Every ``ack`` waits ``ack_delay`` seconds (on trio's clock) before it is applied."""

    def __init__(self, ack_delay: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.ack_delay = ack_delay

    async def ack(self, task_id: turret.TaskId, token: int, *, result: bytes | None = None) -> None:
        await trio.sleep(self.ack_delay)
        await super().ack(task_id, token, result=result)
