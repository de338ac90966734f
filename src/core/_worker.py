"""``WorkerBuilder`` and ``Worker``: one fetch loop over one backend, running a stack.

The loop reserves a slot (design.md §3), registers it with the :class:`~._fetch.Fetcher`
and spawns a *runner* that owns the reservation: it claims the slot's task, runs it,
gives the reservation back and hands the ack to the settler. While claims come back full
(:attr:`Fetcher.steady <turret.core._fetch.Fetcher.steady>`), a runner then takes its
next reservation itself, without waiting (``ready_nowait``), and goes on with the next
task in the same trio task: a busy worker spawns no trio task per task, and a slot that
frees is registered in the step that freed it and claimed for one scheduler batch later,
in one claim with the slots freed beside it, rather than two batches later (the loop's
wake-up, then the new task's first step). A runner that cannot go on (the
queue ran dry, a ramp-up is under way, the stack is not ready at once, the worker is
paused or stopping, or a layer of the stack neither forwards ``ready()`` unchanged
(``forwards_ready``) nor offers ``ready_nowait``) ends, and the loop, the only place
that *waits* for readiness, takes over again. Each task runs in its own copy of the
runner's context (:func:`~._isolate.isolated`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

from . import _events as ev
from ._ack import CANCEL_REQUESTED, LOST, SHUTDOWN, Acknowledge, Running
from ._backend import Backend, Renewal
from ._backoff import Backoff, ExponentialBackoff
from ._context import WorkerContext, WorkerState, _current
from ._fetch import Fetcher, Slot
from ._handler import build_handler
from ._isolate import isolated
from ._nowait import forwarded, nowait_reservation
from ._readiness import Readiness, Tracker
from ._service import Layer, Service, Stack
from ._task import Task

__all__ = ["Worker", "WorkerBuilder"]

log = logging.getLogger("turret.worker")


class Worker:
    """One fetch loop over one backend queue, running a stacked service.

    Build it with :class:`WorkerBuilder`. A worker runs once; a Monitor builds a fresh
    one to restart.

    Example::

        worker = WorkerBuilder("mail").backend(backend).concurrency(20).build(send_email)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            ...
            worker.context.stop()       # graceful: drains in-flight work
    """

    def __init__(
        self,
        *,
        name: str,
        backend: Backend,
        queue: str,
        service: Acknowledge,
        context: WorkerContext,
        running: dict[int, Running],
        lease_ttl: float,
        heartbeat_interval: float,
        poll_interval: float,
        grace_period: float | None,
        max_batch: int,
        concurrency: int,
    ) -> None:
        self.name = name
        self.backend = backend
        self.queue = queue
        self.service = service
        self.context = context
        self._running = running
        self.lease_ttl = lease_ttl
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.grace_period = grace_period
        self.owner = f"{name}@{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._fetcher = Fetcher(
            backend,
            queue,
            owner=self.owner,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            max_batch=max_batch,
            context=context,
            on_idle=lambda: context._emit(ev.WorkerIdle),
        )
        self._started = False
        self._loop_scope = trio.CancelScope()
        self._concurrency = concurrency
        #: Runners go on only over a stack that reserves without waiting natively: a
        #: generic try (one checkpoint in a cancel scope) would cost more than it saves.
        self._runners_go_on = _reserves_natively(service.inner)
        self._runners = 0  # each holds at most one reservation
        self._ended = 0  # runners that have ended, ever
        self._room = trio.lowlevel.ParkingLot()  # the loop, while every runner is live

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} queue={self.queue!r} state={self.context.state.value}>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`WorkerContext.stop` (graceful) or cancellation.

        On a graceful stop the worker stops claiming and waits for in-flight work
        including its settle. After ``grace_period`` (if set) it cancels the handlers
        still running and releases their tasks without consuming an attempt; settles
        already under way finish. If the backend has not answered after a second
        ``grace_period``, everything left is cancelled.
        """
        if self._started:
            raise RuntimeError(f"worker {self.name!r} has already run; build a new one")
        self._started = True
        ctx = self.context
        _current.set(ctx)  # inherited by every task this worker spawns
        ctx._set_state(WorkerState.PAUSED if ctx.paused else WorkerState.RUNNING)
        ctx._emit(ev.WorkerStarted)
        try:
            async with trio.open_nursery() as services:
                services.start_soon(self._heartbeat_loop)
                settler = self.service.settler
                # The settler outlives the tasks: it stores the acks they handed over.
                async with trio.open_nursery() as settling:
                    settling.start_soon(settler.run)
                    async with trio.open_nursery() as tasks:
                        services.start_soon(self._watch_stop, settling)
                        task_status.started()
                        with self._loop_scope:
                            while not ctx.stopping:
                                # Wait for work holding nothing, then reserve capacity;
                                # only a reserved slot claims a task (design.md §3).
                                await self._fetcher.wait_for_work()
                                reservation = await self._reserve()
                                slot = self._fetcher.slot()
                                self._runners += 1
                                tasks.start_soon(self._runner, reservation, slot)
                    settler.close()
                services.cancel_scope.cancel()
        finally:
            ctx._set_state(WorkerState.STOPPED)
            ctx._emit(ev.WorkerStopped)
            ctx._emitter.close_streams()

    async def run_until(self, trigger: trio.Event | Awaitable[object]) -> None:
        """Run until ``trigger`` (a ``trio.Event`` or any awaitable) fires, then stop gracefully.

        Example::

            done = trio.Event()
            await worker.run_until(done)     # another task calls done.set()
        """

        async def watch() -> None:
            if isinstance(trigger, trio.Event):
                await trigger.wait()
            else:
                await trigger
            self.context.stop()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await self.run()
            nursery.cancel_scope.cancel()

    @asynccontextmanager
    async def stream(
        self, buffer: int = 1024
    ) -> AsyncIterator[trio.MemoryReceiveChannel[ev.Event]]:
        """Receive the worker's events; the channel ends when the worker stops.

        Events are never allowed to block the worker: past ``buffer`` unread events,
        new ones are dropped and counted in ``statistics().events_dropped``.

        Example::

            async with worker.stream() as events:
                async for event in events:
                    print(event)
        """
        send, recv = trio.open_memory_channel[ev.Event](buffer)
        self.context._emitter.streams.append(send)
        try:
            async with recv:
                yield recv
        finally:
            if send in self.context._emitter.streams:
                self.context._emitter.streams.remove(send)
            send.close()

    # --- internals ------------------------------------------------------------------

    async def _reserve(self) -> AbstractAsyncContextManager[None]:
        """The next runner's reservation. Over a stack whose runners go on: at once if
        the stack is ready; else, while every runner is live, wait for one to end rather
        than for readiness (a slot a runner frees goes to that runner, not to the loop,
        which a waiter in the stack would be handed first); else wait for readiness, as
        the loop always does over other stacks."""
        while self._runners_go_on:
            ended = self._ended
            held = await self._reserve_nowait()
            if held is not None:
                return held
            if self._runners < self._concurrency:
                break
            if self._ended == ended:  # none ended while we tried: wait for one
                await self._room.park()
        reservation = self.service.ready()
        await reservation.__aenter__()
        return reservation

    async def _reserve_nowait(self) -> AbstractAsyncContextManager[None] | None:
        """The stack's reservation, entered, if it can be had without waiting (as
        ``enter_nowait``, without its wrapper: this is every task's path)."""
        reservation = nowait_reservation(self.service)
        try:
            await reservation.__aenter__()
        except trio.WouldBlock:
            return None
        return reservation

    async def _runner(self, reservation: AbstractAsyncContextManager[None], slot: Slot) -> None:
        """Run the slot's task, then, while claims come back full, take the next slot
        without waiting and run its task too (module docstring)."""
        fetcher = self._fetcher
        try:
            while True:
                await self._run_one(reservation, slot)
                # A stop closes the fetcher (not steady); a paused worker's Readiness
                # refuses a reservation without waiting.
                if not (self._runners_go_on and fetcher.steady):
                    return
                held = await self._reserve_nowait()
                if held is None:
                    return  # the loop waits for readiness, cancellably
                reservation = held
                slot = fetcher.slot(gather=True)
        finally:
            self._runners -= 1
            self._ended += 1
            self._room.unpark()

    async def _run_one(self, reservation: AbstractAsyncContextManager[None], slot: Slot) -> None:
        # The reservation is entered (design.md §3); this runner owns it from here and
        # always exits it, on cancellation too. The reservation covers the run, not the
        # settle: it is given back first, so the next task is claimed while this one's
        # ack is in flight.
        exc: BaseException | None = None
        run: Running | None = None
        try:
            task = await self._fetcher.next(slot)
            if task is not None:
                run = await isolated(self.service.run(task))
        except BaseException as e:
            exc = e
            raise
        finally:
            try:
                await reservation.__aexit__(type(exc) if exc else None, exc, None)
            except BaseException:
                if run is not None:  # the work is done: store its outcome all the same,
                    with trio.CancelScope(shield=True):  # not through a settler going away
                        await self.service.settle_now(run)
                raise
        if run is not None:
            await self.service.settle(run)

    async def _watch_stop(self, settling: trio.Nursery) -> None:
        await self.context.wait_stop_requested()
        self._fetcher.close()
        self._loop_scope.cancel()
        if self.grace_period is not None:
            await trio.sleep(self.grace_period)
            self._cancel_work(f"grace period of {self.grace_period:g}s over")
            # A backend that does not answer must not hold the stop for ever: the
            # releases and settles get as long again, then everything is cancelled.
            await trio.sleep(self.grace_period)
            settling.cancel_scope.cancel()

    def _cancel_work(self, why: str) -> None:
        """Cancel the work, never the bookkeeping: each running handler's own scope is
        cancelled and its task released (no attempt used); settles under way finish."""
        runs = [run for run in self._running.values() if not run.finished]
        if runs:
            log.warning("worker %s: %s; releasing %d task(s)", self.name, why, len(runs))
        for run in runs:
            run.cancel(SHUTDOWN)

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval)
            runs = list(self._running.values())
            if runs:
                with self.context._backend_call():
                    verdicts = await self.backend.renew(
                        [(r.ctx.id, r.token) for r in runs], lease_ttl=self.lease_ttl
                    )
                for run, verdict in zip(runs, verdicts, strict=True):
                    if verdict is Renewal.LOST:
                        run.cancel(LOST)
                    elif verdict is Renewal.CANCEL_REQUESTED:
                        run.cancel(CANCEL_REQUESTED)
            if self.context._emitter.active:
                self.context._emitter.emit(ev.Heartbeat(self.name, trio.current_time(), len(runs)))


def _reserves_natively(service: Any) -> bool:
    """True when every service from ``service`` down to the worker's :class:`Readiness`
    forwards ``ready()`` unchanged (``forwards_ready``) or offers ``ready_nowait``."""
    while True:
        service = forwarded(service)
        if isinstance(service, Readiness):
            return True
        if getattr(service, "ready_nowait", None) is None:
            return False
        service = getattr(service, "inner", None)
        if service is None:
            return False


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attr.name} must be > 0, got {value!r}")


@attrs.frozen
class WorkerBuilder:
    """Configures and builds a :class:`Worker`. Each method returns a new builder.

    The stack, outermost first: the backend's acknowledgement, then the user's layers
    (first ``.layer()`` outermost), then the core Readiness and Tracker, then the handler.

    Example::

        worker = (
            WorkerBuilder("mail")
            .backend(backend)
            .queue("mail")
            .layer(ConcurrencyLimitLayer(5))
            .data(SmtpPool())
            .concurrency(20)
            .on_event(print)
            .build(send_email)
        )
    """

    name: str
    _backend: Backend | None = None
    _queue: str = attrs.field(default="default")
    _layers: tuple[Layer[Task[Any], Any], ...] = ()
    _data: tuple[object, ...] = ()
    _concurrency: int = 10
    _callbacks: tuple[Callable[[ev.Event], object], ...] = attrs.field(default=())
    _lease_ttl: float = attrs.field(default=30.0, validator=_positive)
    _poll_interval: float = attrs.field(default=1.0, validator=_positive)
    _grace_period: float | None = attrs.field(default=None, validator=_positive)
    _backoff: Backoff = attrs.field(factory=ExponentialBackoff)
    _max_batch: int = 100

    def backend(self, backend: Backend) -> WorkerBuilder:
        """Where the worker claims tasks from (required)."""
        return attrs.evolve(self, backend=backend)

    def queue(self, queue: str) -> WorkerBuilder:
        """Which queue to claim from (default ``"default"``)."""
        return attrs.evolve(self, queue=queue)

    def layer(self, layer: Layer[Task[Any], Any]) -> WorkerBuilder:
        """Add a layer inside the ones already added (the first added is outermost)."""
        return attrs.evolve(self, layers=(*self._layers, layer))

    def data(self, obj: object) -> WorkerBuilder:
        """Register an object a handler receives through a ``Data[T]`` parameter."""
        return attrs.evolve(self, data=(*self._data, obj))

    def concurrency(self, n: int) -> WorkerBuilder:
        """How many tasks run at once (default 10)."""
        return attrs.evolve(self, concurrency=n)

    def on_event(self, callback: Callable[[ev.Event], object]) -> WorkerBuilder:
        """Call ``callback(event)`` for every event; a raising callback is only logged."""
        return attrs.evolve(self, callbacks=(*self._callbacks, callback))

    def lease_ttl(self, seconds: float) -> WorkerBuilder:
        """Lease length (default 30 s); the worker renews every third of it."""
        return attrs.evolve(self, lease_ttl=seconds)

    def poll_interval(self, seconds: float) -> WorkerBuilder:
        """Fallback polling when the backend cannot wake idle workers (default 1 s)."""
        return attrs.evolve(self, poll_interval=seconds)

    def grace_period(self, seconds: float | None) -> WorkerBuilder:
        """After ``stop()``, cancel the handlers still running after this long and release
        their tasks (no attempt used); settles under way get as long again to finish."""
        return attrs.evolve(self, grace_period=seconds)

    def backoff(self, backoff: Backoff) -> WorkerBuilder:
        """Delay schedule of the durable retry after a failure (default exponential)."""
        return attrs.evolve(self, backoff=backoff)

    def build(self, handler: Callable[..., Awaitable[Any]]) -> Worker:
        """Validate, resolve the handler's parameters, and stack the services."""
        if not self.name or not isinstance(self.name, str):
            raise ValueError("WorkerBuilder needs a non-empty name, e.g. WorkerBuilder('email')")
        if self._backend is None:
            raise ValueError(
                f"worker {self.name!r} has no backend; add .backend(MemoryBackend()) or another"
            )
        if not isinstance(self._concurrency, int) or self._concurrency < 1:
            raise ValueError(
                f"worker {self.name!r}: concurrency must be an int >= 1, got {self._concurrency!r}"
            )
        if not self._queue:
            raise ValueError(f"worker {self.name!r}: queue must be a non-empty string")
        context = WorkerContext(self.name)
        context._emitter.callbacks.extend(self._callbacks)
        data = {type(obj): obj for obj in self._data}
        handler_svc = build_handler(handler, codec=self._backend.codec, context=context, data=data)
        inner: Service[Task[Any], Any] = Readiness(
            Tracker(handler_svc, context), context, self._concurrency
        )
        inner = Stack(self._layers).layer(inner)
        running: dict[int, Running] = {}
        service = Acknowledge(
            inner, backend=self._backend, context=context, backoff=self._backoff, running=running
        )
        return Worker(
            name=self.name,
            backend=self._backend,
            queue=self._queue,
            service=service,
            context=context,
            running=running,
            lease_ttl=self._lease_ttl,
            heartbeat_interval=self._lease_ttl / 3,
            poll_interval=self._poll_interval,
            grace_period=self._grace_period,
            max_batch=self._max_batch,
            concurrency=self._concurrency,
        )
