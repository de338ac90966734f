"""A hypothesis state machine: push / claim / settle / expire against a simple model.

Each step runs in its own ``trio.run`` and opens the backend afresh (for SQLite: a new
connection on the same file, as a restarted process would), on an injected clock that
the machine advances without sleeping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from turret import Backend, LeaseLost, Renewal, TaskId, TaskState

from .conftest import KITS, Kit

TTL = 30.0
AGING = 10.0
MAX_LOST = 2
Q = "q"


class FakeClock:
    """An injectable backend clock: advanced by hand, never sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class M:
    """The model of one task."""

    id: TaskId
    priority: int
    max_attempts: int
    unique_key: str | None
    run_at: float
    order: float
    state: TaskState
    attempt: int = 0
    lost: int = 0
    token: int = 0
    deadline: float = 0.0


class QueueMachine(RuleBasedStateMachine):
    def __init__(self, kit: Kit, key: str) -> None:
        super().__init__()
        self.kit = kit
        self.key = key
        self.clock = FakeClock()
        self.tasks: dict[TaskId, M] = {}
        self.stale: list[tuple[TaskId, int]] = []
        self.reclaimed = 0  # expired leases taken back, ever (QueueStats.reclaimed)

    def run(self, fn: Callable[[Backend], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            async with self.kit.open(
                self.key, clock=self.clock, aging=AGING, max_lost=MAX_LOST
            ) as backend:
                return await fn(backend)

        return trio.run(main)

    # --- the model's rules ----------------------------------------------------------

    def due(self) -> list[M]:
        now = self.clock.now
        ready = [
            m
            for m in self.tasks.values()
            if m.state is TaskState.PENDING or (m.state is TaskState.SCHEDULED and m.run_at <= now)
        ]
        return sorted(ready, key=lambda m: (m.order, m.id))

    def reclaim_model(self) -> None:
        now = self.clock.now
        for m in self.tasks.values():
            if m.state is TaskState.LEASED and m.deadline <= now:
                self.reclaimed += 1
                m.lost += 1
                if m.lost >= MAX_LOST or m.attempt >= m.max_attempts:
                    m.state = TaskState.DEAD
                else:
                    m.state = TaskState.PENDING
                    m.run_at = now

    def live_key(self, key: str) -> M | None:
        for m in self.tasks.values():
            if m.unique_key == key and not m.state.finished:
                return m
        return None

    def leased(self) -> list[M]:
        return sorted(
            (m for m in self.tasks.values() if m.state is TaskState.LEASED), key=lambda m: m.id
        )

    # --- rules --------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.run(lambda b: b.stats())

    @rule(
        priority=st.integers(-2, 2),
        delay=st.sampled_from([0.0, 0.0, 5.0, 20.0]),
        key=st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
        max_attempts=st.integers(1, 3),
    )
    def push(self, priority: int, delay: float, key: str | None, max_attempts: int) -> None:
        task_id: TaskId = self.run(
            lambda b: b.push(
                "x",
                queue=Q,
                priority=priority,
                delay=delay,
                unique_key=key,
                max_attempts=max_attempts,
            )
        )
        existing = self.live_key(key) if key is not None else None
        if existing is not None:
            assert task_id == existing.id
            return
        now = self.clock.now
        run_at = now + delay
        self.tasks[task_id] = M(
            id=task_id,
            priority=priority,
            max_attempts=max_attempts,
            unique_key=key,
            run_at=run_at,
            order=max(now, run_at) - priority * AGING,
            state=TaskState.PENDING if run_at <= now else TaskState.SCHEDULED,
        )

    @rule(limit=st.integers(1, 4))
    def claim(self, limit: int) -> None:
        tasks = self.run(lambda b: b.claim(Q, owner="w", limit=limit, lease_ttl=TTL))
        self.reclaim_model()
        expected = self.due()[:limit]
        assert [t.id for t in tasks] == [m.id for m in expected]
        for t, m in zip(tasks, expected, strict=True):
            m.state = TaskState.LEASED
            m.attempt += 1
            assert t.ctx.attempt == m.attempt
            assert t.ctx.lease.token > m.token
            if m.token:
                self.stale.append((m.id, m.token))
            m.token = t.ctx.lease.token
            m.deadline = self.clock.now + TTL

    @precondition(lambda self: self.leased())
    @rule(
        data=st.data(),
        how=st.sampled_from(["ack", "retry", "retry_later", "dead", "release", "renew"]),
    )
    def settle(self, data: st.DataObject, how: str) -> None:
        m = data.draw(st.sampled_from(self.leased()))
        now = self.clock.now
        valid = m.deadline > now

        async def op(b: Backend) -> Any:
            if how == "ack":
                return await b.ack(m.id, m.token)
            if how in ("retry", "retry_later"):
                delay = 0.0 if how == "retry" else 7.0
                return await b.retry(m.id, m.token, delay=delay, error="e")
            if how == "dead":
                return await b.dead(m.id, m.token, reason="r")
            if how == "release":
                return await b.release(m.id, m.token)
            return await b.renew([(m.id, m.token)], lease_ttl=TTL)

        if not valid:
            if how == "renew":
                assert self.run(op) == [Renewal.LOST]
            else:
                with pytest.raises(LeaseLost):
                    self.run(op)
            return
        result = self.run(op)
        if how == "ack":
            m.state = TaskState.DONE
        elif how in ("retry", "retry_later"):
            m.run_at = now + (0.0 if how == "retry" else 7.0)
            m.order = m.run_at - m.priority * AGING
            m.state = TaskState.PENDING if how == "retry" else TaskState.SCHEDULED
        elif how == "dead":
            m.state = TaskState.DEAD
        elif how == "release":
            m.attempt -= 1
            m.state = TaskState.PENDING
        else:
            assert result == [Renewal.RENEWED]
            m.deadline = now + TTL

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def stale_settle_is_refused(self, data: st.DataObject) -> None:
        task_id, token = data.draw(st.sampled_from(self.stale))
        with pytest.raises(LeaseLost):
            self.run(lambda b: b.ack(task_id, token))

    @rule(dt=st.sampled_from([1.0, 6.0, 15.0, 31.0]))
    def advance(self, dt: float) -> None:
        self.clock.now += dt

    @rule()
    def reclaim(self) -> None:
        expected = sum(
            1
            for m in self.tasks.values()
            if m.state is TaskState.LEASED and m.deadline <= self.clock.now
        )
        assert self.run(lambda b: b.reclaim()) == expected
        self.reclaim_model()

    # --- invariants -----------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        async def snapshot(b: Backend) -> Any:
            return await b.stats(), [await b.get_task(i) for i in self.tasks]

        stats, infos = self.run(snapshot)
        counts = {s: 0 for s in TaskState}
        for m in self.tasks.values():
            # The store promotes scheduled tasks lazily: count them as either.
            counts[m.state] += 1
        got = {s.queue: s for s in stats}.get(Q)
        if got is None:  # a backend may list a queue only once it holds tasks
            assert not self.tasks
            return
        assert got.leased == counts[TaskState.LEASED]
        assert got.done == counts[TaskState.DONE]
        assert got.dead == counts[TaskState.DEAD]
        assert got.reclaimed == self.reclaimed
        assert (
            got.pending + got.scheduled == counts[TaskState.PENDING] + counts[TaskState.SCHEDULED]
        )
        for m, info in zip(self.tasks.values(), infos, strict=True):
            assert info is not None
            if m.state in (TaskState.PENDING, TaskState.SCHEDULED):
                assert info.state in (TaskState.PENDING, TaskState.SCHEDULED)
            else:
                assert info.state is m.state, (m, info)
            assert (info.attempt, info.lost) == (m.attempt, m.lost), (m, info)


@pytest.mark.parametrize("name", sorted(KITS))
def test_queue_model(name: str, tmp_path: Path) -> None:
    kit = KITS[name](tmp_path)
    counter = iter(range(1_000_000))
    run_state_machine_as_test(
        lambda: QueueMachine(kit, f"model{next(counter)}"),
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
