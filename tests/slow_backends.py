"""A MemoryBackend whose acks take time: settles in flight, for worker and Monitor tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

import turret
from turret.backends import MemoryBackend


class SlowAckBackend(MemoryBackend):
    """Every ``ack`` or ``ack_many`` call waits ``ack_delay`` seconds (on trio's clock)
    before it is applied: one slow round trip, however many tasks it acks."""

    def __init__(self, ack_delay: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.ack_delay = ack_delay

    async def ack(self, task_id: turret.TaskId, token: int, *, result: bytes | None = None) -> None:
        await trio.sleep(self.ack_delay)
        await super().ack(task_id, token, result=result)

    async def ack_many(
        self, acks: Sequence[tuple[turret.TaskId, int, bytes | None]]
    ) -> list[turret.LeaseLost | None]:
        await trio.sleep(self.ack_delay)
        return [await self._ack_now(task_id, token, result) for task_id, token, result in acks]

    async def _ack_now(
        self, task_id: turret.TaskId, token: int, result: bytes | None
    ) -> turret.LeaseLost | None:
        try:
            await super().ack(task_id, token, result=result)
        except turret.LeaseLost as exc:
            return exc
        return None
