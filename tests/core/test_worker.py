"""The worker: backpressure, lifecycle, graceful stop, outcomes, events."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import turret
from turret import (
    Abort,
    Data,
    Retry,
    TaskContext,
    TaskState,
    WorkerBuilder,
    WorkerContext,
    WorkerState,
)
from turret.backends import MemoryBackend
from turret.layers import ConcurrencyLimitLayer

from ..slow_backends import SlowAckBackend

NO_JITTER = turret.ExponentialBackoff(base=1.0, factor=2.0, jitter=False)


class TrackingBackend(MemoryBackend):
    """MemoryBackend that records, per lease owner, how many tasks it holds claimed and
    not yet run: a task counts from its claim until its handler returns (``ran``) or it
    is released. Its ack may still be in flight then: the reservation covers the run,
    not the settle (design.md §3)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.holding: dict[str, int] = defaultdict(int)
        self.max_holding: dict[str, int] = defaultdict(int)
        self.owner_of: dict[str, str] = {}

    async def claim(
        self, queue: str, *, owner: str, limit: int, lease_ttl: float
    ) -> list[turret.Task[bytes]]:
        tasks = await super().claim(queue, owner=owner, limit=limit, lease_ttl=lease_ttl)
        for t in tasks:
            self.owner_of[t.id] = owner
        self.holding[owner] += len(tasks)
        self.max_holding[owner] = max(self.max_holding[owner], self.holding[owner])
        return tasks

    def ran(self, task_id: str) -> None:
        """The handler of ``task_id`` returned: it holds no slot any more."""
        self.holding[self.owner_of[task_id]] -= 1

    async def release(self, task_id: turret.TaskId, token: int) -> None:
        await super().release(task_id, token)
        self.ran(task_id)


async def after(seconds: float) -> None:
    """A run_until trigger that fires after ``seconds``."""
    await trio.sleep(seconds)


def collect(into: list[turret.Event]) -> Callable[[turret.Event], None]:
    return into.append


async def test_readiness_backpressure_two_workers_never_hold_more_than_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = TrackingBackend()
    for i in range(20):
        await backend.push(i)
    done: list[int] = []

    async def handler(n: int, ctx: TaskContext) -> None:
        await trio.sleep(1)
        done.append(n)
        backend.ran(ctx.id)

    builder = WorkerBuilder("w").backend(backend).layer(ConcurrencyLimitLayer(2)).concurrency(50)
    workers = [builder.build(handler), builder.build(handler)]
    async with trio.open_nursery() as nursery:
        for w in workers:
            nursery.start_soon(w.run)
        await trio.sleep(5.5)
        for w in workers:
            w.context.stop()
    assert sorted(done) == list(range(20))
    assert set(backend.max_holding) == {w.owner for w in workers}
    assert all(m == 2 for m in backend.max_holding.values()), backend.max_holding
    # 20 one-second tasks, 2 at a time on each of 2 workers: 5 seconds, not less.
    assert trio.current_time() == pytest.approx(5.0, abs=0.6)


async def test_a_task_is_never_claimed_while_the_stack_is_not_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    await backend.push(1)
    gate = trio.Event()

    @turret.middleware
    async def passthrough(
        task: turret.Task[Any], call_next: turret.Next[turret.Task[Any], Any]
    ) -> Any:
        return await call_next(task)

    class Closed(turret.Service[turret.Task[Any], Any]):
        def __init__(self, inner: turret.Service[turret.Task[Any], Any]) -> None:
            self.inner = inner

        def ready(self) -> Any:
            inner = self.inner

            class _R:
                async def __aenter__(self) -> None:
                    await gate.wait()
                    await inner.ready().__aenter__()

                async def __aexit__(self, *exc: object) -> None:
                    pass

            return _R()

        async def __call__(self, req: turret.Task[Any], /) -> Any:
            return await self.inner(req)

    async def handler(n: int) -> None:
        pass

    worker = (
        WorkerBuilder("w")
        .backend(backend)
        .layer(passthrough)
        .layer(turret.layer_fn(Closed))
        .build(handler)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(10)
        assert backend.statistics().queues["default"].pending == 1, "claimed while not ready"
        gate.set()
        await trio.sleep(1)
        assert backend.statistics().queues["default"].done == 1
        worker.context.stop()


async def test_pause_resume_stop(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    seen: list[int] = []

    async def handler(n: int) -> None:
        seen.append(n)

    worker = WorkerBuilder("w").backend(backend).build(handler)
    ctx = worker.context
    assert ctx.state is WorkerState.PENDING
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        assert ctx.state is WorkerState.RUNNING
        await backend.push(1)
        await trio.sleep(1)
        assert seen == [1]

        ctx.pause()
        assert ctx.state is WorkerState.PAUSED
        await backend.push(2)
        await trio.sleep(60)
        assert seen == [1], "a paused worker claims nothing"
        assert backend.statistics().queues["default"].pending == 1

        ctx.resume()
        assert ctx.state is WorkerState.RUNNING
        await trio.sleep(1)
        assert seen == [1, 2]

        ctx.stop()
        assert ctx.state is WorkerState.STOPPING
    assert ctx.state is WorkerState.STOPPED
    await backend.push(3)
    assert backend.statistics().queues["default"].pending == 1


async def test_graceful_stop_drains_in_flight_work(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    for i in range(3):
        await backend.push(i)
    done: list[int] = []

    async def handler(n: int) -> None:
        await trio.sleep(10)
        done.append(n)

    worker = WorkerBuilder("w").backend(backend).concurrency(3).build(handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await trio.sleep(1)
        assert worker.context.in_flight == 3
        worker.context.stop()
        await backend.push(99)  # pushed after stop: must not be claimed
    assert sorted(done) == [0, 1, 2]
    assert trio.current_time() == pytest.approx(10, abs=0.5)
    stats = backend.statistics().queues["default"]
    assert (stats.done, stats.pending, stats.leased) == (3, 1, 0)


async def test_grace_period_cancels_and_releases_without_consuming_an_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    slow = await backend.push("slow")
    fast = await backend.push("fast")
    events: list[turret.Event] = []

    async def handler(kind: str) -> None:
        await trio.sleep(1000 if kind == "slow" else 2)

    worker = (
        WorkerBuilder("w")
        .backend(backend)
        .concurrency(2)
        .grace_period(5)
        .on_event(collect(events))
        .build(handler)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await trio.sleep(1)
        worker.context.stop()
    assert trio.current_time() == pytest.approx(6, abs=0.5)
    assert backend.get(fast).state is TaskState.DONE
    rec = backend.get(slow)
    assert rec.state is TaskState.PENDING
    assert rec.attempt == 0, "release does not consume an attempt"
    released = [e for e in events if isinstance(e, turret.TaskReleased)]
    assert [e.task.id for e in released] == [slow]
    # It is claimable again at once, as its first attempt.
    (again,) = await backend.claim("default", owner="other", limit=5, lease_ttl=30)
    assert again.id == slow and again.ctx.attempt == 1


@attrs.frozen
class Email:
    to: str
    subject: str = "hi"


class Smtp:
    def __init__(self) -> None:
        self.sent: list[str] = []


async def test_handler_parameters_are_resolved_by_annotation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    task_id = await backend.push(Email("a@b.c"))
    smtp = Smtp()
    got: dict[str, Any] = {}

    async def send(email: Email, ctx: TaskContext, smtp: Data[Smtp], worker: WorkerContext) -> str:
        got.update(email=email, ctx=ctx, worker=worker)
        smtp.sent.append(email.to)
        return f"sent to {email.to}"

    w = WorkerBuilder("mail").backend(backend).data(smtp).build(send)
    await w.run_until(after(1))
    assert got["email"] == Email("a@b.c")
    assert got["ctx"].id == task_id and got["ctx"].attempt == 1
    assert got["worker"] is w.context
    assert smtp.sent == ["a@b.c"]
    rec = backend.get(task_id)
    assert backend.codec.decode(rec.result or b"") == "sent to a@b.c"


async def test_task_parameter_gets_structured_args() -> None:
    backend = MemoryBackend()
    await backend.push({"to": "x@y.z"})
    seen: list[turret.Task[Email]] = []

    async def handler(task: turret.Task[Email]) -> None:
        seen.append(task)

    await WorkerBuilder("w").backend(backend).build(handler).run_until(after(0.1))
    assert seen[0].args == Email("x@y.z")


async def test_a_callable_object_is_a_handler_resolved_by_its_call_annotations() -> None:
    backend = MemoryBackend()
    await backend.push({"to": "x@y.z"})

    class Mailer:
        def __init__(self) -> None:
            self.sent: list[tuple[Email, str]] = []

        async def __call__(self, email: Email, worker: WorkerContext) -> None:
            self.sent.append((email, worker.name))

    mailer = Mailer()
    await WorkerBuilder("w").backend(backend).build(mailer).run_until(after(0.1))
    assert mailer.sent == [(Email("x@y.z"), "w")]


def test_unresolvable_parameter_fails_at_build_naming_it() -> None:
    backend = MemoryBackend()

    async def two_args(a: int, b: str) -> None:
        pass

    with pytest.raises(TypeError, match="parameter 'b'"):
        WorkerBuilder("w").backend(backend).build(two_args)

    async def wants_data(n: int, smtp: Data[Smtp]) -> None:
        pass

    with pytest.raises(TypeError, match=r"'smtp' wants Data\[Smtp\].*\.data\(Smtp"):
        WorkerBuilder("w").backend(backend).build(wants_data)

    def not_async(n: int) -> None:
        pass

    with pytest.raises(TypeError, match="must be an async function"):
        WorkerBuilder("w").backend(backend).build(not_async)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.backend(MemoryBackend()).concurrency(0), "concurrency must be an int >= 1"),
        (lambda b: b, "has no backend"),
    ],
)
def test_build_validates(change: Callable[[WorkerBuilder], WorkerBuilder], message: str) -> None:
    async def handler() -> None:
        pass

    with pytest.raises(ValueError, match=message):
        change(WorkerBuilder("w")).build(handler)
    with pytest.raises(ValueError, match="non-empty name"):
        WorkerBuilder("").backend(MemoryBackend()).build(handler)


async def test_retry_and_abort_semantics(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend(default_max_attempts=3)
    retry_id = await backend.push("retry")
    abort_id = await backend.push("abort")
    fail_id = await backend.push("fail")
    runs: dict[str, list[float]] = defaultdict(list)

    async def handler(kind: str, ctx: TaskContext) -> None:
        runs[kind].append(trio.current_time())
        if kind == "retry" and ctx.attempt < 3:
            raise Retry(after=7, reason="not yet")
        if kind == "abort":
            raise Abort("bad input")
        if kind == "fail":
            raise RuntimeError("boom")

    worker = WorkerBuilder("w").backend(backend).backoff(NO_JITTER).build(handler)
    await worker.run_until(after(100))

    assert [round(t) for t in runs["retry"]] == [0, 7, 14]  # Retry(after=7) twice, then success
    assert backend.get(retry_id).state is TaskState.DONE
    assert runs["abort"] == [0] and backend.get(abort_id).state is TaskState.DEAD
    assert backend.get(abort_id).dead_reason == "aborted: bad input"
    # A plain exception: durable retries with the builder's backoff (1 s, then 2 s), then dead.
    assert [round(t) for t in runs["fail"]] == [0, 1, 3]
    fail = backend.get(fail_id)
    assert fail.state is TaskState.DEAD
    assert fail.dead_reason is not None and "RuntimeError: boom" in fail.dead_reason
    assert "3/3" in fail.dead_reason


async def test_event_order_for_one_task() -> None:
    backend = MemoryBackend(default_max_attempts=2)
    events: list[turret.Event] = []

    async def handler(n: int, ctx: TaskContext) -> int:
        if n == 2 and ctx.attempt == 1:
            raise ValueError("first try fails")
        return n

    # The builder is a reusable, immutable template: one worker per run.
    builder = (
        WorkerBuilder("w")
        .backend(backend)
        .concurrency(1)
        .on_event(collect(events))
        .backoff(turret.ExponentialBackoff(base=0.01, jitter=False))
    )
    await backend.push(1)
    worker = builder.build(handler)
    await worker.run_until(after(0.05))
    names = [type(e).__name__ for e in events if not isinstance(e, turret.Heartbeat)]
    assert names[0] == "WorkerStarted"
    # The ack is stored after the task's slot is free again, so a WorkerIdle (the next
    # claim found nothing) may come before or after TaskSucceeded.
    assert [n for n in names if n.startswith("Task")] == ["TaskEngaged", "TaskSucceeded"]
    assert names[1] == "TaskEngaged"
    assert "WorkerIdle" in names
    assert names[-2:] == ["WorkerStopping", "WorkerStopped"]

    events.clear()
    await backend.push(2)
    worker = builder.build(handler)
    await worker.run_until(after(0.1))
    task_events = [e for e in events if hasattr(e, "task")]
    assert [type(e).__name__ for e in task_events] == [
        "TaskEngaged",
        "TaskFailed",
        "TaskRetried",
        "TaskEngaged",
        "TaskSucceeded",
    ]
    failed = task_events[1]
    assert isinstance(failed, turret.TaskFailed)
    assert isinstance(failed.error, ValueError) and failed.final is False


async def test_a_raising_on_event_callback_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemoryBackend()
    for i in range(3):
        await backend.push(i)
    done: list[int] = []

    def bad_callback(event: turret.Event) -> None:
        raise RuntimeError("callback bug")

    async def handler(n: int) -> None:
        done.append(n)

    worker = WorkerBuilder("w").backend(backend).on_event(bad_callback).build(handler)
    await worker.run_until(after(0.05))
    assert sorted(done) == [0, 1, 2]
    assert "callback bug" in caplog.text and "the worker goes on" in caplog.text


async def test_stream_yields_events_and_ends_when_the_worker_stops() -> None:
    backend = MemoryBackend()
    await backend.push(1)

    async def handler(n: int) -> None:
        pass

    worker = WorkerBuilder("w").backend(backend).build(handler)
    received: list[str] = []
    async with trio.open_nursery() as nursery, worker.stream() as events:
        nursery.start_soon(worker.run_until, after(0.05))
        async for event in events:
            received.append(type(event).__name__)
    assert received[0] == "WorkerStarted" and received[-1] == "WorkerStopped"
    assert "TaskSucceeded" in received


async def test_heartbeat_keeps_a_long_task_leased(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    task_id = await backend.push(1)
    other_claims: list[int] = []

    async def handler(n: int) -> None:
        await trio.sleep(100)  # ten lease lengths

    async def rival() -> None:
        while True:
            await trio.sleep(3)
            other_claims.extend(
                t.ctx.attempt
                for t in await backend.claim("default", owner="rival", limit=1, lease_ttl=10)
            )

    worker = WorkerBuilder("w").backend(backend).lease_ttl(10).build(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rival)
        await worker.run_until(after(101))
        nursery.cancel_scope.cancel()
    assert other_claims == [], "the lease was renewed, so no one could reclaim the task"
    assert backend.get(task_id).state is TaskState.DONE


async def test_a_lost_lease_is_reported_and_the_stale_settle_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The worker cannot heartbeat (frozen renew): the lease expires, a rival reclaims."""

    class NoRenew(MemoryBackend):
        async def renew(self, leases: Any, *, lease_ttl: float) -> list[turret.Renewal]:
            await trio.sleep_forever()
            raise AssertionError

    backend = NoRenew()
    task_id = await backend.push(1)
    events: list[turret.Event] = []

    async def handler(n: int) -> None:
        await trio.sleep(20)

    worker = (
        WorkerBuilder("w")
        .backend(backend)
        .concurrency(1)
        .lease_ttl(6)
        .on_event(collect(events))
        .build(handler)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run_until, after(30))
        await trio.sleep(10)
        (stolen,) = await backend.claim("default", owner="rival", limit=1, lease_ttl=60)
        assert stolen.id == task_id and stolen.ctx.attempt == 2
    rejected = [e for e in events if isinstance(e, turret.LeaseRejected)]
    assert [e.task.id for e in rejected] == [task_id]
    assert worker.context.statistics().lease_rejected == 1
    assert backend.get(task_id).owner == "rival", "the stale ack did not overwrite the claim"


async def test_undecodable_payload_goes_to_dead_letters_and_the_worker_goes_on() -> None:
    backend = MemoryBackend()
    bad = await backend.push("placeholder")
    backend.get(bad).payload = b"\xff not json"
    good = await backend.push(5)
    done: list[int] = []

    async def handler(n: int) -> None:
        done.append(n)

    await WorkerBuilder("w").backend(backend).build(handler).run_until(after(0.05))
    assert done == [5]
    rec = backend.get(bad)
    assert rec.state is TaskState.DEAD
    assert rec.dead_reason is not None and rec.dead_reason.startswith("invalid payload: ")
    assert backend.get(good).state is TaskState.DONE


async def test_an_idle_worker_holds_no_reservation(autojump_clock: trio.testing.MockClock) -> None:
    """A worker with nothing to do must not sit on a limit it shares with busy workers."""
    backend = MemoryBackend()
    for i in range(4):
        await backend.push(i, queue="busy")
    shared = trio.CapacityLimiter(2)

    class Shared(turret.Service[turret.Task[Any], Any]):
        def __init__(self, inner: turret.Service[turret.Task[Any], Any]) -> None:
            self.inner = inner

        def ready(self) -> Any:
            token = object()

            class _R:
                async def __aenter__(self) -> None:
                    await shared.acquire_on_behalf_of(token)

                async def __aexit__(self, *exc: object) -> None:
                    shared.release_on_behalf_of(token)

            return _R()

        async def __call__(self, req: turret.Task[Any], /) -> Any:
            return await self.inner(req)

    async def handler(n: int) -> None:
        await trio.sleep(1)

    layer = turret.layer_fn(Shared)
    idle = WorkerBuilder("idle").backend(backend).queue("empty").layer(layer).build(handler)
    busy = WorkerBuilder("busy").backend(backend).queue("busy").layer(layer).build(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(idle.run)
        await trio.sleep(4.5)  # between polls: the idle worker waits for work, holding nothing
        assert shared.borrowed_tokens == 0
        nursery.start_soon(busy.run)
        await trio.sleep(2.5)
        idle.context.stop()
        busy.context.stop()
    assert backend.statistics().queues["busy"].done == 4  # two at a time: two seconds


async def test_the_reservation_is_given_back_before_the_settle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A slow ack must not hold the slot: the next task runs while the ack is in flight."""

    backend = SlowAckBackend(ack_delay=5)
    for i in range(3):
        await backend.push(i)
    started: list[float] = []
    most_in_flight = 0

    async def handler(n: int, worker: WorkerContext) -> None:
        nonlocal most_in_flight
        started.append(trio.current_time())
        most_in_flight = max(most_in_flight, worker.in_flight)
        await trio.sleep(1)

    worker = WorkerBuilder("w").backend(backend).concurrency(1).build(handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await trio.sleep(3.5)
        worker.context.stop()  # graceful: waits for the acks still to be stored
    assert started == pytest.approx([0, 1, 2], abs=0.01)
    assert most_in_flight == 1, "the concurrency limit still holds for the handlers"
    assert backend.statistics().queues["default"].done == 3
    # Task 0's ack is stored from 1 to 6; tasks 1 and 2's, handed over meanwhile, go
    # together in the next call, from 6 to 11.
    assert trio.current_time() == pytest.approx(11, abs=0.01)


class CountingAcks(MemoryBackend):
    """Records the size of every ``ack_many`` call; each takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        super().__init__()
        self.delay = delay
        self.fail = fail
        self.calls: list[int] = []

    async def ack_many(
        self, acks: Sequence[tuple[turret.TaskId, int, bytes | None]]
    ) -> list[turret.LeaseLost | None]:
        self.calls.append(len(acks))
        await trio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("the store went away")
        return await super().ack_many(acks)


async def test_acks_handed_over_together_are_stored_in_one_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten tasks ending together: one ack_many call. Tasks ending while it is in flight
    go together in the next call, and the worker returns only once all are stored."""
    backend = CountingAcks(delay=1.0)
    for i in range(14):
        await backend.push(i)

    async def handler(n: int) -> None:
        await trio.sleep(1.0 if n < 10 else 1.5)  # 10-13 start at 1, end at 2.5

    worker = WorkerBuilder("w").backend(backend).concurrency(10).build(handler)
    await worker.run_until(after(0.1))  # stop at once: drain what was claimed
    # 0-9 end at 1 (one call, 1 -> 2). Nothing else was claimed before the stop.
    assert backend.calls == [10]
    assert backend.statistics().queues["default"].done == 10
    assert trio.current_time() == pytest.approx(2.0, abs=0.01)

    worker = WorkerBuilder("w").backend(backend).concurrency(10).build(handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await trio.sleep(0.5)
        worker.context.stop()
    # 10-13 end at 3.5 (from 2.0 + 1.5): one call of four, stored at 4.5.
    assert backend.calls == [10, 4]
    assert backend.statistics().queues["default"].done == 14
    assert trio.current_time() == pytest.approx(4.5, abs=0.01)


async def test_a_failed_ack_call_fails_the_worker_and_loses_no_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = CountingAcks(fail=True)
    task_id = await backend.push(1)

    async def handler(n: int) -> None:
        pass

    worker = WorkerBuilder("w").backend(backend).lease_ttl(10).build(handler)
    with pytest.raises(BaseExceptionGroup) as caught:
        await worker.run_until(after(5))
    assert caught.value.subgroup(ConnectionError) is not None
    assert worker.context.statistics().succeeded == 0
    # The ack's outcome is unknown, so the task stays leased until its lease expires.
    assert backend.get(task_id).state is TaskState.LEASED
    autojump_clock.jump(10)
    (again,) = await backend.claim("default", owner="other", limit=1, lease_ttl=10)
    assert again.id == task_id and again.ctx.attempt == 2


async def test_a_forced_stop_stores_the_acks_handed_over_and_not_yet_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelled from outside while one ack call is under way: that call is cut short
    (its task stays leased), but the acks waiting behind it go in one last call."""
    backend = CountingAcks(delay=0.3)
    a, b = await backend.push(0), await backend.push(1)

    async def handler(n: int) -> None:
        await trio.sleep(0.1 + 0.1 * n)  # a ends at 0.1 (its ack call: 0.1 -> 0.4), b at 0.2

    worker = WorkerBuilder("w").backend(backend).concurrency(2).build(handler)
    with trio.move_on_after(0.3):  # a forced stop: a's call is in flight, b's ack waits
        await worker.run()
    assert backend.calls == [1, 1]
    assert backend.get(a).state is TaskState.LEASED  # cut short: it runs again later
    assert backend.get(b).state is TaskState.DONE
    assert worker.context.statistics().succeeded == 1


class _ExitFails:
    """A reservation whose exit raises after the inner one was given back."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __aenter__(self) -> None:
        await self.inner.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.inner.__aexit__(*exc_info)
        raise RuntimeError("the reservation could not be given back")


async def test_a_run_whose_reservation_exit_fails_is_still_acked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The worker fails; the settler goes with it, so the ack is stored inline."""
    backend = CountingAcks(delay=0.5)
    task_id = await backend.push(1)

    @turret.layer_fn
    def exit_fails(inner: turret.Service[Any, Any]) -> turret.Service[Any, Any]:
        class Wrapped(turret.Service[Any, Any]):
            async def __call__(self, task: Any, /) -> Any:
                return await inner(task)

            def ready(self) -> Any:
                return _ExitFails(inner.ready())

        return Wrapped()

    async def handler(n: int) -> None:
        pass

    worker = WorkerBuilder("w").backend(backend).layer(exit_fails).build(handler)
    with pytest.raises(BaseExceptionGroup) as caught:
        await worker.run_until(after(1))
    assert caught.value.subgroup(RuntimeError) is not None
    assert backend.calls == [1]
    assert backend.get(task_id).state is TaskState.DONE  # the work was done: stored anyway
    assert worker.context.statistics().succeeded == 1
