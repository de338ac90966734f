"""The contract seen through real workers: several workers, fencing, release, cancel."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import turret
from turret import (
    Backend,
    Job,
    JsonCodec,
    TaskContext,
    TaskId,
    TaskInfo,
    TaskState,
    WorkerBuilder,
    wait_result,
)

from .conftest import Kit

TTL = 3.0


async def info(backend: Backend, task_id: TaskId) -> TaskInfo:
    got = await backend.get_task(task_id)
    assert got is not None
    return got


async def drain(backend: Backend, queue: str = "default") -> None:
    """Wait (virtual time) until ``queue`` has nothing pending, scheduled or leased."""
    with trio.fail_after(600):
        while True:
            stats = {s.queue: s for s in await backend.stats()}
            s = stats.get(queue)
            if s is not None and s.pending + s.scheduled + s.leased == 0:
                return
            await trio.sleep(0.1)


def builder(backend: Backend, name: str = "w", **kw: Any) -> WorkerBuilder:
    return WorkerBuilder(name).backend(backend).lease_ttl(TTL).poll_interval(0.5)


async def test_worker_runs_and_stores_result(
    backend: Backend, vclock: trio.testing.MockClock
) -> None:
    async def double(n: int) -> int:
        await trio.sleep(0.1)
        return 2 * n

    worker = builder(backend).build(double)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        task_id = await backend.push(21)
        with trio.fail_after(30):
            got = await wait_result(backend, task_id, poll_interval=0.1)
        worker.context.stop()
    assert got.state is TaskState.DONE
    assert got.result is not None
    assert backend.codec.decode(got.result) == 42


class _BrokenCodec(JsonCodec):
    """Encodes the string "garbage" as bytes that are not JSON."""

    def encode(self, value: object) -> bytes:
        return b"\xff{not json" if value == "garbage" else super().encode(value)


async def test_invalid_payloads_go_dead_and_the_worker_keeps_running(
    kit: Kit, vclock: trio.testing.MockClock
) -> None:
    async with kit.open(clock=trio.current_time, codec=_BrokenCodec()) as backend:
        seen: list[int] = []

        async def handler(n: int) -> None:
            seen.append(n)

        bad_type, garbage, good = await backend.push_many([Job("abc"), Job("garbage"), Job(7)])
        worker = builder(backend).build(handler)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await drain(backend)
            worker.context.stop()
        assert seen == [7]
        first = await info(backend, bad_type)
        assert first.state is TaskState.DEAD
        assert (first.dead_reason or "").startswith("invalid payload: payload does not fit int")
        second = await info(backend, garbage)
        assert second.state is TaskState.DEAD
        assert "not valid JSON" in (second.dead_reason or "")
        assert (await info(backend, good)).state is TaskState.DONE
        assert worker.context.statistics().dead_lettered == 2


async def test_failures_retry_then_dead_letter(
    backend: Backend, vclock: trio.testing.MockClock
) -> None:
    attempts: list[int] = []

    async def flaky(n: int, ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        raise ValueError("boom")

    task_id = await backend.push(1, max_attempts=3)
    worker = builder(backend).build(flaky)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await drain(backend)
        worker.context.stop()
    got = await info(backend, task_id)
    assert attempts == [1, 2, 3]
    assert got.state is TaskState.DEAD
    assert "failed on attempt 3/3" in (got.dead_reason or "")
    assert "ValueError: boom" in (got.last_error or "")


async def test_several_workers_never_share_a_valid_lease(
    kit: Kit, vclock: trio.testing.MockClock
) -> None:
    runs: list[tuple[str, TaskId]] = []
    active: set[TaskId] = set()

    async with kit.open(clock=trio.current_time) as b1, kit.open(clock=trio.current_time) as b2:
        # Two handles on one store: two processes' view for SQLite.
        ids = await b1.push_many([Job(i) for i in range(60)])

        def make(name: str) -> Any:
            async def handler(n: int, ctx: TaskContext) -> None:
                assert ctx.id not in active, f"{ctx.id} handled twice at once"
                active.add(ctx.id)
                runs.append((name, ctx.id))
                await trio.sleep(0.05 * (n % 4))
                active.discard(ctx.id)

            return handler

        workers = [
            builder(b, f"w{i}").concurrency(4).build(make(f"w{i}"))
            for i, b in enumerate([b1, b2, b1])
        ]
        async with trio.open_nursery() as nursery:
            for w in workers:
                nursery.start_soon(w.run)
            await drain(b1)
            for w in workers:
                w.context.stop()
        handled = [task_id for _, task_id in runs]
        assert sorted(handled) == sorted(ids)  # each exactly once
        assert len({name for name, _ in runs}) >= 2  # the work was shared
        for task_id in ids:
            got = await info(b2, task_id)
            assert got.state is TaskState.DONE
            assert got.attempt == 1
            assert got.lost == 0


async def test_stale_settle_is_refused_and_reported(
    backend: Backend, vclock: trio.testing.MockClock
) -> None:
    events: list[turret.Event] = []
    stolen: list[Any] = []
    rejected = trio.Event()

    def on_event(event: turret.Event) -> None:
        events.append(event)
        if isinstance(event, turret.LeaseRejected):
            rejected.set()

    async def handler(n: int, ctx: TaskContext) -> None:
        # Simulate a long stall: the lease runs out, another worker takes the task.
        vclock.jump(TTL + 1)
        with trio.CancelScope(shield=True):
            stolen.extend(await backend.claim("default", owner="thief", limit=1, lease_ttl=60))

    task_id = await backend.push(1)
    # One slot, busy in the handler: the worker itself cannot reclaim the expired lease.
    worker = builder(backend).concurrency(1).on_event(on_event).build(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        with trio.fail_after(30):
            await rejected.wait()
        worker.context.stop()
    (thief,) = stolen
    assert thief.ctx.attempt == 2
    got = await info(backend, task_id)
    assert got.state is TaskState.LEASED
    assert got.owner == "thief"
    assert got.lost == 1
    assert worker.context.statistics().lease_rejected == 1
    await backend.ack(task_id, thief.ctx.lease.token)
    assert (await info(backend, task_id)).state is TaskState.DONE


async def test_shutdown_releases_without_consuming_an_attempt(
    backend: Backend, vclock: trio.testing.MockClock
) -> None:
    started = trio.Event()
    events: list[turret.Event] = []

    async def stuck(n: int) -> None:
        started.set()
        await trio.sleep_forever()

    task_id = await backend.push(1)
    worker = builder(backend).grace_period(1.0).on_event(events.append).build(stuck)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await started.wait()
        assert (await info(backend, task_id)).state is TaskState.LEASED
        worker.context.stop()
    got = await info(backend, task_id)
    assert got.state is TaskState.PENDING
    assert got.attempt == 0
    assert got.owner is None
    assert any(isinstance(e, turret.TaskReleased) for e in events)


async def test_cancel_request_is_noticed_within_one_heartbeat(
    backend: Backend, vclock: trio.testing.MockClock
) -> None:
    started = trio.Event()

    async def stuck(n: int) -> None:
        started.set()
        await trio.sleep_forever()

    task_id = await backend.push(1)
    worker = builder(backend).build(stuck)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await started.wait()
        asked = trio.current_time()
        assert await backend.cancel(task_id, reason="user asked")
        with trio.fail_after(60):
            got = await wait_result(backend, task_id, poll_interval=0.05)
        assert trio.current_time() - asked <= TTL / 3 + 0.1
        worker.context.stop()
    assert got.state is TaskState.DEAD
    assert "cancel" in (got.dead_reason or "")
    assert worker.context.statistics().dead_lettered == 1


async def test_paused_queue_is_not_claimed_by_workers(
    backend: Backend, vclock: trio.testing.MockClock
) -> None:
    done: list[int] = []

    async def handler(n: int) -> None:
        done.append(n)

    await backend.pause_queue("default")
    await backend.push(1)
    worker = builder(backend).build(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(5)
        assert done == []
        await backend.resume_queue("default")
        await drain(backend)
        worker.context.stop()
    assert done == [1]


async def test_expired_lease_of_a_dead_worker_is_taken_over(
    backend: Backend, vclock: trio.testing.MockClock
) -> None:
    async def handler(n: int) -> None:
        await trio.sleep(0.1)

    task_id = await backend.push(1)
    # A worker claims and "crashes": it never renews nor settles.
    (_crashed,) = await backend.claim("default", owner="crashed", limit=1, lease_ttl=TTL)
    worker = builder(backend).build(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        start = trio.current_time()
        with trio.fail_after(60):
            got = await wait_result(backend, task_id, poll_interval=0.1)
        # Picked up once the lease ran out, bounded by the worker's poll interval.
        assert trio.current_time() - start <= TTL + 0.5 + 0.2
        worker.context.stop()
    assert got.state is TaskState.DONE
    assert (got.attempt, got.lost, got.last_error) == (2, 1, "worker lost")
