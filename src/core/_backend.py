"""The backend contract the worker relies on (design.md §4).

Every backend (memory, SQLite, PostgreSQL, Redis) implements :class:`Backend`, and one
conformance suite (``tests/backends/``) checks them all the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from ._codec import Codec
from ._errors import LeaseLost, TurretError
from ._task import Task, TaskId

__all__ = [
    "Backend",
    "Job",
    "QueueStats",
    "Renewal",
    "TaskInfo",
    "TaskState",
    "UnknownTask",
    "wait_result",
]

#: The states in which a task is "live": its unique key is taken, it may still run.
LIVE_STATES = frozenset({"pending", "scheduled", "leased"})


class TaskState(enum.Enum):
    """Where a task is in its life."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    LEASED = "leased"
    DONE = "done"
    DEAD = "dead"

    # Members are singletons compared by identity, so identity hashing is correct, and it
    # is C-level: backends count tasks per state on every move (Enum's hash is Python).
    __hash__ = object.__hash__

    @property
    def finished(self) -> bool:
        """True for ``DONE`` and ``DEAD``: the task will not run again (unless replayed)."""
        return self in (TaskState.DONE, TaskState.DEAD)


class Renewal(enum.Enum):
    """What a heartbeat learned about one lease."""

    #: The lease is extended; keep working.
    RENEWED = "renewed"
    #: The lease is gone (expired and reclaimed, or settled): stop, a settle would be refused.
    LOST = "lost"
    #: Renewed, but somebody asked to cancel the task: stop and dead-letter it.
    CANCEL_REQUESTED = "cancel_requested"


def check_queue_name(queue: str) -> None:
    """Refuse an empty or non-string queue name (what every backend call checks)."""
    if not queue or not isinstance(queue, str):
        raise ValueError(f"queue must be a non-empty string, got {queue!r}")


def _check_queue(_inst: object, _attr: object, value: str) -> None:
    check_queue_name(value)


@attrs.frozen
class Job:
    """One task to push, for :meth:`Backend.push_many`.

    ``delay`` is in seconds from now; ``max_attempts=None`` takes the backend's default.
    A ``unique_key`` that matches a live (not done, not dead) task returns that task's id.

    Example::

        ids = await backend.push_many([Job({"n": i}, queue="math") for i in range(100)])
    """

    args: Any
    queue: str = attrs.field(default="default", validator=_check_queue)
    priority: int = 0
    delay: float = 0.0
    max_attempts: int | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    unique_key: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {self.delay!r}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")


@attrs.frozen
class QueueStats:
    """Counts of one queue's tasks by state, and its reclaim counter; cheap to scrape.

    ``pending`` ... ``dead`` are gauges (how many tasks are in that state now).
    ``reclaimed`` is a counter: how many expired leases of this queue were reclaimed
    (by ``claim`` or ``reclaim()``) since the store was created. It only grows (it is
    stored with the queue, so it survives restarts of durable backends), and it counts
    every expired lease taken back, whatever the task does next: back in line, or to
    dead letters ("worker lost N times", lost on its last attempt, or cancelled).

    Example::

        for s in await backend.stats():
            print(s.queue, s.pending, s.leased, s.reclaimed)
    """

    queue: str
    pending: int = 0
    scheduled: int = 0
    leased: int = 0
    done: int = 0
    dead: int = 0
    #: True between ``pause_queue()`` and ``resume_queue()``: claims return nothing.
    paused: bool = False
    #: Expired leases reclaimed on this queue since the store was created (a counter).
    reclaimed: int = 0


class UnknownTask(TurretError, LookupError):
    """The backend has no task with this id (never pushed, or purged).

    Example::

        try:
            await wait_result(backend, TaskId("01H..."))
        except turret.UnknownTask:
            ...
    """


@attrs.frozen
class TaskInfo:
    """A snapshot of one stored task: what :meth:`Backend.get_task` returns.

    ``args`` and ``result`` are encoded bytes (decode them with ``backend.codec``);
    ``result`` is ``None`` when the handler returned ``None`` or when its retention
    (``result_expires_at``) is over. ``lost`` counts the leases that expired under this
    task ("worker lost"). Times are on the backend's clock.

    Example::

        info = await backend.get_task(task_id)
        if info is not None and info.state is TaskState.DONE and info.result is not None:
            print(backend.codec.decode(info.result))
    """

    id: TaskId
    queue: str
    state: TaskState
    args: bytes
    attempt: int
    max_attempts: int
    priority: int
    run_at: float
    enqueued_at: float
    headers: Mapping[str, str] = attrs.field(factory=dict)
    unique_key: str | None = None
    owner: str | None = None
    lease_deadline: float | None = None
    token: int = 0
    lost: int = 0
    result: bytes | None = None
    result_expires_at: float | None = None
    last_error: str | None = None
    dead_reason: str | None = None
    cancel_requested: bool = False


async def wait_result(backend: Backend, task_id: TaskId, *, poll_interval: float = 0.5) -> TaskInfo:
    """Wait until the task is finished (done or dead) and return its :class:`TaskInfo`.

    Polls :meth:`Backend.get_task` every ``poll_interval`` seconds (trio's clock); bound
    the wait with a cancel scope. Raises :class:`UnknownTask` if the id is unknown.

    Example::

        task_id = await backend.push(21, queue="math")
        with trio.fail_after(30):
            info = await wait_result(backend, task_id)
        assert info.state is TaskState.DONE
        print(backend.codec.decode(info.result))      # 42
    """
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
    while True:
        info = await backend.get_task(task_id)
        if info is None:
            raise UnknownTask(
                f"no task {task_id!r} in this backend; check the id and the backend it was "
                "pushed to (finished tasks may have been purged)"
            )
        if info.state.finished:
            return info
        await trio.sleep(poll_interval)


class Backend(Protocol):
    """Where tasks live. The worker uses exactly these operations.

    Rules every implementation keeps (see ``docs/backends.md``):

    * ``claim`` is non-blocking and atomic: it first reclaims expired leases (an attempt
      consumed, error "worker lost"), then leases up to ``limit`` due tasks in order
      (effective priority with aging, then run_at, then FIFO), each with a fresh fencing
      token: tokens are unique in the whole store and grow with every claim (the worker
      keys its running tasks by token). ``wait_for_work`` returns when new work may be
      there; the worker bounds it by its poll interval.
    * ``ack``/``retry``/``dead``/``release`` take the task id and the lease's fencing
      token and raise :class:`~turret.LeaseLost` when the token is stale: they never
      overwrite a newer claim. ``release`` gives the task back without consuming an
      attempt.
    * Times in :class:`~turret.TaskContext` are on the backend's clock, ``now()``.
    * An expired lease is reclaimed by ``claim`` (or ``reclaim``): the attempt counts,
      ``last_error`` is "worker lost"; after ``max_lost`` expiries the task goes to dead
      letters with reason "worker lost N times". Every reclaimed lease (dead-lettered
      or not) adds one to its queue's :attr:`QueueStats.reclaimed`, a counter kept with
      the store that never goes down, in the same transaction as the reclaim.
    * ``cancel`` kills a pending/scheduled task at once (dead, reason
      "cancelled: <reason>"); for a leased one it sets a flag that ``renew`` reports as
      :attr:`Renewal.CANCEL_REQUESTED`, and a later ``retry``/``release``/reclaim of that
      task dead-letters it instead.
    * A paused queue (``pause_queue``) yields nothing from ``claim``.

    Example::

        backend = MemoryBackend()
        task_id = await backend.push({"to": "a@b.c"}, queue="mail", delay=10)
    """

    @property
    def codec(self) -> Codec: ...

    def now(self) -> float:
        """The backend's clock, in seconds (what ``run_at`` and lease deadlines use)."""
        ...

    async def push(
        self,
        args: Any,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        unique_key: str | None = None,
    ) -> TaskId:
        """Store one task; return its id."""
        ...

    async def push_many(self, jobs: Iterable[Job]) -> list[TaskId]:
        """Store several tasks at once (one transaction or round trip)."""
        ...

    async def claim(
        self, queue: str, *, owner: str, limit: int, lease_ttl: float
    ) -> list[Task[bytes]]:
        """Lease up to ``limit`` due tasks of ``queue``; never waits for work."""
        ...

    async def wait_for_work(self, queue: str) -> None:
        """Return when new work may be claimable in ``queue`` (a push, a scheduled task
        or an expired lease falling due). The caller bounds the wait with a cancel scope
        (its poll interval), so a backend that cannot be woken may simply sleep."""
        ...

    async def renew(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_ttl: float
    ) -> list[Renewal]:
        """Extend several leases ``(task id, token)`` in one round trip."""
        ...

    async def ack(self, task_id: TaskId, token: int, *, result: bytes | None = None) -> None:
        """The task is done; keep its encoded result if given."""
        ...

    async def ack_many(
        self, acks: Sequence[tuple[TaskId, int, bytes | None]]
    ) -> list[LeaseLost | None]:
        """Ack several tasks ``(task id, token, encoded result or None)`` at once, in one
        transaction or round trip where the store allows; one outcome per ack, in order:
        ``None`` when stored, the :class:`~turret.LeaseLost` that refused a stale token
        otherwise. Any other error is raised (the outcome of the whole call is unknown).
        A worker stores every successful task through this method."""
        ...

    async def retry(self, task_id: TaskId, token: int, *, delay: float, error: str) -> None:
        """Make the task claimable again after ``delay`` seconds; the attempt is consumed."""
        ...

    async def dead(self, task_id: TaskId, token: int, *, reason: str) -> None:
        """Move the task to dead letters with ``reason``."""
        ...

    async def release(self, task_id: TaskId, token: int) -> None:
        """Give the task back at once without consuming an attempt (shutdown)."""
        ...

    async def stats(self) -> list[QueueStats]:
        """Counts per queue and state, and each queue's reclaim counter."""
        ...

    # --- operations for producers and operators (not used by the worker loop) ------

    async def get_task(self, task_id: TaskId) -> TaskInfo | None:
        """A snapshot of one task, or ``None`` if the id is unknown."""
        ...

    async def cancel(self, task_id: TaskId, *, reason: str = "cancel requested") -> bool:
        """Cancel a task: dead at once if it waits, cancel-requested if it runs.

        Returns False when there was nothing to cancel (unknown, done or dead)."""
        ...

    async def reclaim(self) -> int:
        """Reclaim every expired lease now (``claim`` does this too); return how many."""
        ...

    async def prune(self) -> int:
        """Forget the done tasks kept past ``done_ttl`` (and their result's retention) now;
        return how many. Backends also do it on their own; dead letters are never pruned."""
        ...

    async def pause_queue(self, queue: str) -> None:
        """Stop handing out tasks of ``queue`` (running ones go on). Idempotent."""
        ...

    async def resume_queue(self, queue: str) -> None:
        """Hand out tasks of ``queue`` again after :meth:`pause_queue`. Idempotent."""
        ...

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[TaskInfo]:
        """Dead tasks of ``queue``, oldest first (by id), at most ``limit``."""
        ...

    async def replay(self, task_ids: Sequence[TaskId], *, delay: float = 0.0) -> list[TaskId]:
        """Put dead tasks back in line with fresh attempts; return the ids replayed."""
        ...
