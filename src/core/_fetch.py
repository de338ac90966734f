"""Claiming tasks for reserved slots, coalesced into batch claims.

The worker's loop calls :meth:`Fetcher.wait_for_work` *before* it reserves a slot, so an
idle worker holds no reservation: a limit shared with other workers (a global
concurrency limit, a rate limit) is never hoarded by a worker that has nothing to do.
Then it registers the reserved slot (:meth:`Fetcher.slot`) and spawns the runner that
owns it, which calls :meth:`Fetcher.next` (and, while :attr:`Fetcher.steady`, registers
its next slot itself). The first slot to ask leads a round: one
backend claim for itself and every slot registered so far. Slots registered in the same
scheduler batch therefore share one claim, and usually find their task already there when
they first run, without waiting. A slot that gets nothing gives its reservation back, and
the queue is marked idle until the backend signals new work (or the poll interval passes).

After an idle spell the loop reserves slots in rounds of 1, 4, 16 and 64, each once the
one before has claimed: the first task starts after one claim for one slot, one task
pushed to an idle worker costs five reservations rather than every free slot, and a burst
reaches full rounds after four claims.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ._backend import Backend
from ._context import WorkerContext
from ._task import Task

__all__ = ["Fetcher"]


class Slot:
    """One reserved slot's place in the claim queue (made by :meth:`Fetcher.slot`)."""

    __slots__ = ("done", "event", "gather", "gone", "probe", "task")

    def __init__(self, probe: trio.Event | None, gather: bool) -> None:
        self.probe = probe  # the ramp-up round it was registered in, if any
        self.gather = gather  # yield once before leading a round (see Fetcher.slot)
        self.task: Task[bytes] | None = None
        self.done = False  # a round has answered it (task may still be None)
        self.event: trio.Event | None = None  # made only if its owner has to wait
        self.gone = False  # its owner was cancelled while no task was handed to it yet

    def answer(self, task: Task[bytes] | None) -> None:
        self.task = task
        self.done = True
        if self.event is not None:
            self.event.set()


class Fetcher:
    """Hands claimed tasks to reserved slots; one backend claim per round of slots.

    Only a slot that holds a reservation asks for a task, so a claim never exceeds the
    stack's free capacity. The first slot to ask leads a round: one claim for itself and
    every slot registered so far. Then it runs its own task at once and passes the lead
    to a slot that registered during the claim, which claims for the next round.
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
        self._waiting: list[Slot] = []
        self._leading = False
        self._promised: Slot | None = None  # woken to lead the next round, not yet run
        self._closed = False
        # The ramp-up after a wake-up (module docstring); the first round of one slot
        # also starts the first task without waiting for every free slot to be reserved
        # and spawned (a latency of ~2 ms at concurrency 100).
        self._probe: trio.Event | None = None  # the current ramp-up round's end
        self._allow = 0  # slots the loop may still register in that round
        self._ramp = 1  # that round's size
        #: True after a claim found fewer tasks than asked for, until new work is signalled.
        self.idle = False

    @property
    def steady(self) -> bool:
        """Claims come back full and no ramp-up round is open: a runner that has finished
        its task may reserve the next slot itself (see :mod:`turret.core._worker`)."""
        return self._probe is None and not self.idle and not self._closed

    def close(self) -> None:
        """Stop claiming: every later or waiting ``next()`` gets ``None``."""
        self._closed = True

    async def wait_for_work(self) -> None:
        """Return at once unless the queue was found empty; then wait (holding nothing)
        for the backend's wake-up or the poll interval."""
        if self._probe is not None and self._allow <= 0:
            await self._probe.wait()
        if not self.idle:
            return
        with (
            trio.move_on_after(self.poll_interval),
            self.context._backend_call(allowance=self.poll_interval),
        ):
            await self.backend.wait_for_work(self.queue)
        self.idle = False
        self._start_probe(1)

    def _start_probe(self, size: int) -> None:
        self._probe = trio.Event()
        self._allow = self._ramp = size

    def _end_probe(self, slot: Slot) -> None:
        """A slot of the ramp-up round is done with its claim: the loop may go on, with a
        round four times larger while claims come back full, then without rounds."""
        probe = self._probe
        if probe is not None and slot.probe is probe:
            probe.set()
            self._probe = None
            if not self.idle and not self._closed and self._ramp * 4 < self.max_batch:
                self._start_probe(self._ramp * 4)

    def slot(self, *, gather: bool = False) -> Slot:
        """Register a reserved slot; the next claim round claims a task for it too.

        ``gather``: the slot is registered by a runner that has just finished a task, in
        the step that freed it. Should it lead a round, it first yields once, so that
        the slots freed in the same scheduler batch share its claim (the loop's slots
        need not: their runners first run a batch after they were registered).
        """
        slot = Slot(self._probe, gather)
        if self._probe is not None:
            self._allow -= 1
        self._waiting.append(slot)
        return slot

    async def next(self, slot: Slot) -> Task[bytes] | None:
        """The task for this reserved slot, or ``None`` (none due, paused, or closed)."""
        if slot.done:  # the usual case when busy: a round answered it before it ran
            self._end_probe(slot)
            return slot.task
        try:
            return await self._next(slot)
        finally:
            self._end_probe(slot)  # this slot's round is over, whatever happened

    async def _next(self, slot: Slot) -> Task[bytes] | None:
        while True:
            if slot.done:  # a round led by another slot answered this one
                return slot.task
            if (self._closed or self.context.paused) and self._leave(slot):
                return None
            if not self._leading and slot.gather:
                slot.gather = False
                await trio.lowlevel.cancel_shielded_checkpoint()
                continue  # a round led by another slot of the batch may hold it now
            if self._may_lead(slot) and self._withdraw(slot):
                self._leading = True
                self._promised = None
                try:
                    return await self._round()
                finally:
                    self._leading = False
                    self._pass_lead()
            # A round is in flight (and may hold this slot): wait for its answer, or to
            # be handed the lead.
            slot.event = event = trio.Event()
            try:
                await event.wait()
            except BaseException:
                if not slot.done:
                    slot.gone = True  # a round in progress must not hand it a task
                    self._leave(slot)
                elif slot.task is not None:
                    # Answered in the very step our cancellation arrived: nobody will
                    # run this task, so give it back now rather than at lease expiry.
                    task, slot.task = slot.task, None
                    assert task.ctx.lease is not None
                    with trio.CancelScope(shield=True):
                        await self.backend.release(task.ctx.id, task.ctx.lease.token)
                raise

    def _leave(self, slot: Slot) -> bool:
        """Withdraw a slot that will not claim (paused, closed, cancelled). It may have
        been handed the lead: hand it on, or the slots parked behind it would wait for a
        round that never comes. False if a claim round holds the slot."""
        if not self._withdraw(slot):
            return False
        if self._may_lead(slot):
            self._pass_lead()
        return True

    def _may_lead(self, slot: Slot) -> bool:
        """No round is in flight, and no other slot has been handed the lead."""
        return not self._leading and (self._promised is None or self._promised is slot)

    def _withdraw(self, slot: Slot) -> bool:
        """Take an unanswered slot out of the queue; False if a claim round holds it."""
        try:
            self._waiting.remove(slot)
        except ValueError:
            return False
        return True

    def _pass_lead(self) -> None:
        """Wake a waiting slot to lead the next round (one not yet running leads itself).

        Until it has run, no other slot may lead: a slot registered later (a runner back
        from its task in the same batch) would overtake it, again and again."""
        self._promised = None
        for slot in self._waiting:
            if slot.event is not None and not slot.event.is_set():
                slot.event.set()
                self._promised = slot
                return

    def _answer_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for slot in waiting:
            slot.answer(None)

    async def _round(self) -> Task[bytes] | None:
        """One claim for the leading slot and the slots registered before it."""
        take = self.max_batch - 1
        slots, self._waiting = self._waiting[:take], self._waiting[take:]
        try:
            want = len(slots) + 1
            with self.context._backend_call():
                tasks = await self.backend.claim(
                    self.queue, owner=self.owner, limit=want, lease_ttl=self.lease_ttl
                )
            if self._closed:  # stopped while the claim was in flight: hand out nothing
                mine, leftover = None, tasks
                for slot in slots:
                    slot.answer(None)
            else:
                handed = iter(tasks)
                mine = next(handed, None)
                for slot in slots:
                    slot.answer(None if slot.gone else next(handed, None))
                leftover = list(handed)
            slots = []
            if leftover:  # claimed for slots that went away, or after a stop: give them back
                with trio.CancelScope(shield=True):
                    for t in leftover:
                        assert t.ctx.lease is not None
                        await self.backend.release(t.ctx.id, t.ctx.lease.token)
            if len(tasks) < want:
                # Nothing more is due: the slots still waiting give their reservations back.
                self._answer_waiting()
                if not self.idle:
                    self.idle = True
                    self.on_idle()
            elif self._closed:
                self._answer_waiting()
            else:
                self.idle = False
        except BaseException:
            # Whatever happens to the leader, nobody is left waiting for a round.
            for slot in slots:
                slot.answer(None)
            self._answer_waiting()
            raise
        return mine
