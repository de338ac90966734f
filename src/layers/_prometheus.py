"""Prometheus metrics per call: duration by outcome and time in queue.

:class:`PrometheusLayer` records, for each task through it:

* ``turret_task_duration_seconds{worker, queue, outcome}`` (histogram), ``outcome`` one
  of ``success``, ``error`` (the call raised), ``retry`` (:class:`~turret.Retry`),
  ``abort`` (:class:`~turret.Abort`);
* ``turret_task_queue_time_seconds{worker, queue}`` (histogram): from the moment the
  task was due, ``max(enqueued_at, run_at)``, to its start, on the backend's clock.
* ``turret_tasks_in_progress{worker, queue}`` is read at scrape time from the
  worker's own count (``WorkerContext.in_flight``) by :class:`~turret.observability.Metrics`,
  so the hot path does not pay for a gauge.

How tasks are *settled* (acked, retried, dead-lettered, released), worker states,
restarts and queue depth come from worker events and the backend: see
:class:`turret.observability.Metrics`. Requires ``prometheus-client``
(``pip install 'turret[metrics]'``); this is the only layer module that imports it.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import attrs
import trio
from prometheus_client import CollectorRegistry, Histogram

from ..core._context import current_worker
from ..core._errors import Abort, Retry
from ..core._service import Service
from ..core._task import Task
from ..observability._metrics import LAYER_OUTCOMES, Families, families

__all__ = ["Prometheus", "PrometheusLayer"]

Res = TypeVar("Res")

#: A timestamp above this is seconds since the epoch (a wall clock), not trio's clock.
_EPOCH_THRESHOLD = 1e9


class _Observe:
    """``histogram_child.observe`` without its per-call checks: a bisect into the buckets.

    Built from the child's value cells once; falls back to ``observe`` if the client's
    internals ever change shape.
    """

    __slots__ = ("bounds", "buckets", "observe", "sum")

    def __init__(self, child: Histogram) -> None:
        self.observe: Callable[[float], None]
        try:
            self.sum = child._sum.inc
            self.buckets = tuple(cell.inc for cell in child._buckets)
            self.bounds = tuple(child._upper_bounds)
            if len(self.bounds) != len(self.buckets) or self.bounds[-1] != math.inf:
                raise TypeError("unexpected histogram layout")
        except (AttributeError, TypeError):
            self.observe = child.observe
        else:
            self.observe = self._fast

    def _fast(self, amount: float) -> None:
        self.sum(amount)
        self.buckets[bisect_left(self.bounds, amount)](1)


class _Series:
    """The label children of one (worker, queue), resolved once."""

    __slots__ = ("abort", "error", "queue", "queue_time", "retry", "success")

    def __init__(self, fams: Families, worker: str, queue: str) -> None:
        self.queue = queue
        hist = fams.task_duration
        self.success, self.error, self.retry, self.abort = (
            _Observe(hist.labels(worker, queue, outcome)).observe for outcome in LAYER_OUTCOMES
        )
        self.queue_time = _Observe(fams.task_queue_time.labels(worker, queue)).observe


class Prometheus(Service[Task[Any], Res]):
    """The service :class:`PrometheusLayer` builds. Forwards ``ready()``.

    The label children are resolved on the first call (the worker's name comes from
    :func:`~turret.current_worker`) and reused, so a call builds no dicts or tuples.
    """

    __slots__ = ("_series", "clock", "families", "inner")
    forwards_ready = True  # ready() is inner.ready(), unchanged

    def __init__(
        self,
        inner: Service[Task[Any], Res],
        fams: Families,
        clock: Callable[[], float] | None,
    ) -> None:
        self.inner = inner
        self.families = fams
        self.clock = clock
        self._series: dict[str, _Series] = {}

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()

    def _resolve(self, queue: str) -> _Series:
        wctx = current_worker()
        series = _Series(self.families, wctx.name if wctx is not None else "", queue)
        self._series[queue] = series
        return series

    async def __call__(self, task: Task[Any], /) -> Res:
        ctx = task.ctx
        series = self._series.get(ctx.queue) or self._resolve(ctx.queue)
        start = trio.current_time()
        due = ctx.run_at if ctx.run_at > ctx.enqueued_at else ctx.enqueued_at
        if self.clock is not None:
            now = self.clock()
        else:  # epoch stamps: a durable backend's wall clock; else trio's (MemoryBackend)
            now = time.time() if due > _EPOCH_THRESHOLD else start
        series.queue_time(now - due if now > due else 0.0)
        try:
            result = await self.inner(task)
        except Retry:
            series.retry(trio.current_time() - start)
            raise
        except Abort:
            series.abort(trio.current_time() - start)
            raise
        except Exception:
            series.error(trio.current_time() - start)
            raise
        series.success(trio.current_time() - start)
        return result


@attrs.frozen
class PrometheusLayer(Generic[Res]):
    """Per-call Prometheus metrics: duration by outcome and time in queue.

    ``registry`` defaults to prometheus_client's global ``REGISTRY``; the metric
    families are registered once per registry and shared by every layer using it.
    ``clock`` is the backend's clock (``backend.now``) for the time in queue; by default
    the wall clock for epoch timestamps and trio's clock otherwise (the MemoryBackend's
    default), which is right for turret's backends.

    Example::

        from prometheus_client import CollectorRegistry, Histogram
        from turret.layers import PrometheusLayer

        registry = CollectorRegistry()
        worker = (
            WorkerBuilder("mail").backend(backend)
            .layer(PrometheusLayer(registry))
            .build(send_email)
        )
    """

    registry: CollectorRegistry | None = None
    clock: Callable[[], float] | None = attrs.field(default=None, kw_only=True)

    def layer(self, inner: Service[Task[Any], Res], /) -> Prometheus[Res]:
        return Prometheus(inner, families(self.registry), self.clock)
