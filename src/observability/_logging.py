"""stdlib logging of worker events, with task id, queue and attempt as structured fields."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..core import _events as ev
from ..core._task import TaskContext

__all__ = ["log_events", "task_extra"]


def task_extra(ctx: TaskContext, worker: str | None = None) -> dict[str, Any]:
    """The structured fields of a task log record: pass as ``extra=``.

    Keys: ``task_id``, ``queue``, ``attempt``, ``max_attempts`` and, when given,
    ``worker``. A JSON formatter (or a ``%(task_id)s`` format string) picks them up.

    Example::

        async def handler(order: Order, ctx: TaskContext) -> None:
            log.info("charging", extra=task_extra(ctx))
    """
    extra: dict[str, Any] = {
        "task_id": str(ctx.id),
        "queue": ctx.queue,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
    }
    if worker is not None:
        extra["worker"] = worker
    return extra


def log_events(
    logger: logging.Logger | str = "turret.events",
    *,
    level: int = logging.INFO,
    task_level: int = logging.DEBUG,
) -> Callable[[ev.Event], None]:
    """An ``on_event`` callback that logs events with structured fields.

    Task events carry ``task_id``, ``queue``, ``attempt``, ``max_attempts`` and
    ``worker`` in ``extra``; every record carries ``event`` (the class name). Successes
    and engagements log at ``task_level``; retries at ``level``; failures, dead letters
    and lease rejections at WARNING; worker life-cycle events at ``level``.

    Example::

        monitor.on_event(log_events("myapp.tasks"))
        builder = builder.on_event(log_events(logging.getLogger("worker")))
    """
    log = logging.getLogger(logger) if isinstance(logger, str) else logger

    def on_event(event: ev.Event) -> None:
        name = type(event).__name__
        task: TaskContext | None = getattr(event, "task", None)
        if task is None:
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "%s: %s",
                    event.worker,
                    name,
                    extra={"event": name, "worker": event.worker},
                )
            return
        if isinstance(event, ev.TaskSucceeded | ev.TaskEngaged | ev.TaskReleased):
            lvl, detail = task_level, ""
            if isinstance(event, ev.TaskSucceeded):
                detail = f" in {event.duration:.3f}s"
        elif isinstance(event, ev.TaskRetried):
            lvl, detail = level, f"; retry in {event.delay:.3g}s: {event.reason}"
        elif isinstance(event, ev.TaskFailed):
            lvl, detail = (
                logging.WARNING,
                f": {event.error!r}" + (" (final)" if event.final else ""),
            )
        elif isinstance(event, ev.TaskDeadLettered | ev.LeaseRejected):
            lvl, detail = logging.WARNING, f": {event.reason}"
        else:
            lvl, detail = level, ""
        if not log.isEnabledFor(lvl):
            return
        extra = task_extra(task, event.worker)
        extra["event"] = name
        log.log(
            lvl,
            "%s: task %s (%s, attempt %d/%d) %s%s",
            event.worker,
            task.id,
            task.queue,
            task.attempt,
            task.max_attempts,
            name,
            detail,
            extra=extra,
        )

    return on_event
