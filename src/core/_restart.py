"""Restart policies: when a supervised worker fails, should the Monitor build a new one?

A policy answers two questions: ``should_restart(ctx, error, attempt)`` (as apalis'
``should_restart``) and ``delay(ctx, attempt)``, how long to wait before the restart.
A plain callable ``(ctx, error, attempt) -> bool`` works too; it restarts at once.

:class:`RestartWithBackoff` is the ready-made policy: exponential backoff between
restarts, and at most ``max_restarts`` restarts within a sliding window of ``within``
seconds. When the policy says no, the worker is Dead and the Monitor reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs
import trio

from ._backoff import Backoff, ExponentialBackoff
from ._context import WorkerContext

__all__ = ["RestartContext", "RestartPolicy", "RestartWithBackoff", "ShouldRestart"]


@attrs.frozen
class RestartContext:
    """What a restart policy knows about the failed worker (a frozen snapshot).

    ``name`` is the Monitor's name for the instance (``"mail"`` or ``"mail-2"``),
    ``index`` its index among the registration's ``count``, ``worker`` the failed
    instance's :class:`~turret.WorkerContext` (with its counters), and ``restart_times``
    the ``trio.current_time()`` of every earlier restart the policy granted.

    Example::

        def at_most_three(ctx: RestartContext, error: Exception, attempt: int) -> bool:
            return len(ctx.restart_times) < 3
    """

    name: str
    index: int
    worker: WorkerContext
    restart_times: tuple[float, ...]


ShouldRestart = Callable[[RestartContext, Exception, int], bool]
"""A bare policy: ``(ctx, error, attempt) -> bool``; a granted restart happens at once.

Example::

    monitor.restart_policy(lambda ctx, error, attempt: not isinstance(error, KeyError))
"""


@runtime_checkable
class RestartPolicy(Protocol):
    """Decides whether, and after how long, a failed worker is built and started again.

    ``attempt`` is the number of the restart being considered: 1 after the first failure,
    counting every restart granted so far for this worker slot.

    Example::

        class Always:
            def should_restart(self, ctx: RestartContext, error: Exception, attempt: int) -> bool:
                return True

            def delay(self, ctx: RestartContext, attempt: int) -> float:
                return 1.0
    """

    def should_restart(self, ctx: RestartContext, error: Exception, attempt: int) -> bool: ...

    def delay(self, ctx: RestartContext, attempt: int) -> float: ...


def _non_negative(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attr.name} must be >= 0, got {value!r}")


@attrs.frozen
class RestartWithBackoff:
    """Restart with exponential backoff; give up after ``max_restarts`` within ``within`` s.

    The delay before a restart is ``backoff.delay(n)`` where ``n`` counts the restarts in
    the current window including this one, so a worker that has been fine for a while
    starts again from the shortest delay. ``RestartWithBackoff(max_restarts=0)`` never
    restarts.

    Example::

        policy = RestartWithBackoff(
            max_restarts=3, within=60.0,
            backoff=ExponentialBackoff(base=1.0, max=30.0, jitter=False),
        )
        monitor = Monitor().restart_policy(policy)
    """

    max_restarts: int = attrs.field(default=5)
    within: float = attrs.field(default=60.0, validator=_non_negative)
    backoff: Backoff = attrs.field(factory=lambda: ExponentialBackoff(base=1.0, max=30.0))

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {self.max_restarts!r}")

    def _recent(self, ctx: RestartContext) -> int:
        now = trio.current_time()
        return sum(1 for t in ctx.restart_times if now - t < self.within)

    def should_restart(self, ctx: RestartContext, error: Exception, attempt: int) -> bool:
        """True while fewer than ``max_restarts`` restarts happened in the window."""
        return self._recent(ctx) < self.max_restarts

    def delay(self, ctx: RestartContext, attempt: int) -> float:
        """The backoff for the ``n``-th restart of the current window."""
        return max(0.0, self.backoff.delay(self._recent(ctx) + 1))


@attrs.frozen
class _Bare:
    """Adapts a bare ``ShouldRestart`` callable: restart at once."""

    fn: ShouldRestart

    def should_restart(self, ctx: RestartContext, error: Exception, attempt: int) -> bool:
        return bool(self.fn(ctx, error, attempt))

    def delay(self, ctx: RestartContext, attempt: int) -> float:
        return 0.0


def as_policy(policy: RestartPolicy | ShouldRestart) -> RestartPolicy:
    """Accept a policy object or a bare callable; refuse anything else clearly."""
    if isinstance(policy, RestartPolicy):
        return policy
    if callable(policy):
        return _Bare(policy)
    raise TypeError(
        f"a restart policy must have should_restart() and delay(), or be a callable "
        f"(ctx, error, attempt) -> bool; got {policy!r}"
    )
