"""Prometheus metrics: the metric families, and :class:`Metrics`, fed by worker events.

Everything is registered once per ``CollectorRegistry`` (so several layers, workers and
a :class:`Metrics` share the same families). Labels are low-cardinality: ``worker``,
``queue``, ``outcome``/``reason``/``state``; never a task id. Requires
``prometheus-client`` (``pip install 'turret[metrics]'``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core import _events as ev
from ..core._backend import Backend, QueueStats
from ..core._context import WorkerState
from ..core._readiness import Readiness

if TYPE_CHECKING:
    from ..core._monitor import MonitorHandle
    from ..core._worker import Worker

__all__ = ["LAYER_OUTCOMES", "SETTLE_OUTCOMES", "Families", "Metrics", "families"]

log = logging.getLogger("turret.metrics")

#: ``outcome`` of ``turret_task_duration_seconds``: what the stack did with the call.
LAYER_OUTCOMES = ("success", "error", "retry", "abort")
#: ``outcome`` of ``turret_tasks_processed_total``: how the backend settled the task.
SETTLE_OUTCOMES = ("succeeded", "retried", "dead_lettered", "released")
#: ``reason`` of ``turret_task_retries_total``.
RETRY_REASONS = ("error", "requested")
WORKER_STATES = tuple(s.value for s in WorkerState)
QUEUE_STATES = ("pending", "scheduled", "leased", "done", "dead")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
QUEUE_TIME_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class _LastEvent:
    """The event the Metrics of one registry counted last (shared by all of them)."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event: object = None


@attrs.frozen
class Families:
    """turret's metric families in one registry (see :func:`families`)."""

    task_duration: Histogram
    task_queue_time: Histogram
    tasks_processed: Counter
    task_retries: Counter
    lease_rejections: Counter
    worker_state: Gauge
    worker_status: Gauge
    worker_restarts: Counter
    #: Every Metrics of the registry counts an event once (see ``Metrics.on_event``).
    last_event: _LastEvent = attrs.field(factory=_LastEvent)


_families: weakref.WeakKeyDictionary[CollectorRegistry, Families] = weakref.WeakKeyDictionary()


def families(registry: CollectorRegistry | None = None) -> Families:
    """turret's metric families registered in ``registry`` (default: the global one).

    Created on the first call for a registry, shared afterwards.

    Example::

        fams = families(CollectorRegistry())
        fams.tasks_processed.labels("mail", "mail", "succeeded").inc()
    """
    reg = REGISTRY if registry is None else registry
    found = _families.get(reg)
    if found is not None:
        return found
    wq = ("worker", "queue")
    fams = Families(
        task_duration=Histogram(
            "turret_task_duration_seconds",
            "Time a task spent in the stack below the PrometheusLayer, by outcome.",
            (*wq, "outcome"),
            buckets=DURATION_BUCKETS,
            registry=reg,
        ),
        task_queue_time=Histogram(
            "turret_task_queue_time_seconds",
            "Time from a task being due (max of enqueued_at, run_at) to its start.",
            wq,
            buckets=QUEUE_TIME_BUCKETS,
            registry=reg,
        ),
        tasks_processed=Counter(
            "turret_tasks_processed",
            "Tasks settled by a worker, by outcome.",
            (*wq, "outcome"),
            registry=reg,
        ),
        task_retries=Counter(
            "turret_task_retries",
            "Durable retries scheduled: reason=error (the handler raised) or requested.",
            (*wq, "reason"),
            registry=reg,
        ),
        lease_rejections=Counter(
            "turret_lease_rejections",
            "Settles refused by fencing, or leases lost during a run.",
            wq,
            registry=reg,
        ),
        worker_state=Gauge(
            "turret_worker_state",
            "1 for the worker's current state (pending, running, paused, stopping, stopped).",
            ("worker", "state"),
            registry=reg,
            multiprocess_mode="livesum",
        ),
        worker_status=Gauge(
            "turret_worker_status",
            "1 for the worker's status as its Monitor sees it (healthy, unhealthy, ...).",
            ("worker", "status"),
            registry=reg,
            multiprocess_mode="livesum",
        ),
        worker_restarts=Counter(
            "turret_worker_restarts",
            "Restarts a Monitor's restart policy granted.",
            ("worker",),
            registry=reg,
        ),
    )
    _families[reg] = fams
    return fams


_live_gauges_dropped_at_exit = False


def _drop_live_gauges_at_exit() -> None:
    """In multiprocess mode, remove this process's ``live*`` gauge files when it exits.

    prometheus_client only forgets a dead process's ``livesum`` values (worker states
    and statuses) in ``multiprocess.mark_process_dead(pid)``; nothing calls it for
    independent worker processes, so each process calls it for itself on a normal exit
    (a killed one leaves its last values until the directory is wiped). Registered once
    per process, and only when values really are written to files.
    """
    global _live_gauges_dropped_at_exit
    if _live_gauges_dropped_at_exit or not getattr(values.ValueClass, "_multiprocess", False):
        return
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return
    _live_gauges_dropped_at_exit = True
    atexit.register(_mark_this_process_dead, path)


def _mark_this_process_dead(path: str) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


class _TaskSeries:
    """Pre-resolved children of one (worker, queue) for the event hot path."""

    __slots__ = ("dead", "ok", "rejected", "released", "retried", "retry_error", "retry_req")

    def __init__(self, fams: Families, worker: str, queue: str) -> None:
        done = fams.tasks_processed
        self.ok = done.labels(worker, queue, "succeeded")
        self.retried = done.labels(worker, queue, "retried")
        self.dead = done.labels(worker, queue, "dead_lettered")
        self.released = done.labels(worker, queue, "released")
        self.retry_error = fams.task_retries.labels(worker, queue, "error")
        self.retry_req = fams.task_retries.labels(worker, queue, "requested")
        self.rejected = fams.lease_rejections.labels(worker, queue)


_STATE_OF_EVENT: dict[type[ev.Event], str] = {
    ev.WorkerStarted: WorkerState.RUNNING.value,
    ev.WorkerPaused: WorkerState.PAUSED.value,
    ev.WorkerResumed: WorkerState.RUNNING.value,
    ev.WorkerStopping: WorkerState.STOPPING.value,
    ev.WorkerStopped: WorkerState.STOPPED.value,
}


def _readiness(worker: Worker) -> Readiness | None:
    """The worker's core Readiness service (its concurrency limit), found via ``inner``."""
    svc: Any = worker.service
    for _ in range(64):
        if isinstance(svc, Readiness):
            return svc
        svc = getattr(svc, "inner", None)
        if svc is None:
            return None
    return None


class Metrics:
    """turret's Prometheus metrics fed by worker and Monitor events, plus live collectors.

    Pass :meth:`on_event` to ``Monitor.on_event`` or ``WorkerBuilder.on_event``: it
    counts settled tasks by outcome, retries by reason, fencing rejections, restarts,
    worker states and statuses, and event-loop lag. :meth:`watch_monitor`,
    :meth:`watch` and :meth:`watch_backend` add live values read at scrape time: each
    worker's concurrency limit and readiness, and the backends' queue depth per state,
    read from ``backend.stats()`` by :meth:`run` in the background (a scrape only reads
    the cache, so it never hammers the backend).

    The per-call metrics (duration, time in queue, in progress) come from
    :class:`~turret.layers.PrometheusLayer`; :meth:`layer` makes one on this registry.

    Example::

        metrics = Metrics()                           # the global registry
        worker = (
            WorkerBuilder("mail").backend(backend)
            .layer(metrics.layer())
            .on_event(metrics.on_event)
            .build(send_email)
        )
        metrics.watch(worker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(metrics.run)           # refreshes queue depth
            nursery.start_soon(serve_metrics, metrics.registry)
            await worker.run()
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry: CollectorRegistry = REGISTRY if registry is None else registry
        self.families = families(self.registry)
        _drop_live_gauges_at_exit()
        self._tasks: dict[tuple[str, str], _TaskSeries] = {}
        self._states: dict[str, str] = {}
        self._workers: dict[str, Worker] = {}
        self._handles: list[MonitorHandle] = []
        self._backends: dict[int, Backend] = {}
        self._stats: dict[int, tuple[float, list[QueueStats]]] = {}
        self._live = _LiveCollector(self)
        self.registry.register(self._live)
        self._dispatch: dict[type[ev.Event], Callable[[Any], None]] = {
            ev.TaskEngaged: self._engaged,
            ev.TaskSucceeded: self._succeeded,
            ev.TaskRetried: self._retried,
            ev.TaskDeadLettered: self._dead,
            ev.TaskReleased: self._released,
            ev.LeaseRejected: self._rejected,
        }
        for cls in _STATE_OF_EVENT:
            self._dispatch[cls] = self._state
        self._add_monitor_events()

    def __repr__(self) -> str:
        return f"<Metrics workers={len(self._states)} backends={len(self._backends)}>"

    def close(self) -> None:
        """Unregister the live collector from the registry (the families stay).

        Example::

            metrics.close()
        """
        with contextlib.suppress(KeyError):
            self.registry.unregister(self._live)

    # --- wiring ------------------------------------------------------------------------

    def layer(self, *, clock: Callable[[], float] | None = None) -> Any:
        """A :class:`~turret.layers.PrometheusLayer` on this registry.

        Example::

            builder = builder.layer(metrics.layer())
        """
        from ..layers._prometheus import PrometheusLayer

        return PrometheusLayer(self.registry, clock=clock)

    def watch(self, worker: Worker) -> None:
        """Report ``worker``'s concurrency limit and readiness, and its backend's queues.

        Example::

            metrics.watch(worker)
        """
        self._workers[worker.name] = worker
        self.watch_backend(worker.backend)

    def watch_monitor(self, handle: MonitorHandle) -> None:
        """Report every worker a running Monitor supervises (and their backends).

        Example::

            async with monitor.open() as handle:
                metrics.watch_monitor(handle)
        """
        self._handles.append(handle)

    def unwatch_monitor(self, handle: MonitorHandle) -> None:
        """Stop reporting a Monitor's workers (it stopped running).

        Example::

            metrics.unwatch_monitor(handle)
        """
        if handle in self._handles:
            self._handles.remove(handle)

    def watch_backend(self, backend: Backend) -> None:
        """Report ``backend``'s queue depth per state (refreshed by :meth:`run`).

        Example::

            metrics.watch_backend(backend)
        """
        self._backends.setdefault(id(backend), backend)

    # --- events ------------------------------------------------------------------------

    def on_event(self, event: ev.Event) -> None:
        """Count one worker or Monitor event. Never raises on an unknown event.

        Example::

            monitor.on_event(metrics.on_event)
        """
        # Each event is counted once per registry, however many Metrics receive it (a
        # worker's own Metrics and a Monitor's serve_metrics() on the same registry).
        last = self.families.last_event
        if last.event is event:
            return
        last.event = event
        handler = self._dispatch.get(type(event))
        if handler is not None:
            handler(event)

    __call__ = on_event

    def _series(self, worker: str, queue: str) -> _TaskSeries:
        key = (worker, queue)
        series = self._tasks.get(key)
        if series is None:
            series = self._tasks[key] = _TaskSeries(self.families, worker, queue)
            if worker not in self._states:
                self._set_state(worker, WorkerState.RUNNING.value)
        return series

    def _engaged(self, event: ev.TaskEngaged) -> None:
        self._series(event.worker, event.task.queue)

    def _succeeded(self, event: ev.TaskSucceeded) -> None:
        self._series(event.worker, event.task.queue).ok.inc()

    def _retried(self, event: ev.TaskRetried) -> None:
        s = self._series(event.worker, event.task.queue)
        s.retried.inc()
        if event.reason.startswith("retry requested"):
            s.retry_req.inc()
        else:
            s.retry_error.inc()

    def _dead(self, event: ev.TaskDeadLettered) -> None:
        self._series(event.worker, event.task.queue).dead.inc()

    def _released(self, event: ev.TaskReleased) -> None:
        self._series(event.worker, event.task.queue).released.inc()

    def _rejected(self, event: ev.LeaseRejected) -> None:
        self._series(event.worker, event.task.queue).rejected.inc()

    def _state(self, event: ev.Event) -> None:
        self._set_state(event.worker, _STATE_OF_EVENT[type(event)])

    def _set_state(self, worker: str, state: str) -> None:
        gauge = self.families.worker_state
        previous = self._states.get(worker)
        if previous is None:
            for name in WORKER_STATES:  # pre-create every state's series
                gauge.labels(worker, name).set(0)
            self.families.worker_restarts.labels(worker)
        elif previous != state:
            gauge.labels(worker, previous).set(0)
        gauge.labels(worker, state).set(1)
        self._states[worker] = state

    def _add_monitor_events(self) -> None:
        from ..core import _monitor as mon

        fams = self.families
        statuses = tuple(s.value for s in mon.WorkerStatus)

        def status_changed(event: mon.WorkerStatusChanged) -> None:
            gauge = fams.worker_status
            if event.previous is mon.WorkerStatus.CREATED:
                for name in statuses:
                    gauge.labels(event.worker, name).set(0)
            gauge.labels(event.worker, event.previous.value).set(0)
            gauge.labels(event.worker, event.status.value).set(1)

        def restarting(event: mon.WorkerRestarting) -> None:
            fams.worker_restarts.labels(event.worker).inc()

        self._dispatch[mon.WorkerStatusChanged] = status_changed
        self._dispatch[mon.WorkerRestarting] = restarting

    # --- live values -------------------------------------------------------------------

    def _watched_workers(self) -> dict[str, Worker]:
        found = dict(self._workers)
        for handle in self._handles:
            for name in handle.statuses():
                worker = handle.worker(name)
                if worker is not None:
                    found[name] = worker
        return found

    def _watched_backends(self) -> list[Backend]:
        found = dict(self._backends)
        for worker in self._watched_workers().values():
            found.setdefault(id(worker.backend), worker.backend)
        return list(found.values())

    async def refresh(self) -> None:
        """Read ``stats()`` of every watched backend once, into the scrape cache.

        A failing backend keeps its previous values (and is logged).

        Example::

            await metrics.refresh()
        """
        for backend in self._watched_backends():
            try:
                stats = await backend.stats()
            except Exception:
                log.warning(
                    "metrics: %r.stats() failed; keeping old values", backend, exc_info=True
                )
                continue
            self._stats[id(backend)] = (trio.current_time(), list(stats))

    async def run(
        self,
        *,
        interval: float = 15.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Refresh the queue-depth cache every ``interval`` seconds until cancelled.

        Start it in the nursery that runs the workers; the first refresh is done before
        ``task_status.started()``.

        Example::

            await nursery.start(metrics.run)
        """
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(interval)
            await self.refresh()

    def _lag_from_handles(self) -> Iterator[tuple[str, float]]:
        for handle in self._handles:
            yield handle._monitor.name, handle.statistics().loop_lag_last


class _LiveCollector(Collector):
    """Values read at scrape time: cached queue depth, concurrency limits, readiness."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # collected dynamically; no name clashes to check

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        depth = GaugeMetricFamily(
            "turret_queue_tasks",
            "Tasks per queue and state, from backend.stats() (cached).",
            labels=("queue", "state"),
        )
        paused = GaugeMetricFamily(
            "turret_queue_paused", "1 while the queue is paused.", labels=("queue",)
        )
        age = GaugeMetricFamily(
            "turret_queue_stats_age_seconds",
            "Seconds since the queue statistics were read from the backend.",
        )
        reclaimed = CounterMetricFamily(
            "turret_leases_reclaimed",
            "Expired leases reclaimed per queue since the store was created, from "
            "backend.stats() (cached).",
            labels=("queue",),
        )
        oldest: float | None = None
        for read_at, stats in m._stats.values():
            oldest = read_at if oldest is None else min(oldest, read_at)
            for s in stats:
                for state in QUEUE_STATES:
                    depth.add_metric((s.queue, state), getattr(s, state))
                paused.add_metric((s.queue,), 1.0 if s.paused else 0.0)
                reclaimed.add_metric((s.queue,), s.reclaimed)
        yield depth
        yield paused
        yield reclaimed
        if oldest is not None:
            try:
                age.add_metric((), max(0.0, trio.current_time() - oldest))
            except RuntimeError:  # scraped from outside trio (another thread)
                pass
            else:
                yield age
        limit = GaugeMetricFamily(
            "turret_worker_concurrency_limit",
            "How many tasks the worker runs at once.",
            labels=("worker",),
        )
        ready = GaugeMetricFamily(
            "turret_worker_ready",
            "1 when the worker would claim a task now: running with a free slot.",
            labels=("worker",),
        )
        in_progress = GaugeMetricFamily(
            "turret_tasks_in_progress",
            "Tasks inside the worker's handler (WorkerContext.in_flight).",
            labels=("worker", "queue"),
        )
        for name, worker in m._watched_workers().items():
            rd = _readiness(worker)
            ctx = worker.context
            in_progress.add_metric((name, worker.queue), ctx.in_flight)
            if rd is None:
                continue
            total = rd.permits.total
            limit.add_metric((name,), total)
            ok = ctx.state is WorkerState.RUNNING and ctx.in_flight < total
            ready.add_metric((name,), 1.0 if ok else 0.0)
        yield in_progress
        yield limit
        yield ready
        lag = GaugeMetricFamily(
            "turret_event_loop_lag_seconds",
            "Event-loop lag the Monitor's watchdog measured last (live).",
            labels=("monitor",),
        )
        for monitor, value in m._lag_from_handles():
            lag.add_metric((monitor,), value)
        yield lag
