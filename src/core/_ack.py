"""The backend layer: decodes a claimed task, runs the stack, and settles the outcome.

It sits outermost in a worker's stack, so everything the user's layers do (timeouts,
in-process retries, load shedding) is *one stored attempt*, and the settle itself is
never cut short by a user's timeout.
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

__all__ = ["Acknowledge", "Running"]

log = logging.getLogger("turret.worker")

LOST = "lease lost"
CANCEL_REQUESTED = "cancel requested"
#: The worker's grace period (or the Monitor's shutdown timeout) ran out: the handler is
#: cancelled and its task released, without using an attempt.
SHUTDOWN = "shutting down"


class Running:
    """A task between claim and settle: what the heartbeat renews and may cancel, and,
    once the stack has returned, the outcome :meth:`Acknowledge.settle` stores."""

    __slots__ = ("cancel_reason", "ctx", "error", "result", "scope", "start", "token")

    def __init__(self, ctx: TaskContext, token: int) -> None:
        self.ctx = ctx
        self.token = token
        self.scope = trio.CancelScope()
        self.cancel_reason: str | None = None
        self.start = 0.0
        self.result: Any = None
        self.error: Exception | None = None

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.scope.cancel()


def describe(error: BaseException) -> str:
    """``Type: message`` (or the formatted traceback a CatchPanic layer attached)."""
    detail = getattr(error, "traceback_text", None)
    text = f"{type(error).__name__}: {error}"
    return f"{text}\n{detail}" if detail else text


class Acknowledge(Service[Task[bytes], None]):
    """Settles each task: ack / retry-at (with backoff) / dead-letter / release.

    Settles carry the lease's fencing token; a refused settle is reported as a
    :class:`~turret.LeaseRejected` event. Cancellation (shutdown) releases the task
    without consuming an attempt, shielded, and re-raises.
    """

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

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()

    def _emit(self, event: ev.Event) -> None:
        self._emitter.emit(event)

    async def __call__(self, raw: Task[bytes], /) -> None:
        await self.settle(await self.run(raw))

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
        return run

    async def settle(self, run: Running) -> None:
        """Store the outcome of :meth:`run`: ack, retry with backoff, or dead-letter."""
        try:
            if run.error is not None:
                await self._failed(run, run.error, run.start)
            elif run.scope.cancelled_caught:
                if run.cancel_reason == LOST:
                    self._rejected(run.ctx, "lease lost during the run")
                elif run.cancel_reason == SHUTDOWN:
                    await self._release(run)
                else:
                    await self._dead(run, f"cancelled: {run.cancel_reason}")
            else:
                await self._ack(run, run.result, run.start)
        finally:
            del self.running[run.token]

    # --- outcomes -------------------------------------------------------------------

    async def _ack(self, run: Running, result: Any, start: float) -> None:
        payload: bytes | None = None
        if result is not None:
            try:
                payload = self.backend.codec.encode(result)
            except TypeError as exc:
                log.warning("task %s: result not stored: %s", run.ctx.id, exc)
        try:  # inline, not through _settle: the hot path of every task
            await self.backend.ack(run.ctx.id, run.token, result=payload)
        except LeaseLost as exc:
            self._rejected(run.ctx, str(exc))
        else:
            self.context.succeeded += 1
            if self._emitter.active:
                now = trio.current_time()
                self._emit(ev.TaskSucceeded(self.context.name, now, run.ctx, now - start))

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
