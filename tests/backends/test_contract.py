"""Every operation of the backend contract, one backend at a time (see conftest.KITS)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing

from turret import (
    Backend,
    Job,
    LeaseLost,
    PayloadTooLarge,
    QueueStats,
    Renewal,
    TaskId,
    TaskInfo,
    TaskState,
    UnknownTask,
    wait_result,
)

from .conftest import Kit

TTL = 30.0


async def info(backend: Backend, task_id: TaskId) -> TaskInfo:
    got = await backend.get_task(task_id)
    assert got is not None
    return got


async def claim(backend: Backend, queue: str = "default", limit: int = 1, owner: str = "w1") -> Any:
    return await backend.claim(queue, owner=owner, limit=limit, lease_ttl=TTL)


async def claim_one(backend: Backend, queue: str = "default", owner: str = "w1") -> Any:
    (task,) = await claim(backend, queue, owner=owner)
    return task


# --- push -------------------------------------------------------------------------


async def test_push_stores_everything(backend: Backend, mock_clock: trio.testing.MockClock) -> None:
    task_id = await backend.push(
        {"n": 1}, queue="q", priority=3, max_attempts=5, headers={"traceparent": "00-x"}
    )
    got = await info(backend, task_id)
    assert got.id == task_id
    assert got.queue == "q"
    assert got.state is TaskState.PENDING
    assert backend.codec.decode(got.args) == {"n": 1}
    assert (got.attempt, got.max_attempts, got.priority) == (0, 5, 3)
    assert got.headers == {"traceparent": "00-x"}
    assert got.enqueued_at == got.run_at == backend.now()
    assert got.result is None
    assert got.dead_reason is None
    assert not got.cancel_requested
    assert await backend.get_task(TaskId.new()) is None


async def test_push_uses_default_max_attempts(kit: Kit) -> None:
    async with kit.open(default_max_attempts=7) as backend:
        got = await info(backend, await backend.push(1))
        assert got.max_attempts == 7


async def test_push_many_in_order_and_all_or_nothing(kit: Kit) -> None:
    async with kit.open(max_payload_bytes=100) as backend:
        ids = await backend.push_many([Job(i, queue="m") for i in range(50)])
        assert len(set(ids)) == 50
        tasks = await backend.claim("m", owner="w", limit=100, lease_ttl=TTL)
        assert [t.id for t in tasks] == ids
        assert [backend.codec.decode(t.args) for t in tasks] == list(range(50))
        assert await backend.push_many([]) == []
        with pytest.raises(PayloadTooLarge, match="max_payload_bytes=100"):
            await backend.push_many([Job(1, queue="big"), Job("x" * 200, queue="big")])
        assert [s for s in await backend.stats() if s.queue == "big" and s.pending] == []


async def test_payload_too_large_names_the_fix(kit: Kit) -> None:
    async with kit.open(max_payload_bytes=64) as backend:
        await backend.push("x" * 50)
        with pytest.raises(PayloadTooLarge, match="raise the limit"):
            await backend.push("x" * 100)


async def test_bad_job_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="delay"):
        Job(1, delay=-1)
    with pytest.raises(ValueError, match="queue"):
        Job(1, queue="")
    with pytest.raises(ValueError, match="max_attempts"):
        Job(1, max_attempts=0)


# --- claim, order -----------------------------------------------------------------


async def test_claim_gives_a_lease(backend: Backend, mock_clock: trio.testing.MockClock) -> None:
    task_id = await backend.push("a", headers={"h": "v"})
    assert await claim(backend, "other") == []
    task = await claim_one(backend)
    assert task.id == task_id
    assert task.ctx.attempt == 1
    assert task.ctx.headers == {"h": "v"}
    assert task.ctx.lease.owner == "w1"
    assert task.ctx.lease.deadline == backend.now() + TTL
    got = await info(backend, task_id)
    assert got.state is TaskState.LEASED
    assert got.owner == "w1"
    assert got.attempt == 1
    assert got.token == task.ctx.lease.token
    assert await claim(backend) == []  # leased: nobody else gets it


async def test_claim_respects_limit(backend: Backend) -> None:
    await backend.push_many([Job(i) for i in range(5)])
    assert len(await claim(backend, limit=2)) == 2
    assert len(await claim(backend, limit=10)) == 3
    assert await claim(backend, limit=10) == []


async def test_order_priority_then_fifo(backend: Backend) -> None:
    low = await backend.push("low", priority=0)
    high1 = await backend.push("high1", priority=5)
    mid = await backend.push("mid", priority=2)
    high2 = await backend.push("high2", priority=5)
    tasks = await claim(backend, limit=10)
    assert [t.id for t in tasks] == [high1, high2, mid, low]


async def test_aging_lets_low_priority_through(
    kit: Kit, mock_clock: trio.testing.MockClock
) -> None:
    async with kit.open(clock=trio.current_time, aging=10.0) as backend:
        old = await backend.push("old", priority=0)
        mock_clock.jump(25)  # waited 25 s: worth 2.5 priority levels
        high = await backend.push("high", priority=2)
        higher = await backend.push("higher", priority=3)
        tasks = await claim(backend, limit=3)
        assert [t.id for t in tasks] == [higher, old, high]


async def test_scheduled_invisible_until_run_at(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    later = await backend.push("later", delay=10)
    got = await info(backend, later)
    assert got.state is TaskState.SCHEDULED
    assert got.run_at == backend.now() + 10
    (stats,) = await backend.stats()
    assert (stats.scheduled, stats.pending) == (1, 0)
    assert await claim(backend) == []
    mock_clock.jump(9.5)
    assert await claim(backend) == []
    mock_clock.jump(0.5)
    assert (await claim_one(backend)).id == later


async def test_earlier_run_at_first(backend: Backend, mock_clock: trio.testing.MockClock) -> None:
    b = await backend.push("b", delay=20)
    a = await backend.push("a", delay=10)
    now = await backend.push("now")
    mock_clock.jump(30)
    assert [t.id for t in await claim(backend, limit=3)] == [now, a, b]


async def test_unique_key_while_live(backend: Backend) -> None:
    first = await backend.push(1, unique_key="report:42")
    assert await backend.push(2, unique_key="report:42") == first
    ids = await backend.push_many([Job(3, unique_key="report:42"), Job(4, unique_key="other")])
    assert ids[0] == first
    assert ids[1] != first
    task = await claim_one(backend)
    assert await backend.push(5, unique_key="report:42") == first  # leased is live
    await backend.ack(task.id, task.ctx.lease.token)
    again = await backend.push(6, unique_key="report:42")
    assert again != first
    assert (await info(backend, first)).unique_key == "report:42"


# --- lease: renew, fencing, reclaim, poison ---------------------------------------


async def test_renew_extends_and_reports_lost(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    await backend.push_many([Job(1), Job(2)])
    a, b = await claim(backend, limit=2)
    mock_clock.jump(20)
    verdicts = await backend.renew(
        [(a.id, a.ctx.lease.token), (b.id, b.ctx.lease.token + 1), (TaskId.new(), 1)],
        lease_ttl=TTL,
    )
    assert verdicts == [Renewal.RENEWED, Renewal.LOST, Renewal.LOST]
    assert (await info(backend, a.id)).lease_deadline == backend.now() + TTL
    mock_clock.jump(20)  # b's lease (not renewed) expired; a's still valid
    await backend.ack(a.id, a.ctx.lease.token)
    with pytest.raises(LeaseLost):
        await backend.ack(b.id, b.ctx.lease.token)
    assert await backend.renew([(b.id, b.ctx.lease.token)], lease_ttl=TTL) == [Renewal.LOST]
    assert await backend.renew([], lease_ttl=TTL) == []


async def test_fencing_refuses_stale_settles(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    task_id = await backend.push("x")
    first = await claim_one(backend, owner="slow")
    mock_clock.jump(TTL + 1)
    second = await claim_one(backend, owner="fast")  # reclaimed, then claimed again
    assert second.id == task_id
    assert second.ctx.attempt == 2
    assert second.ctx.lease.token > first.ctx.lease.token
    stale = first.ctx.lease.token
    with pytest.raises(LeaseLost):
        await backend.ack(task_id, stale)
    with pytest.raises(LeaseLost):
        await backend.retry(task_id, stale, delay=0, error="boom")
    with pytest.raises(LeaseLost):
        await backend.dead(task_id, stale, reason="boom")
    with pytest.raises(LeaseLost):
        await backend.release(task_id, stale)
    got = await info(backend, task_id)
    assert got.state is TaskState.LEASED
    assert got.owner == "fast"
    await backend.ack(task_id, second.ctx.lease.token)
    with pytest.raises(LeaseLost):  # settled: even the right token is refused now
        await backend.ack(task_id, second.ctx.lease.token)


async def test_ack_many_stores_each_ack_and_refuses_each_stale_one(
    kit: Kit, mock_clock: trio.testing.MockClock
) -> None:
    async with kit.open(clock=trio.current_time, result_ttl=100.0) as backend:
        ids = [await backend.push(i) for i in range(3)]
        first = await claim_one(backend, owner="slow")  # ids[0]
        mock_clock.jump(TTL + 1)
        tasks = {t.id: t for t in await claim(backend, limit=3, owner="fast")}  # all three
        again = tasks[ids[0]]  # reclaimed from "slow" and claimed again
        assert again.ctx.lease.token != first.ctx.lease.token
        result = backend.codec.encode("ok")
        outcomes = await backend.ack_many(
            [
                (ids[0], first.ctx.lease.token, None),  # stale: the newer claim wins
                (ids[1], tasks[ids[1]].ctx.lease.token, result),
                (ids[0], again.ctx.lease.token, None),  # the same task, its current token
                (ids[2], tasks[ids[2]].ctx.lease.token + 1000, None),  # a token never given
            ]
        )
        assert [type(o) for o in outcomes] == [LeaseLost, type(None), type(None), LeaseLost]
        assert "stale" in str(outcomes[0])
        for task_id in ids[:2]:
            assert (await info(backend, task_id)).state is TaskState.DONE
        got = await info(backend, ids[1])
        assert got.result is not None
        assert backend.codec.decode(got.result) == "ok"
        assert got.result_expires_at == backend.now() + 100
        assert (await info(backend, ids[2])).state is TaskState.LEASED  # refused, untouched
        assert await backend.ack_many([]) == []
        (again_lost,) = await backend.ack_many([(ids[1], tasks[ids[1]].ctx.lease.token, None)])
        assert isinstance(again_lost, LeaseLost)  # settled: even the right token is refused


async def test_token_grows_on_every_claim_and_is_unique(backend: Backend) -> None:
    task_id = await backend.push("x")
    await backend.push_many([Job(i, queue="other") for i in range(3)])
    tokens = []
    for _ in range(3):
        task = await claim_one(backend)
        tokens.append(task.ctx.lease.token)
        await backend.release(task_id, task.ctx.lease.token)
        tokens.extend(t.ctx.lease.token for t in await claim(backend, "other"))
    assert tokens == sorted(set(tokens))  # strictly increasing: one token, one claim


async def test_expired_but_unreclaimed_lease_is_refused(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    await backend.push("x")
    task = await claim_one(backend)
    mock_clock.jump(TTL)
    with pytest.raises(LeaseLost, match="expired"):
        await backend.ack(task.id, task.ctx.lease.token)


async def test_reclaim_counts_an_attempt_worker_lost(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    task_id = await backend.push("x")
    await claim_one(backend)
    assert await backend.reclaim() == 0
    mock_clock.jump(TTL + 1)
    assert await backend.reclaim() == 1
    got = await info(backend, task_id)
    assert got.state is TaskState.PENDING
    assert (got.attempt, got.lost, got.last_error) == (1, 1, "worker lost")
    assert got.owner is None
    assert (await claim_one(backend)).ctx.attempt == 2


async def test_reclaimed_task_keeps_its_place(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    first = await backend.push("first")
    await claim_one(backend)
    second = await backend.push("second")
    mock_clock.jump(TTL + 1)
    assert [t.id for t in await claim(backend, limit=2)] == [first, second]


async def test_poison_task_dead_after_max_lost(
    kit: Kit, mock_clock: trio.testing.MockClock
) -> None:
    async with kit.open(clock=trio.current_time, max_lost=2, default_max_attempts=10) as backend:
        task_id = await backend.push("poison")
        for _ in range(2):
            await claim_one(backend)
            mock_clock.jump(TTL + 1)
        assert await claim(backend) == []
        got = await info(backend, task_id)
        assert got.state is TaskState.DEAD
        assert got.dead_reason == "worker lost 2 times"
        assert got.lost == 2


async def test_lost_on_last_attempt_goes_dead(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    task_id = await backend.push("x", max_attempts=1)
    await claim_one(backend)
    mock_clock.jump(TTL + 1)
    await backend.reclaim()
    got = await info(backend, task_id)
    assert got.state is TaskState.DEAD
    assert "worker lost" in (got.dead_reason or "")


def reclaimed(stats: list[QueueStats]) -> dict[str, int]:
    return {s.queue: s.reclaimed for s in stats}


async def test_stats_count_reclaimed_leases_per_queue(
    kit: Kit, backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    await backend.push("r1", queue="r")
    await backend.push("o1", queue="other")
    await claim_one(backend, "r")
    assert reclaimed(await backend.stats()) == {"r": 0, "other": 0}
    # Reclaimed by the next claim of the queue (then claimed again).
    mock_clock.jump(TTL + 1)
    again = await claim_one(backend, "r")
    assert again.ctx.attempt == 2
    assert reclaimed(await backend.stats()) == {"r": 1, "other": 0}
    await backend.ack(again.id, again.ctx.lease.token)
    # Reclaimed by an explicit reclaim(); a settled task stays counted.
    await claim_one(backend, "other")
    mock_clock.jump(TTL + 1)
    assert await backend.reclaim() == 1
    assert reclaimed(await backend.stats()) == {"r": 1, "other": 1}
    assert await backend.reclaim() == 0  # nothing expired: nothing counted
    # A reclaim that dead-letters the task (lost on its last attempt) counts too.
    last = await backend.push("last", queue="r", max_attempts=1)
    await claim_one(backend, "r")
    mock_clock.jump(TTL + 1)
    assert await backend.reclaim() == 1
    assert (await info(backend, last)).state is TaskState.DEAD
    assert reclaimed(await backend.stats()) == {"r": 2, "other": 1}
    # The counter belongs to the store: another handle (process) sees it.
    async with kit.open(clock=trio.current_time) as other_handle:
        assert reclaimed(await other_handle.stats()) == {"r": 2, "other": 1}


async def test_reclaimed_counts_poison_and_cancelled(
    kit: Kit, mock_clock: trio.testing.MockClock
) -> None:
    async with kit.open(clock=trio.current_time, max_lost=2, default_max_attempts=10) as backend:
        poison = await backend.push("poison", queue="p")
        for _ in range(2):
            await claim_one(backend, "p")
            mock_clock.jump(TTL + 1)
        assert await claim(backend, "p") == []  # the second expiry made it dead
        assert (await info(backend, poison)).dead_reason == "worker lost 2 times"
        cancelled = await backend.push("c", queue="p")
        await claim_one(backend, "p")
        assert await backend.cancel(cancelled)
        mock_clock.jump(TTL + 1)
        assert await backend.reclaim() == 1
        assert ((await info(backend, cancelled)).dead_reason or "").startswith("cancelled")
        (stats,) = await backend.stats()
        assert (stats.queue, stats.dead, stats.reclaimed) == ("p", 2, 3)


# --- settle -------------------------------------------------------------------------


async def test_ack_stores_result_for_its_retention(
    kit: Kit, mock_clock: trio.testing.MockClock
) -> None:
    async with kit.open(clock=trio.current_time, result_ttl=100.0) as backend:
        task_id = await backend.push(21)
        task = await claim_one(backend)
        await backend.ack(task_id, task.ctx.lease.token, result=backend.codec.encode(42))
        got = await info(backend, task_id)
        assert got.state is TaskState.DONE
        assert got.owner is None
        assert got.result is not None
        assert backend.codec.decode(got.result) == 42
        assert got.result_expires_at == backend.now() + 100
        mock_clock.jump(100)
        got = await info(backend, task_id)
        assert got.state is TaskState.DONE
        assert got.result is None


async def ack_all(backend: Backend, n: int, result: Any = None) -> list[TaskId]:
    ids = [await backend.push(i) for i in range(n)]
    for task in await claim(backend, limit=n):
        payload = None if result is None else backend.codec.encode(result)
        await backend.ack(task.ctx.id, task.ctx.lease.token, result=payload)
    return ids


async def test_done_task_is_forgotten_after_done_ttl_and_its_result(
    kit: Kit, mock_clock: trio.testing.MockClock
) -> None:
    async with kit.open(clock=trio.current_time, done_ttl=100.0, result_ttl=250.0) as backend:
        (plain,) = await ack_all(backend, 1)
        (with_result,) = await ack_all(backend, 1, result=42)
        mock_clock.jump(99)
        assert (await info(backend, plain)).state is TaskState.DONE
        mock_clock.jump(1)
        # Gone at done_ttl, before any prune has deleted it.
        assert await backend.get_task(plain) is None
        kept = await info(backend, with_result)  # kept as long as its result
        assert kept.state is TaskState.DONE
        assert kept.result is not None
        mock_clock.jump(150)
        assert await backend.get_task(with_result) is None


async def test_prune_deletes_done_tasks_past_retention_only(
    kit: Kit, mock_clock: trio.testing.MockClock
) -> None:
    async with kit.open(clock=trio.current_time, done_ttl=100.0) as backend:
        old = await ack_all(backend, 3)
        dead_id = await backend.push("poison")
        task = await claim_one(backend)
        await backend.dead(dead_id, task.ctx.lease.token, reason="bad")
        mock_clock.jump(60)
        young = await ack_all(backend, 2)
        waiting = await backend.push("later")
        mock_clock.jump(40)
        assert await backend.prune() == 3
        assert await backend.prune() == 0
        (stats,) = await backend.stats()
        assert (stats.done, stats.dead, stats.pending) == (2, 1, 1)
        for task_id in old:
            assert await backend.get_task(task_id) is None
        for task_id in young:
            assert (await info(backend, task_id)).state is TaskState.DONE
        assert (await info(backend, waiting)).state is TaskState.PENDING
        # Dead letters are kept until replayed, however old.
        mock_clock.jump(10 * 365 * 86400)
        assert await backend.prune() == 2
        assert [t.id for t in await backend.dead_letters("default")] == [dead_id]


@pytest.mark.parametrize("forever", ["done_ttl", "result_ttl"])
async def test_done_tasks_are_kept_for_ever_with_no_ttl(
    kit: Kit, mock_clock: trio.testing.MockClock, forever: str
) -> None:
    """``done_ttl=None`` keeps done tasks for ever, and so does ``result_ttl=None``
    (results kept for ever keep their tasks)."""
    async with kit.open(clock=trio.current_time, **{forever: None}) as backend:
        (task_id,) = await ack_all(backend, 1)
        mock_clock.jump(10 * 365 * 86400)
        assert await backend.prune() == 0
        assert (await info(backend, task_id)).state is TaskState.DONE


async def test_an_ack_forgets_old_done_tasks_on_its_own(
    kit: Kit, mock_clock: trio.testing.MockClock
) -> None:
    async with kit.open(clock=trio.current_time, done_ttl=10.0) as backend:
        await ack_all(backend, 2)
        mock_clock.jump(61)  # past done_ttl and the minute between prunes
        await ack_all(backend, 1)
        # PostgreSQL prunes in the background: let it finish. The clock is mocked, so
        # the bound is real time, and only a failure reaches it (a count of checkpoints
        # ran out on a loaded machine before the prune's connection was up).
        give_up = time.monotonic() + 30
        while True:
            (stats,) = await backend.stats()
            if stats.done == 1 or time.monotonic() > give_up:
                break
            await trio.lowlevel.checkpoint()
        assert stats.done == 1


async def test_retry_consumes_attempt_and_waits(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    task_id = await backend.push("x")
    task = await claim_one(backend)
    await backend.retry(task_id, task.ctx.lease.token, delay=5, error="ValueError: boom")
    got = await info(backend, task_id)
    assert got.state is TaskState.SCHEDULED
    assert got.last_error == "ValueError: boom"
    assert got.run_at == backend.now() + 5
    assert await claim(backend) == []
    mock_clock.jump(5)
    again = await claim_one(backend)
    assert again.ctx.attempt == 2
    assert again.ctx.run_at == got.run_at


async def test_retry_now_is_pending(backend: Backend) -> None:
    task_id = await backend.push("x")
    task = await claim_one(backend)
    await backend.retry(task_id, task.ctx.lease.token, delay=0, error="e")
    assert (await info(backend, task_id)).state is TaskState.PENDING


async def test_dead_letters_and_replay(backend: Backend) -> None:
    ids = await backend.push_many([Job(i, queue="d") for i in range(3)])
    for _ in ids:
        task = await claim_one(backend, "d")
        await backend.dead(task.id, task.ctx.lease.token, reason=f"bad {task.id}")
    dead = await backend.dead_letters("d")
    assert [d.id for d in dead] == ids
    assert dead[0].dead_reason == f"bad {ids[0]}"
    assert dead[0].state is TaskState.DEAD
    assert len(await backend.dead_letters("d", limit=2)) == 2
    assert await backend.dead_letters("other") == []
    assert await backend.replay([ids[0], TaskId.new()]) == [ids[0]]
    got = await info(backend, ids[0])
    assert got.state is TaskState.PENDING
    assert got.attempt == 0
    assert got.dead_reason is None
    assert (await claim_one(backend, "d")).ctx.attempt == 1
    assert await backend.replay([ids[0]]) == []  # not dead any more


async def test_release_keeps_attempt_and_place(backend: Backend) -> None:
    first = await backend.push("first")
    task = await claim_one(backend)
    second = await backend.push("second")
    await backend.release(first, task.ctx.lease.token)
    got = await info(backend, first)
    assert got.state is TaskState.PENDING
    assert got.attempt == 0
    assert got.owner is None
    tasks = await claim(backend, limit=2)
    assert [t.id for t in tasks] == [first, second]
    assert tasks[0].ctx.attempt == 1


# --- cancel, pause ----------------------------------------------------------------


async def test_cancel_pending_is_immediate(backend: Backend) -> None:
    task_id = await backend.push("x")
    later = await backend.push("y", delay=60)
    assert await backend.cancel(task_id, reason="user asked")
    assert await backend.cancel(later)
    got = await info(backend, task_id)
    assert got.state is TaskState.DEAD
    assert got.dead_reason == "cancelled: user asked"
    assert (await info(backend, later)).dead_reason == "cancelled: cancel requested"
    assert not await backend.cancel(task_id)
    assert not await backend.cancel(TaskId.new())
    assert await claim(backend) == []


async def test_cancel_running_is_reported_by_renew(backend: Backend) -> None:
    task_id = await backend.push("x")
    task = await claim_one(backend)
    assert await backend.cancel(task_id)
    assert (await info(backend, task_id)).cancel_requested
    assert await backend.renew([(task_id, task.ctx.lease.token)], lease_ttl=TTL) == [
        Renewal.CANCEL_REQUESTED
    ]
    await backend.dead(task_id, task.ctx.lease.token, reason="cancelled: cancel requested")
    got = await info(backend, task_id)
    assert got.state is TaskState.DEAD
    assert not got.cancel_requested


@pytest.mark.parametrize("settle", ["retry", "release"])
async def test_cancel_requested_never_goes_back_in_line(backend: Backend, settle: str) -> None:
    task_id = await backend.push("x")
    task = await claim_one(backend)
    await backend.cancel(task_id, reason="stop it")
    if settle == "retry":
        await backend.retry(task_id, task.ctx.lease.token, delay=0, error="e")
    else:
        await backend.release(task_id, task.ctx.lease.token)
    got = await info(backend, task_id)
    assert got.state is TaskState.DEAD
    assert got.dead_reason == "cancelled: stop it"


async def test_cancel_requested_and_lost_goes_dead(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    task_id = await backend.push("x")
    await claim_one(backend)
    await backend.cancel(task_id)
    mock_clock.jump(TTL + 1)
    assert await claim(backend) == []
    got = await info(backend, task_id)
    assert got.state is TaskState.DEAD
    assert (got.dead_reason or "").startswith("cancelled")


async def test_pause_and_resume_queue(backend: Backend) -> None:
    await backend.push("x", queue="p")
    await backend.push("y", queue="other")
    await backend.pause_queue("p")
    await backend.pause_queue("p")  # idempotent
    assert await claim(backend, "p") == []
    assert len(await claim(backend, "other")) == 1
    stats = {s.queue: s for s in await backend.stats()}
    assert stats["p"].paused
    assert stats["p"].pending == 1
    assert not stats["other"].paused
    await backend.resume_queue("p")
    assert len(await claim(backend, "p")) == 1
    with pytest.raises(ValueError, match="queue"):
        await backend.pause_queue("")


# --- stats, wake-ups, results ---------------------------------------------------------


async def test_stats_per_queue_and_state(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    assert await backend.stats() == []
    await backend.push_many([Job(i, queue="a") for i in range(4)] + [Job(0, queue="b", delay=9)])
    t1, t2, _ = await claim(backend, "a", limit=3)
    await backend.ack(t1.id, t1.ctx.lease.token)
    await backend.dead(t2.id, t2.ctx.lease.token, reason="x")
    stats = {s.queue: s for s in await backend.stats()}
    a, b = stats["a"], stats["b"]
    assert (a.pending, a.scheduled, a.leased, a.done, a.dead) == (1, 0, 1, 1, 1)
    assert (b.pending, b.scheduled, b.leased, b.done, b.dead) == (0, 1, 0, 0, 0)


async def test_wait_for_work_wakes_on_push_without_time_passing(
    backend: Backend, mock_clock: trio.testing.MockClock
) -> None:
    woke = trio.Event()

    async def waiter() -> None:
        await backend.wait_for_work("w")
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked(0.05)
        start = trio.current_time()
        await backend.push("x", queue="w")
        with trio.fail_after(1):  # mock clock: never advances, only the push wakes it
            await woke.wait()
        assert trio.current_time() == start


async def test_wait_for_work_returns_at_once_for_work_pushed_while_nobody_waited(
    backend: Backend, vclock: trio.testing.MockClock
) -> None:
    """A push made while no worker was waiting (its wake-up went to nobody) is not missed:
    a worker whose claim ran short just before the push must not sleep a poll interval."""
    # The first wait opens PostgreSQL's listening connection, and on a loaded machine
    # that (or any query) can take longer than vclock's 20 ms: the clock must not jump
    # to the 30 s bound meanwhile. A missed wake-up still fails, after 1 s of real time.
    vclock.autojump_threshold = 1.0
    assert await claim(backend, "w") == []  # the short claim
    await backend.push("x", queue="w")  # nobody waits at this moment
    start = trio.current_time()
    with trio.move_on_after(30):  # the worker's poll interval bounds the wait
        await backend.wait_for_work("w")
    assert trio.current_time() == start, "waited for a wake-up that had already come"
    assert len(await claim(backend, "w")) == 1


async def test_wait_for_work_returns_when_scheduled_falls_due(
    backend: Backend, vclock: trio.testing.MockClock
) -> None:
    await backend.push("x", queue="s", delay=0.25)
    start = trio.current_time()
    await backend.wait_for_work("s")
    assert trio.current_time() - start <= 0.25 + 1e-6


async def test_wait_result(backend: Backend, vclock: trio.testing.MockClock) -> None:
    task_id = await backend.push(21)

    async def work() -> None:
        await trio.sleep(3)
        task = await claim_one(backend)
        await backend.ack(task.id, task.ctx.lease.token, result=backend.codec.encode(42))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        with trio.fail_after(10):
            got = await wait_result(backend, task_id, poll_interval=0.5)
    assert got.state is TaskState.DONE
    assert got.result is not None
    assert backend.codec.decode(got.result) == 42
    with pytest.raises(UnknownTask, match="no task"):
        await wait_result(backend, TaskId.new())
    with pytest.raises(ValueError, match="poll_interval"):
        await wait_result(backend, task_id, poll_interval=0)
