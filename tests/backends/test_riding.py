"""Acks riding on the next claim (``turret.backends._riding``), without a server."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from turret import LeaseLost, TaskId
from turret.backends._riding import ACK_RIDE, AckRides

IDS = [TaskId("a"), TaskId("b")]


def acks(tokens: list[int]) -> list[tuple[TaskId, int, bytes | None]]:
    """Acks of the first tasks of IDS with these tokens, storing no result."""
    return [(task_id, token, None) for task_id, token in zip(IDS, tokens, strict=False)]


async def start_riding(nursery: trio.Nursery, rides: AckRides, *calls: Any) -> None:
    """Start each ``(fn, *args)`` while a claim is under way (acks ride only then), and
    return once they all wait for the next claim."""
    rides.claims_in_flight += 1
    for fn, *args in calls:
        nursery.start_soon(fn, *args)
    await trio.testing.wait_all_tasks_blocked()
    rides.claims_in_flight -= 1


async def test_no_claim_in_time_leaves_the_acks_to_their_caller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rides = AckRides()
    rides.claims_in_flight = 1  # a claim is under way, but none follows
    start = trio.current_time()
    assert await rides.ride(acks([1, 2]), limit=10) is None
    assert trio.current_time() - start == pytest.approx(ACK_RIDE)
    assert not rides.waiting and rides.carried == 0


async def test_a_claim_answers_the_acks_it_took() -> None:
    rides = AckRides()
    got: list[object] = []

    async def ride() -> None:
        got.append(await rides.ride(acks([1, 2]), limit=10))

    async with trio.open_nursery() as nursery:
        await start_riding(nursery, rides, (ride,))
        riders = rides.take(limit=10)
        assert [r.ids for r in riders] == [IDS] and not rides.waiting
        with rides.claiming(riders):
            assert rides.claims_in_flight == 1
            riders[0].answer([None, LeaseLost("stale")])
    assert rides.claims_in_flight == 0
    assert got[0] is not None and [type(o) for o in got[0]] == [type(None), LeaseLost]  # type: ignore[attr-defined]
    assert rides.carried == 2


async def test_take_never_splits_a_call_nor_exceeds_its_limit() -> None:
    rides = AckRides()
    async with trio.open_nursery() as nursery:
        calls = [(rides.ride, acks(tokens), 10) for tokens in ([1, 2], [3, 4], [5])]
        await start_riding(nursery, rides, *calls)
        order = [r.tokens for r in rides.waiting]  # the order the three calls came in
        taken = rides.take(limit=3)
        count = 0  # whole calls, in order, while they fit in three acks
        while count < len(order) and sum(map(len, order[: count + 1])) <= 3:
            count += 1
        assert [r.tokens for r in taken] == order[:count] and count >= 1
        with rides.claiming(taken):
            for r in taken:
                r.answer([None] * len(r.ids))
        rest = rides.take(limit=10)
        assert [r.tokens for r in rest] == order[count:]
        with rides.claiming(rest):
            for r in rest:
                r.answer([None] * len(r.ids))


async def test_a_failed_claim_fails_its_acks_and_a_cancelled_one_gives_them_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rides = AckRides()
    results: dict[str, object] = {}

    async def ride(name: str) -> None:
        try:
            results[name] = await rides.ride(acks([1, 2]), limit=10)
        except OSError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        await start_riding(nursery, rides, (ride, "failed"))
        taken = rides.take(limit=10)
        with pytest.raises(OSError, match="connection lost"), rides.claiming(taken):
            raise OSError("connection lost")
        await start_riding(nursery, rides, (ride, "given back"))
        taken = rides.take(limit=10)
        with trio.CancelScope() as scope, rides.claiming(taken):
            scope.cancel()
            await trio.sleep_forever()
    assert isinstance(results["failed"], OSError)
    assert results["given back"] is None  # its ack_many stores them itself
    assert rides.claims_in_flight == 0 and rides.carried == 0
