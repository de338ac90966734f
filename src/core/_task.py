"""Tasks, their context, and time-sortable ids."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Generic, TypeVar

import attrs

__all__ = ["Lease", "Task", "TaskContext", "TaskId"]

A = TypeVar("A")
A_co = TypeVar("A_co", covariant=True)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


class TaskId(str):
    """A task's id: a ULID (26 characters), unique and sortable by creation time.

    Ids made in one process are strictly increasing, even within one millisecond, so
    sorting by id is FIFO order.

    Example::

        >>> a, b = TaskId.new(), TaskId.new()
        >>> a < b and len(a) == 26
        True
    """

    __slots__ = ()

    @classmethod
    def new(cls) -> TaskId:
        """Make a fresh id from the wall clock and 80 random bits (monotonic per process)."""
        global _last_ms, _last_rand
        ms = time.time_ns() // 1_000_000
        with _lock:
            if ms <= _last_ms:
                ms = _last_ms
                rand = _last_rand + 1
            else:
                rand = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
            _last_ms, _last_rand = ms, rand
        return cls(_b32(ms, 10) + _b32(rand, 16))

    @property
    def timestamp(self) -> float:
        """Creation time in seconds since the epoch (millisecond precision)."""
        ms = 0
        for ch in self[:10]:
            ms = ms * 32 + _CROCKFORD.index(ch)
        return ms / 1000


@attrs.frozen
class Lease:
    """A worker's claim on a task: who holds it, until when, and its fencing token.

    ``deadline`` is on the backend's clock. ``token`` grows with every claim of the task,
    so a settle carrying an older token is refused.

    Example::

        lease = task.ctx.lease
        await backend.ack(task.ctx.id, lease.token)
    """

    owner: str
    deadline: float
    token: int


@attrs.frozen
class TaskContext:
    """Everything about a task except its arguments.

    ``attempt`` is the number of this delivery (1 for the first). ``run_at`` and
    ``enqueued_at`` are on the backend's clock.

    Example::

        async def handler(email: Email, ctx: TaskContext) -> None:
            log.info("task %s attempt %d/%d", ctx.id, ctx.attempt, ctx.max_attempts)
    """

    id: TaskId
    queue: str
    attempt: int = 1
    max_attempts: int = 3
    priority: int = 0
    run_at: float = 0.0
    enqueued_at: float = 0.0
    headers: Mapping[str, str] = attrs.field(factory=dict)
    lease: Lease | None = None

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now sends the task to dead letters."""
        return self.attempt >= self.max_attempts


@attrs.frozen
class Task(Generic[A_co]):
    """One unit of work: ``args`` plus its :class:`TaskContext`.

    Inside a worker's stack ``args`` is the decoded payload (plain JSON values); the
    handler adapter structures it into the handler's annotated type.

    Example::

        task = Task(args={"to": "a@b.c"}, ctx=TaskContext(id=TaskId.new(), queue="mail"))
    """

    args: A_co
    ctx: TaskContext

    @property
    def id(self) -> TaskId:
        """Shortcut for ``task.ctx.id``."""
        return self.ctx.id
