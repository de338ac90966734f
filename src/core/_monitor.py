"""The Monitor: runs many workers in one nursery and supervises them.

Every registered factory builds its workers; the Monitor starts them, watches their
health, restarts them per a :class:`~turret.RestartPolicy` when they fail or stall,
measures event-loop lag, and shuts everything down gracefully.

Names: a registration ``name`` with ``count=1`` gives one worker called ``name``; with
``count > 1`` the instances are ``f"{name}-{index}"`` for ``index`` in ``range(count)``.
:meth:`MonitorHandle.restart` and :meth:`MonitorHandle.kill` take either an instance
name or a registration name (meaning all its instances).

Statuses (task-supervisor's model)::

    Created → Starting → Healthy ─┬→ Completed          (ran to a graceful end)
                 ↑                ├→ Unhealthy ─┐       (a backend call stalled)
                 │                └→ Failed ────┤       (the worker raised)
                 └──── policy grants a restart ─┤
                                                └→ Dead (policy gave up, or killed)

Failure is fail-fast, as in a nursery: when the policy gives up on a worker, the
Monitor shuts down every other worker gracefully and ``run()`` raises a
:class:`MonitorError` listing each failed worker and its error.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._context import WorkerContext
from ._errors import TurretError
from ._events import Event
from ._restart import (
    RestartContext,
    RestartPolicy,
    RestartWithBackoff,
    ShouldRestart,
    as_policy,
)
from ._worker import Worker

if TYPE_CHECKING:
    from ..observability._metrics import Metrics
    from ..observability._server import MetricsServer

__all__ = [
    "EventLoopLag",
    "Monitor",
    "MonitorError",
    "MonitorHandle",
    "MonitorStatistics",
    "WorkerRestarting",
    "WorkerStalled",
    "WorkerStatus",
    "WorkerStatusChanged",
    "WorkerUnhealthy",
]

log = logging.getLogger("turret.monitor")

WorkerFactory = Callable[[int], Worker]


class WorkerStatus(enum.Enum):
    """A supervised worker as the Monitor sees it (see the module docs for the graph).

    Example::

        assert handle.status("mail") is WorkerStatus.HEALTHY
    """

    CREATED = "created"
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    FAILED = "failed"
    COMPLETED = "completed"
    DEAD = "dead"


# --- events --------------------------------------------------------------------------


@attrs.frozen
class WorkerStatusChanged(Event):
    """A supervised worker moved from ``previous`` to ``status``.

    Example::

        def on_event(event: turret.Event) -> None:
            if isinstance(event, turret.WorkerStatusChanged):
                print(event.worker, event.previous.value, "->", event.status.value)
    """

    previous: WorkerStatus
    status: WorkerStatus


@attrs.frozen
class WorkerRestarting(Event):
    """The restart policy granted restart number ``attempt``, due in ``delay`` seconds.

    Example::

        if isinstance(event, turret.WorkerRestarting):
            log.warning("%s restarts in %.1fs after %r", event.worker, event.delay, event.error)
    """

    attempt: int
    delay: float
    error: Exception


@attrs.frozen
class WorkerUnhealthy(Event):
    """A worker's backend call made no progress for ``stalled_for`` seconds.

    Example::

        if isinstance(event, turret.WorkerUnhealthy):
            alert(f"{event.worker} stalled for {event.stalled_for:.0f}s")
    """

    stalled_for: float


@attrs.frozen
class EventLoopLag(Event):
    """The event loop woke the watchdog ``lag`` seconds late: something blocked it.

    ``worker`` is the Monitor's name.

    Example::

        if isinstance(event, turret.EventLoopLag):
            log.warning("event loop blocked for %.3fs", event.lag)
    """

    lag: float


# --- errors --------------------------------------------------------------------------


class WorkerStalled(TurretError):
    """The cause given to the restart policy for an Unhealthy worker.

    Example::

        def should_restart(ctx, error, attempt) -> bool:
            return isinstance(error, turret.WorkerStalled) or attempt <= 3
    """

    def __init__(self, worker: str, stalled_for: float, unhealthy_after: float) -> None:
        super().__init__(
            f"worker {worker!r}: a backend call made no progress for {stalled_for:.3g}s "
            f"(unhealthy_after={unhealthy_after:g}s)"
        )
        self.worker = worker
        self.stalled_for = stalled_for


class MonitorError(ExceptionGroup[Exception], TurretError):
    """Raised by ``Monitor.run()`` when it gave up on workers: one entry per failed worker.

    ``exceptions`` holds each worker's own error (itself possibly an exception group;
    nothing is unwrapped) and ``workers`` the matching names; :attr:`failures` pairs them.

    Example::

        try:
            await monitor.run()
        except turret.MonitorError as exc:
            for name, error in exc.failures.items():
                print(f"{name}: {error!r}")
    """

    workers: tuple[str, ...]

    def __new__(
        cls, message: str, exceptions: Iterable[Exception], workers: Iterable[str] = ()
    ) -> MonitorError:
        self = super().__new__(cls, message, list(exceptions))
        self.workers = tuple(workers)
        return self

    def derive(self, excs: Iterable[Exception]) -> MonitorError:  # type: ignore[override]
        # split()/subgroup() rebuild nested groups, so match on the leaf exceptions.
        names = {
            id(leaf): name
            for error, name in zip(self.exceptions, self.workers, strict=False)
            for leaf in _leaves(error)
        }
        kept = list(excs)
        return MonitorError(
            self.message, kept, [names.get(id(next(iter(_leaves(e)), e)), "?") for e in kept]
        )

    @property
    def failures(self) -> dict[str, Exception]:
        """``{worker name: its error}`` in the order they failed."""
        return dict(zip(self.workers, self.exceptions, strict=False))


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


def _describe(error: BaseException) -> str:
    counts: dict[str, int] = {}
    for leaf in _leaves(error):
        text = f"{type(leaf).__name__}: {leaf}"
        counts[text] = counts.get(text, 0) + 1
    return "; ".join(text if n == 1 else f"{text} (x{n})" for text, n in counts.items())


# --- statistics ----------------------------------------------------------------------


@attrs.frozen
class MonitorStatistics:
    """A snapshot of a Monitor (see :meth:`Monitor.statistics`).

    ``loop_lag_last`` / ``loop_lag_max`` are the event-loop lag the watchdog measured
    last and at most, in seconds.

    Example::

        s = monitor.statistics()
        print(s.statuses, s.restarts, f"max lag {s.loop_lag_max:.3f}s")
    """

    statuses: Mapping[str, WorkerStatus]
    restarts: int
    failures: int
    loop_lag_last: float
    loop_lag_max: float
    stopping: bool


# --- configuration -------------------------------------------------------------------


def _instance_names(name: str, count: int) -> list[str]:
    return [name] if count == 1 else [f"{name}-{i}" for i in range(count)]


def _build(factory: WorkerFactory, index: int, name: str) -> Worker:
    worker = factory(index)
    if not isinstance(worker, Worker):
        raise TypeError(
            f"worker {name!r}: the factory must return a turret.Worker, got "
            f"{type(worker).__name__}; e.g. lambda index: WorkerBuilder('w').backend(b)"
            ".build(handler)"
        )
    return worker


def _check_factory(factory: object) -> None:
    if isinstance(factory, Worker):
        raise TypeError(
            f"register a factory, not a built worker ({factory!r}): a worker runs once, so the "
            "Monitor needs lambda index: builder.build(handler) to start a fresh one"
        )
    if not callable(factory):
        raise TypeError(f"a worker factory must be callable as factory(index), got {factory!r}")


def _check_count(count: int) -> None:
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")


def _positive(what: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{what} must be > 0 seconds, got {value!r}")
    return float(value)


@attrs.define(eq=False)
class _Registration:
    name: str
    factory: WorkerFactory
    count: int
    policy: RestartPolicy | None
    first: Worker | None


@attrs.define(eq=False)
class Monitor:
    """Runs and supervises workers in one nursery: restarts, health, signals, shutdown.

    Configure with chained calls, then ``await monitor.run()`` (or
    ``run_with_signal()``, or ``async with monitor.open() as handle:`` for dynamic
    control). A Monitor can run more than once; each run builds fresh workers.

    Example::

        monitor = (
            Monitor()
            .register(lambda i: WorkerBuilder(f"mail-{i}").backend(b).build(send), count=4,
                      name="mail")
            .restart_policy(RestartWithBackoff(max_restarts=5, within=60))
            .shutdown_timeout(30)
            .on_event(print)
        )
        await monitor.run_with_signal()
    """

    name: str = "monitor"
    _registrations: list[_Registration] = attrs.field(factory=list, init=False)
    _callbacks: list[Callable[[Event], object]] = attrs.field(factory=list, init=False)
    _shutdown_timeout: float = attrs.field(default=30.0, init=False)
    _policy: RestartPolicy = attrs.field(factory=RestartWithBackoff, init=False)
    _unhealthy_after: float = attrs.field(default=60.0, init=False)
    _check_every: float | None = attrs.field(default=None, init=False)
    _lag_interval: float = attrs.field(default=1.0, init=False)
    _lag_threshold: float = attrs.field(default=0.1, init=False)
    _current: MonitorHandle | None = attrs.field(default=None, init=False)
    _metrics_server: MetricsServer | None = attrs.field(default=None, init=False)

    # --- configuration ---------------------------------------------------------------

    def register(
        self,
        factory: WorkerFactory,
        count: int = 1,
        *,
        name: str | None = None,
        restart: RestartPolicy | ShouldRestart | None = None,
    ) -> Monitor:
        """Supervise ``count`` workers built by ``factory(index)`` (called again on restart).

        ``factory(0)`` is called at once to check that it returns a :class:`Worker` and,
        when ``name`` is not given, to take the worker's name. ``restart`` overrides the
        Monitor's :meth:`restart_policy` for these workers.

        Example::

            monitor.register(lambda i: WorkerBuilder(f"img-{i}").backend(b).build(resize),
                             count=3, name="img")     # img-0, img-1, img-2
        """
        _check_factory(factory)
        _check_count(count)
        first = _build(factory, 0, name or "?")
        reg_name = name if name is not None else first.name
        taken = {
            n for r in self._registrations for n in (r.name, *_instance_names(r.name, r.count))
        }
        if reg_name in taken or any(n in taken for n in _instance_names(reg_name, count)):
            raise ValueError(
                f"a worker named {reg_name!r} is already registered; pass name=... to register()"
            )
        self._registrations.append(
            _Registration(
                reg_name, factory, count, None if restart is None else as_policy(restart), first
            )
        )
        return self

    def on_event(self, callback: Callable[[Event], object]) -> Monitor:
        """Call ``callback(event)`` for every worker's events and the Monitor's own.

        A raising callback is logged, never fatal.

        Example::

            monitor.on_event(lambda event: print(type(event).__name__, event.worker))
        """
        self._callbacks.append(callback)
        return self

    def shutdown_timeout(self, seconds: float) -> Monitor:
        """How long a stopping worker may drain before its handlers are cancelled
        (default 30 s).

        Their tasks are released to the backend without consuming an attempt; settles
        under way finish. A worker still running after as long again (a backend that
        does not answer) is cancelled outright. Applies to shutdown, ``kill``,
        ``restart`` and unhealthy workers.

        Example::

            monitor.shutdown_timeout(10)
        """
        self._shutdown_timeout = _positive("shutdown_timeout", seconds)
        return self

    def restart_policy(self, policy: RestartPolicy | ShouldRestart) -> Monitor:
        """The default policy for failed workers (default :class:`RestartWithBackoff()`).

        Example::

            monitor.restart_policy(lambda ctx, error, attempt: attempt <= 3)
        """
        self._policy = as_policy(policy)
        return self

    def unhealthy_after(self, seconds: float, *, check_every: float | None = None) -> Monitor:
        """Mark a worker Unhealthy when a backend call makes no progress for ``seconds``.

        The check runs every ``check_every`` seconds (default ``seconds / 4``). An
        Unhealthy worker is stopped (cancelled after the shutdown timeout) and handed to
        the restart policy with a :class:`WorkerStalled` error. A worker's idle wait for
        work counts only past its ``poll_interval``. Default 60 s.

        Example::

            monitor.unhealthy_after(30)
        """
        self._unhealthy_after = _positive("unhealthy_after", seconds)
        self._check_every = None if check_every is None else _positive("check_every", check_every)
        return self

    def serve_metrics(
        self,
        host: str = "127.0.0.1",
        port: int = 9464,
        *,
        metrics: Metrics | None = None,
        interval: float = 15.0,
    ) -> Monitor:
        """Serve Prometheus metrics at ``http://{host}:{port}/metrics`` while running.

        Feeds a :class:`~turret.observability.Metrics` (default: one on the global
        registry) with every event, refreshes the backends' queue depth every
        ``interval`` seconds, and runs the endpoint in the Monitor's nursery. Needs
        ``pip install 'turret[metrics]'``; see ``docs/observability.md``.

        Example::

            monitor.serve_metrics(port=9464)
            url = await monitor.metrics_server.wait_started()   # once running
        """
        from ..observability._server import MetricsServer

        server = MetricsServer(metrics, host=host, port=port, interval=interval)
        self._metrics_server = server
        self._callbacks.append(server.metrics.on_event)
        return self

    @property
    def metrics_server(self) -> MetricsServer | None:
        """The endpoint :meth:`serve_metrics` configured (its ``url`` once started)."""
        return self._metrics_server

    def lag_watchdog(self, interval: float = 1.0, threshold: float = 0.1) -> Monitor:
        """Measure event-loop lag every ``interval``; report lags >= ``threshold`` as events.

        Example::

            monitor.lag_watchdog(interval=0.5, threshold=0.05)
        """
        self._lag_interval = _positive("interval", interval)
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0 seconds, got {threshold!r}")
        self._lag_threshold = float(threshold)
        return self

    # --- running ---------------------------------------------------------------------

    def statistics(self) -> MonitorStatistics:
        """A snapshot of the current (or last) run.

        Example::

            assert monitor.statistics().restarts == 0
        """
        if self._current is not None:
            return self._current.statistics()
        statuses = {
            n: WorkerStatus.CREATED
            for r in self._registrations
            for n in _instance_names(r.name, r.count)
        }
        return MonitorStatistics(statuses, 0, 0, 0.0, 0.0, False)

    async def run(
        self, *, task_status: trio.TaskStatus[MonitorHandle] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run every registered worker until all have finished or a shutdown completes.

        ``nursery.start(monitor.run)`` returns the :class:`MonitorHandle`. Raises
        :class:`MonitorError` when the restart policy gave up on any worker.

        Example::

            async with trio.open_nursery() as nursery:
                handle = await nursery.start(monitor.run)
                ...
                handle.shutdown()
        """
        async with self.open() as handle:
            task_status.started(handle)

    async def run_with_signal(
        self,
        signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
        *,
        task_status: trio.TaskStatus[MonitorHandle] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like :meth:`run`; SIGINT or SIGTERM starts a graceful shutdown, a second forces it.

        A forced shutdown cancels every worker at once; their in-flight tasks are released
        to the backend, attempts unchanged. Must run in the main thread.

        Example::

            trio.run(monitor.run_with_signal)
        """
        with trio.open_signal_receiver(*signals) as received:
            async with self.open() as handle:
                handle._spawn(_on_signals, received, handle)
                task_status.started(handle)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[MonitorHandle]:
        """Run the Monitor for the duration of the block, with a handle for dynamic control.

        As with a nursery, leaving the block waits until every worker has finished: call
        ``handle.shutdown()`` first. If the block raises, the workers are cancelled (their
        in-flight tasks go back to the backend). Raises :class:`MonitorError` at the end
        when the restart policy gave up on any worker.

        Example::

            async with monitor.open() as handle:
                handle.add("extra", lambda i: builder.build(handler), count=2)
                ...
                handle.shutdown()
        """
        handle = MonitorHandle(self)
        self._current = handle
        async with trio.open_nursery() as nursery:
            handle._nursery = nursery
            await nursery.start(handle._housekeeping)
            for reg in self._registrations:
                first, reg.first = reg.first, None
                handle._add(reg.name, reg.factory, reg.count, reg.policy, first)
            yield handle
            handle._body_done = True
            handle._changed()
        handle._raise_failures()


async def _on_signals(received: AsyncIterator[int], handle: MonitorHandle) -> None:
    async for signum in received:
        name = signal.Signals(signum).name
        if not handle.stopping:
            log.warning("%s received: shutting down gracefully (send it again to force)", name)
            handle.shutdown()
        else:
            log.warning("%s received again: forcing the shutdown", name)
            handle.shutdown(force=True)


# --- runtime -------------------------------------------------------------------------


class _Started:
    """A ``task_status`` for calling ``worker.run`` directly: reports the start."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def started(self, value: None = None) -> None:
        self._callback()


@attrs.define(eq=False)
class _Slot:
    name: str
    index: int
    factory: WorkerFactory
    policy: RestartPolicy
    next_worker: Worker | None = None
    worker: Worker | None = None
    status: WorkerStatus = WorkerStatus.CREATED
    restart_times: list[float] = attrs.field(factory=list)
    stall: WorkerStalled | None = None
    error: Exception | None = None
    intent: str | None = None
    scope: trio.CancelScope | None = None
    wake: trio.Event = attrs.field(factory=trio.Event)
    finished: bool = False


class MonitorHandle:
    """Control over a running Monitor: add, restart, kill, inspect, shut down.

    Get it from ``async with monitor.open() as handle:`` or
    ``handle = await nursery.start(monitor.run)``.

    Example::

        async with monitor.open() as handle:
            handle.add("reports", lambda i: reports.build(render))
            assert handle.status("reports") is WorkerStatus.STARTING
            handle.restart("reports")
            handle.shutdown()
            await handle.wait()
    """

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._slots: dict[str, _Slot] = {}
        self._groups: dict[str, list[str]] = {}
        self._nursery: trio.Nursery | None = None
        self._house: trio.Nursery | None = None
        self._house_scope = trio.CancelScope()
        self._change = trio.Event()
        self._body_done = False
        self._stopping = False
        self._forced = False
        self._failures: list[_Slot] = []
        self._restarts = 0
        self._lag_last = 0.0
        self._lag_max = 0.0

    def __repr__(self) -> str:
        return f"<MonitorHandle {self._monitor.name!r} workers={len(self._slots)}>"

    # --- public ----------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once :meth:`shutdown` was called (or a worker was given up on)."""
        return self._stopping

    def add(
        self,
        name: str,
        factory: WorkerFactory,
        count: int = 1,
        *,
        restart: RestartPolicy | ShouldRestart | None = None,
    ) -> list[str]:
        """Start supervising ``count`` more workers; returns their instance names.

        ``factory(0)`` is called at once to check it. Refused once shutting down.

        Example::

            names = handle.add("thumbs", lambda i: thumbs.build(make_thumb), count=2)
            assert names == ["thumbs-0", "thumbs-1"]
        """
        _check_factory(factory)
        _check_count(count)
        if self._stopping:
            raise RuntimeError(
                f"monitor {self._monitor.name!r} is shutting down; cannot add {name!r}"
            )
        if not name or not isinstance(name, str):
            raise ValueError(f"a worker name must be a non-empty string, got {name!r}")
        taken = set(self._slots) | set(self._groups)
        if name in taken or any(n in taken for n in _instance_names(name, count)):
            raise ValueError(f"a worker named {name!r} is already supervised; choose another name")
        first = _build(factory, 0, name)
        policy = None if restart is None else as_policy(restart)
        return self._add(name, factory, count, policy, first)

    def restart(self, name: str) -> None:
        """Stop gracefully (cancel after the shutdown timeout), then start a fresh worker.

        A manual restart does not ask the restart policy and does not count against it.
        ``name`` is an instance or a registration name. A Dead or finished worker is
        started again.

        Example::

            handle.restart("mail")        # every instance of "mail"
        """
        for slot in self._resolve(name):
            if slot.finished:
                if self._stopping:
                    raise RuntimeError(
                        f"monitor {self._monitor.name!r} is shutting down; cannot restart"
                    )
                slot.finished = False
                slot.intent = None
                self._start_slot(slot)
                continue
            slot.intent = "restart"
            self._stop_slot(slot)

    def kill(self, name: str) -> None:
        """Stop gracefully (cancel after the shutdown timeout) and never restart: Dead.

        ``name`` is an instance or a registration name.

        Example::

            handle.kill("mail-1")
            await handle.wait_status("mail-1", WorkerStatus.DEAD)
        """
        for slot in self._resolve(name):
            if not slot.finished:
                slot.intent = "kill"
                self._stop_slot(slot)

    def status(self, name: str) -> WorkerStatus:
        """The :class:`WorkerStatus` of one worker instance.

        Example::

            assert handle.status("mail") is WorkerStatus.HEALTHY
        """
        try:
            return self._slots[name].status
        except KeyError:
            raise KeyError(
                f"no worker instance named {name!r}; known: {sorted(self._slots)}"
            ) from None

    def statuses(self) -> dict[str, WorkerStatus]:
        """Every worker instance's status, by name (a snapshot).

        Example::

            unhealthy = [n for n, s in handle.statuses().items() if s is WorkerStatus.UNHEALTHY]
        """
        return {name: slot.status for name, slot in self._slots.items()}

    def worker(self, name: str) -> Worker | None:
        """The current :class:`Worker` of an instance (``None`` before the first build).

        Example::

            handle.worker("mail").context.pause()
        """
        self.status(name)
        return self._slots[name].worker

    def statistics(self) -> MonitorStatistics:
        """A frozen snapshot: statuses, restarts, failures and event-loop lag.

        Example::

            print(handle.statistics().loop_lag_max)
        """
        return MonitorStatistics(
            statuses=self.statuses(),
            restarts=self._restarts,
            failures=len(self._failures),
            loop_lag_last=self._lag_last,
            loop_lag_max=self._lag_max,
            stopping=self._stopping,
        )

    def shutdown(self, *, force: bool = False) -> None:
        """Stop every worker gracefully; cancel what is left after the shutdown timeout.

        ``force=True`` cancels every worker at once. Either way, cancelled workers release
        their in-flight tasks to the backend without consuming an attempt. Idempotent.

        Example::

            handle.shutdown()
            await handle.wait()
        """
        if not self._stopping:
            log.info("monitor %s: shutting down", self._monitor.name)
        self._stopping = True
        self._forced = self._forced or force
        for slot in self._slots.values():
            self._stop_slot(slot)
        self._changed()

    async def wait(self) -> None:
        """Wait until every worker has finished (after a shutdown, or on their own).

        Example::

            handle.shutdown()
            await handle.wait()
        """
        while not all(slot.finished for slot in self._slots.values()):
            await self._change.wait()

    async def wait_status(self, name: str, status: WorkerStatus) -> None:
        """Wait until worker instance ``name`` has ``status``.

        Example::

            await handle.wait_status("mail", WorkerStatus.HEALTHY)
        """
        while self.status(name) is not status:
            await self._change.wait()

    # --- internals -------------------------------------------------------------------

    def _spawn(self, fn: Callable[..., Any], *args: object) -> None:
        assert self._house is not None
        self._house.start_soon(fn, *args)

    async def _housekeeping(self, *, task_status: trio.TaskStatus[None]) -> None:
        with self._house_scope:
            async with trio.open_nursery() as nursery:
                self._house = nursery
                nursery.start_soon(self._watchdog)
                if self._monitor._metrics_server is not None:
                    await nursery.start(self._monitor._metrics_server.run, self)
                task_status.started()
        self._house = None

    def _resolve(self, name: str) -> list[_Slot]:
        if name in self._groups:
            return [self._slots[n] for n in self._groups[name]]
        if name in self._slots:
            return [self._slots[name]]
        raise KeyError(
            f"no worker named {name!r}; known: {sorted(set(self._slots) | set(self._groups))}"
        )

    def _add(
        self,
        name: str,
        factory: WorkerFactory,
        count: int,
        policy: RestartPolicy | None,
        first: Worker | None,
    ) -> list[str]:
        names = _instance_names(name, count)
        self._groups[name] = names
        for index, instance in enumerate(names):
            slot = _Slot(
                name=instance,
                index=index,
                factory=factory,
                policy=policy or self._monitor._policy,
                next_worker=first if index == 0 else None,
            )
            self._slots[instance] = slot
            self._start_slot(slot)
        self._changed()
        return names

    def _start_slot(self, slot: _Slot) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._run_slot, slot, name=f"turret.monitor:{slot.name}")

    def _stop_slot(self, slot: _Slot) -> None:
        slot.wake.set()
        if slot.worker is not None:
            slot.worker.context.stop()
        if self._forced and slot.scope is not None:
            slot.scope.cancel()

    def _emit(self, event: Event) -> None:
        for cb in self._monitor._callbacks:
            try:
                cb(event)
            except Exception:
                log.exception("on_event callback %r raised on %r; the monitor goes on", cb, event)

    def _set_status(self, slot: _Slot, status: WorkerStatus) -> None:
        previous, slot.status = slot.status, status
        if previous is status:
            return
        log.info("worker %s: %s -> %s", slot.name, previous.value, status.value)
        self._emit(WorkerStatusChanged(slot.name, trio.current_time(), previous, status))
        self._changed()

    def _changed(self) -> None:
        self._change.set()
        self._change = trio.Event()
        if self._body_done and all(slot.finished for slot in self._slots.values()):
            self._house_scope.cancel()

    def _raise_failures(self) -> None:
        if not self._failures:
            return
        parts = ", ".join(f"{s.name} ({_describe(s.error)})" for s in self._failures if s.error)
        raise MonitorError(
            f"monitor {self._monitor.name!r}: {len(self._failures)} worker(s) failed: {parts}",
            [s.error for s in self._failures if s.error is not None],
            [s.name for s in self._failures],
        )

    def _fail(self, slot: _Slot, error: Exception) -> None:
        slot.error = error
        self._failures.append(slot)

    async def _run_slot(self, slot: _Slot) -> None:
        try:
            while True:
                if self._stopping and slot.status is WorkerStatus.CREATED:
                    self._set_status(slot, WorkerStatus.COMPLETED)  # never started
                    return
                if self._stopping or slot.intent == "kill":
                    if slot.intent == "kill":
                        self._set_status(slot, WorkerStatus.DEAD)
                    return  # a pending restart is abandoned; the failure was reported
                slot.intent = None
                slot.stall = None
                self._set_status(slot, WorkerStatus.STARTING)
                error = await self._run_once(slot)
                if slot.intent == "kill":
                    if error is not None and not isinstance(error, WorkerStalled):
                        self._fail(slot, error)
                    self._set_status(slot, WorkerStatus.DEAD)
                    return
                if error is None:
                    if slot.intent == "restart" and not self._stopping:
                        self._restarts += 1
                        continue
                    self._set_status(slot, WorkerStatus.COMPLETED)
                    return
                if not await self._handle_failure(slot, error):
                    return
        finally:
            slot.finished = True
            slot.scope = None
            self._changed()

    async def _handle_failure(self, slot: _Slot, error: Exception) -> bool:
        """Ask the policy; True when a restart follows (after its delay)."""
        log.error("worker %s failed: %s", slot.name, _describe(error), exc_info=error)
        if self._stopping:
            self._fail(slot, error)  # failed while shutting down: reported, never restarted
            self._set_status(slot, WorkerStatus.DEAD)
            return False
        if slot.status is not WorkerStatus.UNHEALTHY:
            self._set_status(slot, WorkerStatus.FAILED)
        now = trio.current_time()
        ctx = RestartContext(
            name=slot.name,
            index=slot.index,
            worker=slot.worker.context if slot.worker is not None else WorkerContext(slot.name),
            restart_times=tuple(slot.restart_times),
        )
        attempt = len(slot.restart_times) + 1
        if not slot.policy.should_restart(ctx, error, attempt):
            log.error("worker %s: the restart policy gave up (attempt %d)", slot.name, attempt)
            self._fail(slot, error)
            self._set_status(slot, WorkerStatus.DEAD)
            self.shutdown()
            return False
        delay = slot.policy.delay(ctx, attempt)
        slot.restart_times.append(now)
        self._restarts += 1
        log.warning("worker %s: restart %d in %.3gs", slot.name, attempt, delay)
        self._emit(WorkerRestarting(slot.name, now, attempt, delay, error))
        with trio.move_on_after(delay):
            await slot.wake.wait()
        slot.wake = trio.Event()
        return True

    async def _run_once(self, slot: _Slot) -> Exception | None:
        """Build and run one instance; its error, a stall, or None for a clean end."""
        try:
            worker = slot.next_worker or _build(slot.factory, slot.index, slot.name)
        except Exception as exc:
            return exc
        finally:
            slot.next_worker = None
        slot.worker = worker
        if self._monitor._callbacks:
            worker.context._emitter.callbacks.append(self._emit)
        scope = slot.scope = trio.CancelScope()
        if self._stopping or slot.intent is not None:
            worker.context.stop()
            if self._forced:
                scope.cancel()
        error: Exception | None = None
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, slot, worker, scope)
                    try:
                        await worker.run(
                            task_status=_Started(
                                lambda: self._set_status(slot, WorkerStatus.HEALTHY)
                            )
                        )
                    except Exception as exc:
                        error = exc
                    finally:
                        nursery.cancel_scope.cancel()
        except Exception as exc:
            error = exc
        if scope.cancelled_caught:
            log.warning("worker %s: cancelled; in-flight tasks were released", slot.name)
        return error if error is not None else slot.stall

    async def _watch(self, slot: _Slot, worker: Worker, scope: trio.CancelScope) -> None:
        """Health checks while running; after stop(), cancel at the shutdown timeout."""
        ctx = worker.context
        monitor = self._monitor
        limit = monitor._unhealthy_after
        every = monitor._check_every or limit / 4
        with trio.CancelScope() as health:
            ctx_stop = ctx.wait_stop_requested

            async def cancel_on_stop() -> None:
                await ctx_stop()
                health.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_on_stop)
                while True:
                    await trio.sleep(every)
                    since = ctx.busy_since
                    now = trio.current_time()
                    if since is not None and now - since > limit:
                        stalled = now - since
                        slot.stall = WorkerStalled(slot.name, stalled, limit)
                        log.warning("%s; stopping it", slot.stall)
                        self._set_status(slot, WorkerStatus.UNHEALTHY)
                        self._emit(WorkerUnhealthy(slot.name, now, stalled))
                        ctx.stop()
        timeout = monitor._shutdown_timeout
        await trio.sleep(timeout)
        # First the handlers (their tasks are released, settles under way finish), then,
        # if the worker still has not ended (a backend that does not answer), all of it.
        worker._cancel_work(f"did not stop within {timeout:g}s")
        await trio.sleep(timeout)
        log.warning("worker %s still running %gs later; cancelling it", slot.name, timeout)
        scope.cancel()

    async def _watchdog(self) -> None:
        monitor = self._monitor
        interval = monitor._lag_interval
        while True:
            start = trio.current_time()
            await trio.sleep(interval)
            now = trio.current_time()
            lag = max(0.0, now - start - interval)
            self._lag_last = lag
            self._lag_max = max(self._lag_max, lag)
            if lag >= monitor._lag_threshold and lag > 0:
                log.warning("event loop lag: %.3fs (something blocked the loop)", lag)
                self._emit(EventLoopLag(monitor.name, now, lag))
