"""``Permits``: the cheap first-come-first-served counter behind the concurrency limits."""

from __future__ import annotations

import trio

__all__ = ["Permits"]


class Permits:
    """``total`` permits handed out first come, first served, bound to no task.

    A reservation may be entered in the worker's loop task and exited in the runner that
    runs the call, so the permit cannot belong to a task (as a ``trio.CapacityLimiter``'s
    token does). ``free`` is never above zero while a reservation waits: a release hands
    its permit straight to the longest waiter, so a newcomer cannot overtake it. A
    waiter cancelled while parked leaves the lot (trio's abort) and holds nothing.

    :meth:`take` has no schedule point, so a loop can reserve several slots in one
    scheduler step; only a waiter parks.

    Example::

        permits = Permits(2)
        if not permits.take():
            await permits.lot.park()  # woken holding the permit a release handed over
        ...
        permits.release()
    """

    __slots__ = ("free", "lot", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.lot = trio.lowlevel.ParkingLot()

    def take(self) -> bool:
        """Take a free permit now; False if none is free (then park in ``lot``)."""
        if self.free:
            self.free -= 1
            return True
        return False

    def release(self) -> None:
        if self.lot:
            self.lot.unpark()  # the permit passes to the first waiter
        else:
            self.free += 1

    @property
    def in_use(self) -> int:
        return self.total - self.free
