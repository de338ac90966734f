"""What a worker reports. Every event is a frozen attrs class deriving from :class:`Event`."""

from __future__ import annotations

import attrs

from ._task import TaskContext

__all__ = [
    "Event",
    "Heartbeat",
    "LeaseRejected",
    "TaskDeadLettered",
    "TaskEngaged",
    "TaskFailed",
    "TaskReleased",
    "TaskRetried",
    "TaskSucceeded",
    "WorkerIdle",
    "WorkerPaused",
    "WorkerResumed",
    "WorkerStarted",
    "WorkerStopped",
    "WorkerStopping",
]


@attrs.frozen
class Event:
    """Base of all events: which worker, and when (``trio.current_time()``).

    Example::

        def on_event(event: turret.Event) -> None:
            if isinstance(event, turret.TaskFailed):
                log.warning("%s failed: %r", event.task.id, event.error)
    """

    worker: str
    time: float


@attrs.frozen
class WorkerStarted(Event):
    """The worker's loop is running."""


@attrs.frozen
class WorkerIdle(Event):
    """The worker found no claimable task and waits for work."""


@attrs.frozen
class WorkerPaused(Event):
    """``pause()`` was called: no more claims until ``resume()``."""


@attrs.frozen
class WorkerResumed(Event):
    """``resume()`` was called."""


@attrs.frozen
class WorkerStopping(Event):
    """``stop()`` was called: no more claims; in-flight work drains."""


@attrs.frozen
class WorkerStopped(Event):
    """The worker's loop has ended; nothing is in flight."""


@attrs.frozen
class Heartbeat(Event):
    """The worker renewed its leases (``leases`` of them)."""

    leases: int


@attrs.frozen
class TaskEngaged(Event):
    """A claimed task starts through the stack."""

    task: TaskContext


@attrs.frozen
class TaskSucceeded(Event):
    """The handler returned; the task is acknowledged."""

    task: TaskContext
    duration: float


@attrs.frozen
class TaskFailed(Event):
    """The handler (or a layer) raised. ``final`` is True when no retry follows."""

    task: TaskContext
    error: BaseException
    duration: float
    final: bool


@attrs.frozen
class TaskRetried(Event):
    """A durable retry is scheduled ``delay`` seconds from now."""

    task: TaskContext
    delay: float
    reason: str


@attrs.frozen
class TaskDeadLettered(Event):
    """The task went to dead letters with ``reason``."""

    task: TaskContext
    reason: str


@attrs.frozen
class TaskReleased(Event):
    """The task was given back to the backend without consuming an attempt."""

    task: TaskContext


@attrs.frozen
class LeaseRejected(Event):
    """The worker lost a task's lease: a settle was refused (fencing) or renewal failed."""

    task: TaskContext
    reason: str
