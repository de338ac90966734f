"""The backend layer: decodes a claimed task, runs the stack, and settles the outcome.

It sits outermost in a worker's stack, so everything the user's layers do (timeouts,
in-process retries, load shedding) is *one stored attempt*, and the settle itself is
never cut short by a user's timeout.

Acks, the outcome of nearly every task, go through the worker's :class:`Settler`: the
task hands its ack over and its trio task ends; the settler stores every ack handed over
while its previous call was in flight (or in the same scheduler batch) with one
:meth:`Backend.ack_many <turret.Backend.ack_many>` call. Until its ack is stored a task
stays in the worker's running table, so the heartbeat keeps renewing its lease, and a
graceful stop waits for the settler (design.md §2: the ack is in-flight work for the
drain). The rare outcomes (retry, dead letter, release) are stored inline by the task.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from . import _events as ev
from ._backend import Backend
from ._backoff import Backoff
from ._context import WorkerContext
from ._errors import Abort, InvalidPayload, LeaseLost, Retry
from ._service import Service
from ._task import Task, TaskContext

__all__ = ["Acknowledge", "Running", "Settler"]

log = logging.getLogger("turret.worker")

#: Acks stored by one backend call at most (one statement, one script call).
MAX_ACKS = 1000
#: How long the settler's last call may take when the worker is cancelled (a forced
#: stop): the acks handed over and not yet sent are stored, unless the backend hangs.
LAST_CALL = 2.0

LOST = "lease lost"
CANCEL_REQUESTED = "cancel requested"
#: The worker's grace period (or the Monitor's shutdown timeout) ran out: the handler is
#: cancelled and its task released, without using an attempt.
SHUTDOWN = "shutting down"


class Running:
    """A task between claim and settle: what the heartbeat renews and may cancel, and,
    once the stack has returned, the outcome :meth:`Acknowledge.settle` stores."""

    __slots__ = ("cancel_reason", "ctx", "error", "finished", "result", "scope", "start", "token")

    def __init__(self, ctx: TaskContext, token: int) -> None:
        self.ctx = ctx
        self.token = token
        self.scope = trio.CancelScope()
        self.cancel_reason: str | None = None
        self.start = 0.0
        self.result: Any = None
        self.error: Exception | None = None
        self.finished = False  # the stack has returned: only the settle is left

    @property
    def succeeded(self) -> bool:
        """The stack returned a result (neither raised nor was cancelled): an ack."""
        return self.error is None and not self.scope.cancelled_caught

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.scope.cancel()


def describe(error: BaseException) -> str:
    """``Type: message`` (or the formatted traceback a CatchPanic layer attached)."""
    detail = getattr(error, "traceback_text", None)
    text = f"{type(error).__name__}: {error}"
    return f"{text}\n{detail}" if detail else text


class Settler:
    """Acks a worker's finished tasks in batches (see the module docstring).

    The worker runs :meth:`run` beside its tasks and calls :meth:`close` once no task can
    hand over an ack any more; :meth:`run` then stores what is left and returns.

    Example::

        async with trio.open_nursery() as nursery:
            await nursery.start(settler.run)
            settler.add(run, None)     # a finished task and its encoded result
            settler.close()            # run() returns once that ack is stored
    """

    __slots__ = ("_closed", "_pending", "_wakeup", "owner", "unsettled")

    def __init__(self, owner: Acknowledge) -> None:
        self.owner = owner
        self._pending: list[tuple[Running, bytes | None]] = []
        self._wakeup: trio.Event | None = None
        self._closed = False
        #: Acks handed over and not yet stored (each holds a lease but no reservation).
        self.unsettled = 0

    def add(self, run: Running, result: bytes | None) -> None:
        """Hand over one finished run and its encoded result, to be acked."""
        self._pending.append((run, result))
        self.unsettled += 1
        self._wake()

    def close(self) -> None:
        """No more acks will come: :meth:`run` returns once the pending ones are stored."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store acks as they come, one backend call at a time, until closed and drained.

        A backend error other than a refused token propagates: the worker fails, and the
        tasks of that call stay leased until their leases expire (at-least-once).
        """
        owner = self.owner
        task_status.started()
        try:
            while True:
                if not self._pending:
                    if self._closed:
                        return
                    self._wakeup = wakeup = trio.Event()
                    await wakeup.wait()
                    continue
                # Woken in the scheduler batch after the first add: every task that
                # finished in the batch before has handed its ack over too.
                batch, self._pending = self._pending[:MAX_ACKS], self._pending[MAX_ACKS:]
                with owner.context._backend_call():
                    await owner._store_acks(batch)
                self.unsettled -= len(batch)
        except trio.Cancelled:
            await self._last_call()
            raise

    async def _last_call(self) -> None:
        """Cancelled (a forced stop): store the acks not sent yet in one call, shielded
        and bounded by :data:`LAST_CALL`; a call already under way is not waited for."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        owner = self.owner
        with trio.CancelScope(shield=True, deadline=trio.current_time() + LAST_CALL) as scope:
            try:
                await owner._store_acks(batch)
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                self.unsettled -= len(batch)
                return
        if scope.cancelled_caught:
            why = f"the backend did not answer within {LAST_CALL:g}s"
        log.warning(
            "worker %s: %d ack(s) not stored while cancelled (%s); those tasks run again "
            "once their leases expire",
            owner.context.name,
            len(batch),
            why,
        )


class Acknowledge(Service[Task[bytes], None]):
    """Settles each task: ack / retry-at (with backoff) / dead-letter / release.

    Settles carry the lease's fencing token; a refused settle is reported as a
    :class:`~turret.LeaseRejected` event. Cancellation (shutdown) releases the task
    without consuming an attempt, shielded, and re-raises.
    """

    forwards_ready = True  # ready() is inner.ready(), unchanged

    def __init__(
        self,
        inner: Service[Task[Any], Any],
        *,
        backend: Backend,
        context: WorkerContext,
        backoff: Backoff,
        running: dict[int, Running],
    ) -> None:
        self.inner = inner
        self.backend = backend
        self.context = context
        self.backoff = backoff
        self.running = running
        self._emitter = context._emitter
        #: Stores the acks; the worker runs it (:meth:`Settler.run`) beside its tasks.
        self.settler = Settler(self)

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()

    def _emit(self, event: ev.Event) -> None:
        self._emitter.emit(event)

    async def __call__(self, raw: Task[bytes], /) -> None:
        """Run one task and store its outcome before returning."""
        await self.settle_now(await self.run(raw))

    async def settle_now(self, run: Running) -> None:
        """Store the outcome of :meth:`run` before returning, an ack too (not through the
        :class:`Settler`): for a task whose worker may be going away."""
        if not run.succeeded:
            await self.settle(run)
            return
        try:
            await self._store_acks([(run, self._encode_result(run))])
        except BaseException:
            del self.running[run.token]
            raise

    async def run(self, raw: Task[bytes]) -> Running:
        """Decode and run the stack; the outcome is settled by :meth:`settle`.

        The worker calls the two halves apart: it gives the reservation back between
        them, so the next task is claimed while this one's settle is in flight. On
        cancellation (shutdown) the task is released at once and the error re-raised.
        """
        ctx = raw.ctx
        assert ctx.lease is not None, "a claimed task carries its lease"
        run = Running(ctx, ctx.lease.token)
        self.running[run.token] = run  # by token: the same task may be re-claimed
        self.context.claimed += 1
        if self._emitter.active:
            run.start = trio.current_time()
            self._emit(ev.TaskEngaged(self.context.name, run.start, ctx))
        try:
            args = self.backend.codec.decode(raw.args)
            with run.scope:
                run.result = await self.inner(Task(args, ctx))
        except Exception as exc:  # Retry, Abort, InvalidPayload and handler failures
            run.error = exc
        except BaseException:
            # Cancelled (shutdown, grace expired) or KeyboardInterrupt: give it back.
            try:
                with trio.CancelScope(shield=True):
                    await self._release(run)
            finally:
                del self.running[run.token]
            raise
        run.finished = True
        return run

    async def settle(self, run: Running) -> None:
        """Store the outcome of :meth:`run`: an ack goes to the :class:`Settler` (the
        call returns at once); a retry with backoff, a dead letter or a release is
        stored before the call returns."""
        if run.succeeded:
            self.settler.add(run, self._encode_result(run))  # it forgets the run once stored
            return
        try:
            if run.error is not None:
                await self._failed(run, run.error, run.start)
            elif run.cancel_reason == LOST:
                self._rejected(run.ctx, "lease lost during the run")
            elif run.cancel_reason == SHUTDOWN:
                await self._release(run)
            else:
                await self._dead(run, f"cancelled: {run.cancel_reason}")
        finally:
            del self.running[run.token]

    # --- outcomes -------------------------------------------------------------------

    def _encode_result(self, run: Running) -> bytes | None:
        if run.result is None:
            return None
        try:
            return self.backend.codec.encode(run.result)
        except TypeError as exc:
            log.warning("task %s: result not stored: %s", run.ctx.id, exc)
            return None

    async def _store_acks(self, batch: list[tuple[Running, bytes | None]]) -> None:
        """Ack ``batch`` (runs and their encoded results) with one :meth:`Backend.ack_many`
        call, report each outcome, and forget the runs."""
        outcomes = await self.backend.ack_many(
            [(run.ctx.id, run.token, result) for run, result in batch]
        )
        context = self.context
        running = self.running
        active = self._emitter.active
        now = trio.current_time() if active else 0.0
        for (run, _), lost in zip(batch, outcomes, strict=True):
            del running[run.token]
            if lost is not None:
                self._rejected(run.ctx, str(lost))
                continue
            context.succeeded += 1
            if active:
                self._emit(ev.TaskSucceeded(context.name, now, run.ctx, now - run.start))

    async def _failed(self, run: Running, exc: BaseException, start: float) -> None:
        ctx = run.ctx
        if isinstance(exc, Abort):
            await self._dead(run, f"aborted: {exc.reason}")
            return
        if isinstance(exc, InvalidPayload):
            await self._dead(run, f"invalid payload: {exc}")
            return
        if isinstance(exc, Retry):
            if ctx.is_last_attempt:
                await self._dead(run, f"retry requested on the last attempt: {exc.reason}")
            else:
                await self._retry(run, exc.after, f"retry requested: {exc.reason}")
            return
        final = ctx.is_last_attempt
        self.context.failed += 1
        if self._emitter.active:
            now = trio.current_time()
            self._emit(ev.TaskFailed(self.context.name, now, ctx, exc, now - start, final))
        reason = describe(exc)
        if final:
            await self._dead(run, f"failed on attempt {ctx.attempt}/{ctx.max_attempts}: {reason}")
        else:
            await self._retry(run, self.backoff.delay(ctx.attempt), reason)

    async def _retry(self, run: Running, delay: float, reason: str) -> None:
        ok = await self._settle(
            run, lambda: self.backend.retry(run.ctx.id, run.token, delay=delay, error=reason)
        )
        if ok:
            self.context.retried += 1
            if self._emitter.active:
                now = trio.current_time()
                self._emit(ev.TaskRetried(self.context.name, now, run.ctx, delay, reason))

    async def _dead(self, run: Running, reason: str) -> None:
        ok = await self._settle(
            run, lambda: self.backend.dead(run.ctx.id, run.token, reason=reason)
        )
        if ok:
            self.context.dead_lettered += 1
            if self._emitter.active:
                now = trio.current_time()
                self._emit(ev.TaskDeadLettered(self.context.name, now, run.ctx, reason))

    async def _release(self, run: Running) -> None:
        ok = await self._settle(run, lambda: self.backend.release(run.ctx.id, run.token))
        if ok:
            self.context.released += 1
            if self._emitter.active:
                self._emit(ev.TaskReleased(self.context.name, trio.current_time(), run.ctx))

    async def _settle(self, run: Running, op: Callable[[], Awaitable[None]]) -> bool:
        """Run one settle; a fencing refusal becomes a LeaseRejected event, not an error."""
        try:
            await op()
        except LeaseLost as exc:
            self._rejected(run.ctx, str(exc))
            return False
        return True

    def _rejected(self, ctx: TaskContext, reason: str) -> None:
        self.context.lease_rejected += 1
        log.warning("task %s: lease rejected: %s", ctx.id, reason)
        if self._emitter.active:
            self._emit(ev.LeaseRejected(self.context.name, trio.current_time(), ctx, reason))
