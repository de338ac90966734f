"""Acks that ride on the next claim: one round trip (and one commit) for both.

A busy worker hands its finished tasks' acks to the backend (``ack_many``) while its
runners keep claiming. When a claim of the same backend is in flight, another one
usually follows within a scheduler step or two (the next round of freed slots), so the
acks wait for it, up to :data:`ACK_RIDE`, and that claim stores them in the same
statement or script call; otherwise ``ack_many`` stores them itself. The wait never
delays a task's start: the worker gives a task's slot back before its ack.

Example (inside a backend)::

    rides = AckRides()

    async def ack_many(self, acks):
        outcomes = await rides.ride(acks, limit=1000)
        if outcomes is not None:
            return outcomes
        ...  # store them alone

    async def claim(self, ...):
        riders = rides.take(limit=1000)
        with rides.claiming(riders):
            ...  # one call: store the riders' acks, then claim; answer each rider
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import trio

from ..core._errors import LeaseLost
from ..core._task import TaskId

__all__ = ["ACK_RIDE", "AckRides", "Riders"]

#: How long an ``ack_many`` made while a claim is in flight waits for the next claim to
#: carry its acks before it stores them itself.
ACK_RIDE = 0.003


class Riders:
    """One ``ack_many`` call's acks, waiting for or carried by a claim."""

    __slots__ = ("error", "event", "ids", "outcomes", "taken", "tokens")

    def __init__(self, ids: list[TaskId], tokens: list[int]) -> None:
        self.ids = ids
        self.tokens = tokens
        self.taken = False  # a claim is carrying them
        self.outcomes: list[LeaseLost | None] | None = None
        self.error: BaseException | None = None
        self.event = trio.Event()  # set once: answered, failed, or given back

    def answer(self, outcomes: list[LeaseLost | None]) -> None:
        """The claim stored them: one outcome per ack."""
        self.outcomes = outcomes
        self.event.set()


class AckRides:
    """A backend's acks waiting for a claim, and its claims in flight."""

    __slots__ = ("carried", "claims_in_flight", "waiting")

    def __init__(self) -> None:
        self.waiting: list[Riders] = []
        self.claims_in_flight = 0
        #: Acks stored by claims, in all.
        self.carried = 0

    async def ride(
        self, acks: Sequence[tuple[TaskId, int, bytes | None]], limit: int
    ) -> list[LeaseLost | None] | None:
        """Wait (at most :data:`ACK_RIDE`) for a claim to store these acks; their
        outcomes, or ``None`` when they cannot ride (no claim in flight, more than
        ``limit`` of them, a result to store) or no claim took them in time: the caller
        stores them itself."""
        if not self.claims_in_flight or len(acks) > limit:
            return None
        if any(result is not None for _, _, result in acks):
            return None
        riders = Riders([task_id for task_id, _, _ in acks], [token for _, token, _ in acks])
        self.waiting.append(riders)
        try:
            with trio.move_on_after(ACK_RIDE):
                await riders.event.wait()
            if not riders.event.is_set():
                if not riders.taken:
                    self.waiting.remove(riders)
                    return None
                await riders.event.wait()  # a claim is storing them: its answer
        except BaseException:
            if riders in self.waiting:
                self.waiting.remove(riders)
            raise
        if riders.error is not None:
            raise riders.error
        if riders.outcomes is not None:
            self.carried += len(riders.outcomes)
        return riders.outcomes

    def take(self, limit: int) -> list[Riders]:
        """The acks waiting, up to ``limit`` of them (whole calls), now taken."""
        taken: list[Riders] = []
        count = 0
        while self.waiting and count + len(self.waiting[0].ids) <= limit:
            riders = self.waiting.pop(0)
            riders.taken = True
            count += len(riders.ids)
            taken.append(riders)
        return taken

    @staticmethod
    def keys(riders: list[Riders]) -> list[tuple[TaskId, int]]:
        """The (task id, token) of every ack ``riders`` carry, in order."""
        return [key for rider in riders for key in zip(rider.ids, rider.tokens, strict=True)]

    @staticmethod
    def answer(riders: list[Riders], outcomes: list[LeaseLost | None]) -> None:
        """Hand each of ``riders`` its share of ``outcomes`` (one per key, in order)."""
        start = 0
        for rider in riders:
            rider.answer(outcomes[start : start + len(rider.ids)])
            start += len(rider.ids)

    @contextmanager
    def claiming(self, riders: list[Riders]) -> Iterator[None]:
        """Around one claim that carries ``riders``: counted as in flight; if it fails,
        its error is theirs, unless it was cancelled before its call was sent (waiting
        for a connection): then they are given back and store themselves.

        A cancellation between two tries of a call whose first try committed (a
        connection lost with the reply, then a forced stop) also gives them back: their
        own store then finds them acked already and reports a ``LeaseLost`` that is
        not one. Only a forced stop gets there, and the tasks are done either way."""
        self.claims_in_flight += 1
        try:
            yield
        except BaseException as exc:
            for rider in riders:
                if rider.event.is_set():
                    continue
                if isinstance(exc, trio.Cancelled):
                    rider.taken = False
                else:
                    rider.error = exc
                rider.event.set()
            raise
        finally:
            self.claims_in_flight -= 1
