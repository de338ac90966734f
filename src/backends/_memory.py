"""An in-process backend for tests and demos: trio-only, no threads, same contract."""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import attrs
import trio

from ..core._backend import Job, QueueStats, Renewal, TaskInfo, TaskState, check_queue_name
from ..core._codec import Codec
from ..core._errors import LeaseLost
from ..core._task import Lease, Task, TaskContext, TaskId
from ._producer import Producer


async def _cancel_point() -> None:
    """The worker's hot path (claim, renew, settle) is a cancel point, not a schedule point.

    These calls never block, and the worker yields on every task anyway (the handler and
    the reservation), so skipping the extra trip through the scheduler is safe; it is
    worth about a third of the memory backend's throughput.
    """
    await trio.lowlevel.checkpoint_if_cancelled()


__all__ = ["MemoryBackend", "MemoryStatistics", "StoredTask"]


@attrs.define(eq=False)
class StoredTask:
    """The backend's record of one task (what ``get()`` returns a snapshot of)."""

    id: TaskId
    queue: str
    payload: bytes
    priority: int
    max_attempts: int
    headers: Mapping[str, str]
    unique_key: str | None
    enqueued_at: float
    run_at: float
    state: TaskState
    order: float = 0.0
    attempt: int = 0
    token: int = 0
    owner: str | None = None
    deadline: float = 0.0
    lost: int = 0
    version: int = 0
    result: bytes | None = None
    last_error: str | None = None
    dead_reason: str | None = None
    result_expires_at: float | None = None
    cancel_reason: str | None = None

    def info(self, now: float) -> TaskInfo:
        """A frozen :class:`~turret.TaskInfo` snapshot (results past retention hidden)."""
        expired = self.result_expires_at is not None and self.result_expires_at <= now
        return TaskInfo(
            id=self.id,
            queue=self.queue,
            state=self.state,
            args=self.payload,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            priority=self.priority,
            run_at=self.run_at,
            enqueued_at=self.enqueued_at,
            headers=dict(self.headers),
            unique_key=self.unique_key,
            owner=self.owner if self.state is TaskState.LEASED else None,
            lease_deadline=self.deadline if self.state is TaskState.LEASED else None,
            token=self.token,
            lost=self.lost,
            result=None if expired else self.result,
            result_expires_at=None if expired else self.result_expires_at,
            last_error=self.last_error,
            dead_reason=self.dead_reason,
            cancel_requested=self.cancel_reason is not None,
        )


@attrs.frozen
class MemoryStatistics:
    """A snapshot of a :class:`MemoryBackend` (see ``statistics()``)."""

    queues: dict[str, QueueStats]
    tasks: int
    next_token: int


class _Queue:
    __slots__ = ("counts", "leases", "paused", "pending", "reclaimed", "scheduled", "wakeup")

    def __init__(self) -> None:
        self.pending: list[tuple[float, TaskId, int, StoredTask]] = []
        self.scheduled: list[tuple[float, TaskId, int, StoredTask]] = []
        self.leases: list[tuple[float, int, StoredTask]] = []
        self.counts: dict[TaskState, int] = defaultdict(int)
        self.wakeup = trio.Event()
        self.paused = False
        self.reclaimed = 0  # expired leases taken back, ever (QueueStats.reclaimed)

    def wake(self) -> None:
        self.wakeup.set()
        self.wakeup = trio.Event()


class MemoryBackend(Producer):
    """Tasks in a dict, heaps per queue; leases, fencing and retries as durable backends.

    Time comes from ``clock`` (default ``trio.current_time``), so tests can run on
    ``autojump_clock``. Several workers may share one instance; it lives as long as the
    process. ``max_lost`` expired leases make a task poison (dead, "worker lost N
    times"); results are kept ``result_ttl`` seconds, and a done task's record
    ``done_ttl`` seconds (at least as long as its result; ``None``: forever). Dead
    letters are kept until replayed.

    Example::

        backend = MemoryBackend()
        task_id = await backend.push({"n": 1}, queue="math", priority=5)
        worker = WorkerBuilder("w").backend(backend).queue("math").build(handler)
    """

    def __init__(
        self,
        *,
        codec: Codec | None = None,
        clock: Callable[[], float] = trio.current_time,
        default_max_attempts: int = 3,
        max_payload_bytes: int = 1 << 20,
        aging: float = 60.0,
        max_lost: int = 3,
        result_ttl: float | None = 7 * 86400.0,
        done_ttl: float | None = 7 * 86400.0,
    ) -> None:
        self._configure(
            codec=codec,
            clock=clock,
            default_max_attempts=default_max_attempts,
            max_payload_bytes=max_payload_bytes,
            aging=aging,
            max_lost=max_lost,
            result_ttl=result_ttl,
            done_ttl=done_ttl,
        )
        self._tasks: dict[TaskId, StoredTask] = {}
        self._done: list[tuple[float, TaskId]] = []  # (kept until, id): a heap
        self._queues: dict[str, _Queue] = defaultdict(_Queue)
        self._unique: dict[str, TaskId] = {}
        self._token = 0

    def __repr__(self) -> str:
        return f"<MemoryBackend tasks={len(self._tasks)}>"

    # --- producing ------------------------------------------------------------------

    async def _store(self, encoded: Sequence[tuple[Job, bytes]]) -> list[TaskId]:
        await trio.lowlevel.checkpoint()
        now = self.now()
        return [self._insert(job, payload, now) for job, payload in encoded]

    def _insert(self, job: Job, payload: bytes, now: float) -> TaskId:
        if job.unique_key is not None:
            existing = self._unique.get(job.unique_key)
            if existing is not None:
                return existing
        run_at = now + job.delay
        rec = StoredTask(
            id=TaskId.new(),
            queue=job.queue,
            payload=payload,
            priority=job.priority,
            max_attempts=job.max_attempts or self.default_max_attempts,
            headers=dict(job.headers),
            unique_key=job.unique_key,
            enqueued_at=now,
            run_at=run_at,
            state=TaskState.SCHEDULED,
        )
        self._tasks[rec.id] = rec
        if job.unique_key is not None:
            self._unique[job.unique_key] = rec.id
        q = self._queues[rec.queue]
        q.counts[TaskState.SCHEDULED] += 1
        self._make_ready(q, rec, now, eligible_at=max(now, run_at))
        return rec.id

    # --- state moves ----------------------------------------------------------------

    def _move(self, q: _Queue, rec: StoredTask, state: TaskState) -> None:
        q.counts[rec.state] -= 1
        q.counts[state] += 1
        rec.state = state
        rec.version += 1

    def _make_ready(
        self, q: _Queue, rec: StoredTask, now: float, eligible_at: float | None = None
    ) -> None:
        """Put ``rec`` in pending (due now) or scheduled (later).

        With ``eligible_at`` the order key is recomputed from it; without, the task keeps
        its order key (its place in line) exactly.
        """
        if eligible_at is not None:
            rec.order = eligible_at - rec.priority * self.aging
        if rec.run_at <= now:
            self._move(q, rec, TaskState.PENDING)
            heapq.heappush(q.pending, (rec.order, rec.id, rec.version, rec))
            q.wake()
        else:
            self._move(q, rec, TaskState.SCHEDULED)
            heapq.heappush(q.scheduled, (rec.run_at, rec.id, rec.version, rec))

    def _finish(self, q: _Queue, rec: StoredTask, state: TaskState) -> None:
        self._move(q, rec, state)
        rec.owner = None
        rec.cancel_reason = None
        if rec.unique_key is not None and self._unique.get(rec.unique_key) == rec.id:
            del self._unique[rec.unique_key]

    def _promote_due(self, q: _Queue, now: float) -> None:
        while q.scheduled and q.scheduled[0][0] <= now:
            _, _, version, rec = heapq.heappop(q.scheduled)
            if rec.version == version:
                self._move(q, rec, TaskState.PENDING)
                heapq.heappush(q.pending, (rec.order, rec.id, rec.version, rec))

    def _reclaim_expired(self, q: _Queue, now: float) -> int:
        count = 0
        while q.leases and q.leases[0][0] <= now:
            _, token, rec = heapq.heappop(q.leases)
            if rec.state is not TaskState.LEASED or rec.token != token or rec.deadline > now:
                continue  # settled, re-claimed, or renewed since
            count += 1
            rec.lost += 1
            rec.last_error = "worker lost"
            if rec.cancel_reason is not None:
                rec.dead_reason = f"cancelled: {rec.cancel_reason} (worker lost)"
                self._finish(q, rec, TaskState.DEAD)
            elif rec.lost >= self.max_lost:
                rec.dead_reason = f"worker lost {rec.lost} times"
                self._finish(q, rec, TaskState.DEAD)
            elif rec.attempt >= rec.max_attempts:
                rec.dead_reason = f"worker lost on the last attempt ({rec.attempt})"
                self._finish(q, rec, TaskState.DEAD)
            else:
                rec.run_at = now
                rec.owner = None
                self._make_ready(q, rec, now)  # keeps its place in line
        q.reclaimed += count  # dead-lettered or not: every expired lease taken back
        return count

    # --- consuming ------------------------------------------------------------------

    async def claim(
        self, queue: str, *, owner: str, limit: int, lease_ttl: float
    ) -> list[Task[bytes]]:
        await _cancel_point()
        now = self.now()
        q = self._queues[queue]
        self._reclaim_expired(q, now)
        self._promote_due(q, now)
        out: list[Task[bytes]] = []
        if q.paused:
            return out
        while q.pending and len(out) < limit:
            _, _, version, rec = heapq.heappop(q.pending)
            if rec.version != version:
                continue
            self._token += 1
            rec.token = self._token
            rec.attempt += 1
            rec.owner = owner
            rec.deadline = now + lease_ttl
            self._move(q, rec, TaskState.LEASED)
            heapq.heappush(q.leases, (rec.deadline, rec.token, rec))
            ctx = TaskContext(
                id=rec.id,
                queue=rec.queue,
                attempt=rec.attempt,
                max_attempts=rec.max_attempts,
                priority=rec.priority,
                run_at=rec.run_at,
                enqueued_at=rec.enqueued_at,
                headers=rec.headers,
                lease=Lease(owner, rec.deadline, rec.token),
            )
            out.append(Task(rec.payload, ctx))
        return out

    async def wait_for_work(self, queue: str) -> None:
        q = self._queues[queue]
        while q.pending and q.pending[0][3].version != q.pending[0][2]:
            heapq.heappop(q.pending)  # drop stale entries (lazy deletion)
        if q.pending and not q.paused:
            # Pushed while no one was waiting (e.g. during the claim that found the queue
            # short): the wake-up was missed, but the work is there.
            await trio.lowlevel.checkpoint()
            return
        due = [heap[0][0] for heap in (q.scheduled, q.leases) if heap] if not q.paused else []
        # The clock may be a user's; sleep on trio's for the same span.
        span = max(0.0, min(due) - self.now()) if due else math.inf
        with trio.move_on_after(span):
            await q.wakeup.wait()

    def _leased(self, task_id: TaskId, token: int) -> StoredTask:
        rec = self._tasks.get(task_id)
        if rec is None:
            raise LeaseLost(f"task {task_id} is unknown to this backend")
        if rec.state is not TaskState.LEASED or rec.token != token:
            raise LeaseLost(
                f"task {task_id}: lease token {token} is stale (task is {rec.state.value}, "
                f"current token {rec.token})"
            )
        if rec.deadline <= self.now():
            # Expired but not yet reclaimed: still refuse, another worker may claim it now.
            raise LeaseLost(f"task {task_id}: lease expired at {rec.deadline:.3f}")
        return rec

    async def renew(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_ttl: float
    ) -> list[Renewal]:
        await _cancel_point()
        now = self.now()
        out: list[Renewal] = []
        for task_id, token in leases:
            try:
                rec = self._leased(task_id, token)
            except LeaseLost:
                out.append(Renewal.LOST)
                continue
            rec.deadline = now + lease_ttl
            heapq.heappush(self._queues[rec.queue].leases, (rec.deadline, rec.token, rec))
            out.append(Renewal.RENEWED if rec.cancel_reason is None else Renewal.CANCEL_REQUESTED)
        return out

    async def ack(self, task_id: TaskId, token: int, *, result: bytes | None = None) -> None:
        await _cancel_point()
        rec = self._leased(task_id, token)
        now = self.now()
        rec.result = result
        if result is not None and self.result_ttl is not None:
            rec.result_expires_at = now + self.result_ttl
        self._finish(self._queues[rec.queue], rec, TaskState.DONE)
        if self._forget_after is not None:
            heapq.heappush(self._done, (self.kept_until(now, rec.result_expires_at), rec.id))
            self._forget_done(now)

    def _forget_done(self, now: float) -> int:
        """Drop the done tasks kept past ``done_ttl`` (and their result's retention)."""
        count = 0
        while self._done and self._done[0][0] <= now:
            _, task_id = heapq.heappop(self._done)
            rec = self._tasks.pop(task_id)  # a done task never changes state again
            self._queues[rec.queue].counts[TaskState.DONE] -= 1
            count += 1
        return count

    async def prune(self) -> int:
        """Forget the done tasks past their retention now; how many. Acks do it too.

        Example::

            backend = MemoryBackend(done_ttl=60)
            ...                                  # tasks done, then a minute passes
            forgotten = await backend.prune()    # their records are gone
        """
        await trio.lowlevel.checkpoint()
        return self._forget_done(self.now())

    async def retry(self, task_id: TaskId, token: int, *, delay: float, error: str) -> None:
        await _cancel_point()
        rec = self._leased(task_id, token)
        now = self.now()
        rec.last_error = error
        if self._cancel_instead(rec):
            return
        rec.owner = None
        rec.run_at = now + max(0.0, delay)
        self._make_ready(self._queues[rec.queue], rec, now, eligible_at=rec.run_at)

    async def dead(self, task_id: TaskId, token: int, *, reason: str) -> None:
        await _cancel_point()
        rec = self._leased(task_id, token)
        rec.dead_reason = reason
        self._finish(self._queues[rec.queue], rec, TaskState.DEAD)

    async def release(self, task_id: TaskId, token: int) -> None:
        await _cancel_point()
        rec = self._leased(task_id, token)
        rec.attempt -= 1
        if self._cancel_instead(rec):
            return
        rec.owner = None
        now = self.now()
        # Keep its place in line: same order key as before it was claimed.
        self._make_ready(self._queues[rec.queue], rec, now)

    def _cancel_instead(self, rec: StoredTask) -> bool:
        """A task with a cancel request goes to dead letters instead of back in line."""
        if rec.cancel_reason is None:
            return False
        rec.dead_reason = f"cancelled: {rec.cancel_reason}"
        self._finish(self._queues[rec.queue], rec, TaskState.DEAD)
        return True

    # --- producers and operators ----------------------------------------------------

    async def get_task(self, task_id: TaskId) -> TaskInfo | None:
        await trio.lowlevel.checkpoint()
        now = self.now()
        self._forget_done(now)
        rec = self._tasks.get(task_id)
        return None if rec is None else rec.info(now)

    async def cancel(self, task_id: TaskId, *, reason: str = "cancel requested") -> bool:
        await trio.lowlevel.checkpoint()
        rec = self._tasks.get(task_id)
        if rec is None or rec.state.finished:
            return False
        if rec.state is TaskState.LEASED:
            rec.cancel_reason = reason
        else:
            rec.dead_reason = f"cancelled: {reason}"
            self._finish(self._queues[rec.queue], rec, TaskState.DEAD)
        return True

    async def reclaim(self) -> int:
        await trio.lowlevel.checkpoint()
        now = self.now()
        return sum(self._reclaim_expired(q, now) for q in list(self._queues.values()))

    async def pause_queue(self, queue: str) -> None:
        await trio.lowlevel.checkpoint()
        check_queue_name(queue)
        self._queues[queue].paused = True

    async def resume_queue(self, queue: str) -> None:
        await trio.lowlevel.checkpoint()
        check_queue_name(queue)
        q = self._queues[queue]
        if q.paused:
            q.paused = False
            q.wake()

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[TaskInfo]:
        await trio.lowlevel.checkpoint()
        now = self.now()
        dead = (r for r in self._tasks.values() if r.queue == queue and r.state is TaskState.DEAD)
        return [r.info(now) for r in sorted(dead, key=lambda r: r.id)[:limit]]

    async def replay(self, task_ids: Sequence[TaskId], *, delay: float = 0.0) -> list[TaskId]:
        await trio.lowlevel.checkpoint()
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        now = self.now()
        out: list[TaskId] = []
        for task_id in task_ids:
            rec = self._tasks.get(task_id)
            if rec is None or rec.state is not TaskState.DEAD:
                continue
            rec.attempt = 0
            rec.lost = 0
            rec.dead_reason = None
            rec.run_at = now + delay
            if rec.unique_key is not None:
                if rec.unique_key in self._unique:
                    rec.unique_key = None  # a live task took the key meanwhile
                else:
                    self._unique[rec.unique_key] = rec.id
            self._make_ready(self._queues[rec.queue], rec, now, eligible_at=rec.run_at)
            out.append(rec.id)
        return out

    # --- inspection -----------------------------------------------------------------

    async def stats(self) -> list[QueueStats]:
        await trio.lowlevel.checkpoint()
        self._forget_done(self.now())
        return list(self.statistics().queues.values())

    def statistics(self) -> MemoryStatistics:
        """A frozen snapshot: per-queue counts by state, total tasks, fencing counter.

        Example::

            assert backend.statistics().queues["default"].pending == 0
        """
        queues = {
            name: QueueStats(
                queue=name,
                pending=q.counts[TaskState.PENDING],
                scheduled=q.counts[TaskState.SCHEDULED],
                leased=q.counts[TaskState.LEASED],
                done=q.counts[TaskState.DONE],
                dead=q.counts[TaskState.DEAD],
                paused=q.paused,
                reclaimed=q.reclaimed,
            )
            for name, q in sorted(self._queues.items())
        }
        return MemoryStatistics(queues=queues, tasks=len(self._tasks), next_token=self._token + 1)

    def get(self, task_id: TaskId) -> StoredTask:
        """The stored record of a task (a live object: read, do not modify).

        Example::

            assert backend.get(task_id).state is TaskState.DONE
        """
        return self._tasks[task_id]
