"""Claiming tasks for reserved slots, coalesced into batch claims.

The worker's loop calls :meth:`Fetcher.wait_for_work` *before* it reserves a slot, so an
idle worker holds no reservation: a limit shared with other workers (a global
concurrency limit, a rate limit) is never hoarded by a worker that has nothing to do.
Then each reserved slot calls :meth:`Fetcher.next`. Slots asking at the same time share
one backend claim; a slot that gets nothing gives its reservation back, and the queue is
marked idle until the backend signals new work (or the poll interval passes).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ._backend import Backend
from ._context import WorkerContext
from ._task import Task

__all__ = ["Fetcher"]


class _Slot:
    __slots__ = ("event", "gone", "task")

    def __init__(self) -> None:
        self.task: Task[bytes] | None = None
        self.event = trio.Event()
        self.gone = False  # its owner was cancelled before a task was handed to it


class Fetcher:
    """Hands claimed tasks to reserved slots; one backend claim per round of slots.

    Only a slot that holds a reservation asks for a task, so a claim never exceeds the
    stack's free capacity. The first slot to ask leads a round: it claims for itself and
    every slot that joined, repeating while more slots join during the claim.
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
        self._waiting: list[_Slot] = []
        self._leading = False
        self._closed = False
        # After a wake-up, the first slot claims alone and the loop waits for that round
        # before reserving more: the first task starts without waiting for every free
        # slot to be reserved and spawned (a latency of ~2 ms at concurrency 100).
        self._probe: trio.Event | None = None
        #: True after a claim found fewer tasks than asked for, until new work is signalled.
        self.idle = False

    def close(self) -> None:
        """Stop claiming: every later or waiting ``next()`` gets ``None``."""
        self._closed = True

    async def wait_for_work(self) -> None:
        """Return at once unless the queue was found empty; then wait (holding nothing)
        for the backend's wake-up or the poll interval."""
        if self._probe is not None:
            await self._probe.wait()
        if not self.idle:
            return
        with (
            trio.move_on_after(self.poll_interval),
            self.context._backend_call(allowance=self.poll_interval),
        ):
            await self.backend.wait_for_work(self.queue)
        self.idle = False
        self._probe = trio.Event()

    def _end_probe(self) -> None:
        if self._probe is not None:
            self._probe.set()
            self._probe = None

    async def next(self) -> Task[bytes] | None:
        """A task for this reserved slot, or ``None`` (none due, paused, or closed)."""
        try:
            return await self._next()
        finally:
            self._end_probe()  # this slot's round is over, whatever happened

    async def _next(self) -> Task[bytes] | None:
        if self._closed or self.context.paused:
            return None
        if not self._leading:
            self._leading = True
            try:
                # Let the slots freed in the same scheduler batch join this round, so they
                # share one claim instead of a claim of 1 followed by a claim of the rest.
                await trio.lowlevel.checkpoint()
                if not self._waiting:  # fast path: a round of one (the usual case when busy)
                    with self.context._backend_call():
                        tasks = await self.backend.claim(
                            self.queue, owner=self.owner, limit=1, lease_ttl=self.lease_ttl
                        )
                    if tasks and not self._waiting and not self._closed:
                        self.idle = False
                        return tasks[0]
                    return await self._lead(tasks)
                return await self._lead(None)
            finally:
                self._leading = False
        slot = _Slot()
        self._waiting.append(slot)
        try:
            await slot.event.wait()
        except BaseException:
            slot.gone = True
            if slot in self._waiting:
                self._waiting.remove(slot)
            raise
        return slot.task

    async def _lead(self, claimed: list[Task[bytes]] | None) -> Task[bytes] | None:
        """Run claim rounds until no slot waits; ``claimed``: the fast path's round of one."""
        mine: Task[bytes] | None = None
        first = True
        slots: list[_Slot] = []
        try:
            while first or self._waiting:
                if claimed is not None:
                    tasks, want, claimed = claimed, 1, None
                else:
                    take = self.max_batch - 1 if first else self.max_batch
                    slots, self._waiting = self._waiting[:take], self._waiting[take:]
                    want = len(slots) + first
                    with self.context._backend_call():
                        tasks = await self.backend.claim(
                            self.queue, owner=self.owner, limit=want, lease_ttl=self.lease_ttl
                        )
                short = len(tasks) < want
                handed = iter(tasks)
                if first:
                    mine = next(handed, None)
                    first = False
                for slot in slots:
                    if not slot.gone:
                        slot.task = next(handed, None)
                    slot.event.set()
                slots = []
                leftover = list(handed)
                if self._closed:
                    leftover += [mine] if mine is not None else []
                    mine = None
                if leftover:  # claimed for slots that went away: give them back untouched
                    with trio.CancelScope(shield=True):
                        for t in leftover:
                            assert t.ctx.lease is not None
                            await self.backend.release(t.ctx.id, t.ctx.lease.token)
                if short or self._closed:
                    if not self.idle and short:
                        self.idle = True
                        self.on_idle()
                    break
                self.idle = False
        finally:
            # Whatever happens to the leader, nobody is left waiting for a round.
            for slot in slots + self._waiting:
                slot.event.set()
            self._waiting = []
        return mine
