"""The worker's handle: state, pause/resume/stop, counters and events."""

from __future__ import annotations

import contextvars
import enum
import logging
import math
from collections.abc import Callable

import attrs
import trio

from . import _events as ev

__all__ = ["WorkerContext", "WorkerState", "WorkerStatistics", "current_worker"]

log = logging.getLogger("turret.worker")


class WorkerState(enum.Enum):
    """A worker's life: Pending → Running ⇄ Paused → Stopping → Stopped."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"


@attrs.frozen
class WorkerStatistics:
    """A snapshot of a worker's counters (see :meth:`WorkerContext.statistics`).

    Example::

        s = worker.context.statistics()
        print(f"{s.succeeded} ok, {s.failed} failed, {s.in_flight} running")
    """

    name: str
    state: WorkerState
    in_flight: int
    claimed: int
    succeeded: int
    failed: int
    retried: int
    dead_lettered: int
    released: int
    lease_rejected: int
    events_dropped: int


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # called outside trio.run (e.g. pause() before the worker runs)
        return 0.0


class _Emitter:
    """Fans events out to callbacks and streams; a raising callback is logged, not fatal."""

    __slots__ = ("callbacks", "dropped", "streams")

    def __init__(self) -> None:
        self.callbacks: list[Callable[[ev.Event], object]] = []
        self.streams: list[trio.MemorySendChannel[ev.Event]] = []
        self.dropped = 0

    @property
    def active(self) -> bool:
        return bool(self.callbacks or self.streams)

    def emit(self, event: ev.Event) -> None:
        for cb in self.callbacks:
            try:
                cb(event)
            except Exception:
                log.exception("on_event callback %r raised on %r; the worker goes on", cb, event)
        for send in self.streams:
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def close_streams(self) -> None:
        for send in self.streams:
            send.close()
        self.streams.clear()


@attrs.define(eq=False)
class WorkerContext:
    """A worker's handle: name, state, pause / resume / stop, and counters.

    A handler can ask for it by annotation to control its own worker.

    Example::

        async def handler(n: int, worker: WorkerContext) -> None:
            if n < 0:
                worker.pause()          # stop claiming until somebody resumes

        worker.context.stop()           # graceful: drain in-flight work, then return

    ``last_progress`` is when the worker's own loops last finished a backend call and
    :attr:`busy_since` tells whether one is outstanding: a Monitor's health signal.
    """

    name: str
    _state: WorkerState = attrs.field(default=WorkerState.PENDING, alias="_state")
    _emitter: _Emitter = attrs.field(factory=_Emitter, alias="_emitter")
    _resumed: trio.Event = attrs.field(factory=trio.Event, alias="_resumed")
    _stop_requested: trio.Event = attrs.field(factory=trio.Event, alias="_stop_requested")
    _paused: bool = attrs.field(default=False, alias="_paused")
    in_flight: int = 0
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    lease_rejected: int = 0
    last_progress: float = 0.0
    _calls: list[float] = attrs.field(factory=list, alias="_calls")

    @property
    def busy_since(self) -> float | None:
        """When the oldest unfinished backend call of the worker's own loops became due.

        The fetch loop (claim, release, wait for work) and the lease heartbeat report their
        backend calls here; ``None`` while none is outstanding. A Monitor marks a worker
        whose call has been outstanding for too long as unhealthy.

        Example::

            since = worker.context.busy_since
            stalled = 0.0 if since is None else trio.current_time() - since
        """
        return min(self._calls, default=None)

    def _backend_call(self, allowance: float = 0.0) -> _BackendCall:
        """Track one backend call; ``allowance``: how long it may block by design."""
        return _BackendCall(self, allowance)

    @property
    def state(self) -> WorkerState:
        """The current :class:`WorkerState`."""
        return self._state

    @property
    def paused(self) -> bool:
        """True between ``pause()`` and ``resume()``."""
        return self._paused

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called."""
        return self._stop_requested.is_set()

    def pause(self) -> None:
        """Stop claiming new tasks; in-flight ones go on. Idempotent."""
        if self._paused or self.stopping:
            return
        self._paused = True
        self._resumed = trio.Event()
        if self._state is WorkerState.RUNNING:
            self._state = WorkerState.PAUSED
        self._emit(ev.WorkerPaused)

    def resume(self) -> None:
        """Claim again after :meth:`pause`. Idempotent."""
        if not self._paused:
            return
        self._paused = False
        self._resumed.set()
        if self._state is WorkerState.PAUSED:
            self._state = WorkerState.RUNNING
        self._emit(ev.WorkerResumed)

    def stop(self) -> None:
        """Begin a graceful stop: no more claims, in-flight work drains. Idempotent."""
        if self.stopping:
            return
        self._stop_requested.set()
        self._resumed.set()  # wake anything parked on pause so it can see the stop
        if self._state in (WorkerState.RUNNING, WorkerState.PAUSED):
            self._state = WorkerState.STOPPING
        self._emit(ev.WorkerStopping)

    async def wait_stop_requested(self) -> None:
        """Wait until :meth:`stop` has been called."""
        await self._stop_requested.wait()

    async def wait_runnable(self) -> None:
        """Wait while paused; return at once when running. Parks forever once stopping."""
        while self._paused and not self.stopping:
            await self._resumed.wait()
        if self.stopping:
            await trio.sleep(math.inf)

    def statistics(self) -> WorkerStatistics:
        """A frozen snapshot of the counters."""
        return WorkerStatistics(
            name=self.name,
            state=self._state,
            in_flight=self.in_flight,
            claimed=self.claimed,
            succeeded=self.succeeded,
            failed=self.failed,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
            released=self.released,
            lease_rejected=self.lease_rejected,
            events_dropped=self._emitter.dropped,
        )

    def _emit(self, cls: Callable[[str, float], ev.Event]) -> None:
        if self._emitter.active:
            self._emitter.emit(cls(self.name, _now()))

    def _set_state(self, state: WorkerState) -> None:
        self._state = state


class _BackendCall:
    """Records an outstanding backend call for the Monitor's health check (hot path)."""

    __slots__ = ("context", "due")

    def __init__(self, context: WorkerContext, allowance: float) -> None:
        self.context = context
        self.due = _now() + allowance

    def __enter__(self) -> None:
        self.context._calls.append(self.due)

    def __exit__(self, *exc_info: object) -> None:
        self.context._calls.remove(self.due)
        self.context.last_progress = _now()


_current: contextvars.ContextVar[WorkerContext | None] = contextvars.ContextVar(
    "turret_current_worker", default=None
)


def current_worker() -> WorkerContext | None:
    """The :class:`WorkerContext` of the worker running the calling task, if any.

    Layers use it to see, for example, that the worker is stopping.

    Example::

        ctx = turret.current_worker()
        if ctx is not None and ctx.stopping:
            raise turret.Retry(after=0, reason="worker stopping")
    """
    return _current.get()
