"""Claiming tasks for the slots that hold a reservation, coalesced into batch claims."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from ._backend import Backend
from ._context import WorkerContext
from ._task import Task

__all__ = ["Fetcher"]


class _Slot:
    __slots__ = ("event", "task")

    def __init__(self) -> None:
        self.task: Task[bytes] | None = None
        self.event = trio.Event()


class Fetcher:
    """Hands claimed tasks to reserved slots, one backend claim for all waiting slots.

    Only a slot that holds a reservation asks for a task, so a batch claim never exceeds
    the stack's free capacity. One waiter at a time (the leader) talks to the backend;
    it claims ``limit = number of waiting slots`` and hands tasks out in FIFO order.
    """

    def __init__(
        self,
        backend: Backend,
        queue: str,
        *,
        owner: str,
        lease_ttl: float,
        poll_interval: float,
        max_batch: int,
        context: WorkerContext,
        on_idle: Callable[[], None],
    ) -> None:
        self.backend = backend
        self.queue = queue
        self.owner = owner
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self.max_batch = max_batch
        self.context = context
        self.on_idle = on_idle
        self._waiting: deque[_Slot] = deque()
        self._leading = False
        self._closed = False
        self._idle_scope: trio.CancelScope | None = None
        self.idle = False

    def close(self) -> None:
        """Stop claiming: every waiting slot gets ``None``."""
        self._closed = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()
        for slot in self._waiting:
            slot.event.set()

    async def next(self) -> Task[bytes] | None:
        """Wait for a task for this slot; ``None`` once the fetcher is closed."""
        if not (self._leading or self._waiting or self._closed or self.context.paused):
            # Fast path: nobody to coalesce with, so claim for this slot alone.
            self._leading = True
            try:
                with self.context._backend_call():
                    tasks = await self.backend.claim(
                        self.queue, owner=self.owner, limit=1, lease_ttl=self.lease_ttl
                    )
            finally:
                self._leading = False
                if self._waiting:
                    self._waiting[0].event.set()
            if tasks:
                self.idle = False
                return tasks[0]
            if self._closed:
                return None
        slot = _Slot()
        self._waiting.append(slot)
        try:
            while slot.task is None and not self._closed:
                if self._leading:
                    await slot.event.wait()
                    slot.event = trio.Event()
                else:
                    self._leading = True
                    try:
                        await self._lead(slot)
                    finally:
                        self._leading = False
                        if self._waiting:  # hand leadership to the next waiter
                            self._waiting[0].event.set()
        except BaseException:
            if slot.task is None:
                self._waiting.remove(slot)
            raise
        return slot.task

    async def _lead(self, mine: _Slot) -> None:
        while mine.task is None and not self._closed:
            if self.context.paused:
                with trio.CancelScope() as self._idle_scope:
                    await self.context.wait_runnable()
                self._idle_scope = None
                continue
            limit = min(len(self._waiting), self.max_batch)
            with self.context._backend_call():
                tasks = await self.backend.claim(
                    self.queue, owner=self.owner, limit=limit, lease_ttl=self.lease_ttl
                )
            if self._closed and tasks:
                # Closed while claiming: give the tasks back, untouched.
                with trio.CancelScope(shield=True):
                    for t in tasks:
                        assert t.ctx.lease is not None
                        with self.context._backend_call():
                            await self.backend.release(t.ctx.id, t.ctx.lease.token)
                return
            for t in tasks:
                slot = self._waiting.popleft()
                slot.task = t
                if slot is not mine:
                    slot.event.set()
            if tasks:
                self.idle = False
                continue
            if not self.idle:
                self.idle = True
                self.on_idle()
            with (
                trio.move_on_after(self.poll_interval) as self._idle_scope,
                self.context._backend_call(allowance=self.poll_interval),
            ):
                await self.backend.wait_for_work(self.queue)
            self._idle_scope = None
        return None
