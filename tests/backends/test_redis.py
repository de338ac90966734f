"""Redis-only behaviour: connection loss, secrets, lifetimes, batched settles.

The contract itself runs on Redis through the conformance suite (``conftest.KITS``).
Every test uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import gc
import logging
import re
import subprocess
import sys
import traceback
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
import trio.testing

import turret
from turret import Job, LeaseLost, TaskState, WorkerBuilder

from .redis_kit import redis_test_url
from .silent_proxy import SilencingProxy

coredis = pytest.importorskip("coredis")

from turret.backends import RedisBackend  # noqa: E402

SECRET = "sup3r-s3cret-pw"


@pytest.fixture
def url() -> str:
    return redis_test_url()


@pytest.fixture
async def backend(url: str) -> AsyncIterator[RedisBackend]:
    name = f"turret-test-{uuid.uuid4().hex[:8]}"
    async with RedisBackend.open(
        url, prefix=f"turret-test:{uuid.uuid4().hex}:", client_name=name
    ) as b:
        try:
            yield b
        finally:
            with trio.CancelScope(shield=True):
                await b.purge()


async def _kill_connections(admin: coredis.Redis[bytes], name: str) -> int:
    """``CLIENT KILL ID`` every connection named ``name`` (never anybody else's)."""
    listing = await admin.client_list()
    killed = 0
    for client in listing:
        if client.get("name") == name:
            killed += await admin.client_kill(identifier=int(client["id"]))
    return killed


async def test_connections_killed_mid_run_lose_nothing(url: str, backend: RedisBackend) -> None:
    n = 3000
    done: set[int] = set()
    all_done = trio.Event()
    killed_enough = trio.Event()  # tasks finish only after three kills: they land mid-run

    async def handler(i: int) -> None:
        await killed_enough.wait()
        await trio.sleep(0.001)
        done.add(i)
        if len(done) == n:
            all_done.set()

    await backend.push_many(Job(i) for i in range(n))
    worker = WorkerBuilder("w").backend(backend).concurrency(50).lease_ttl(10).build(handler)
    kills = 0
    async with (
        coredis.Redis.from_url(url, decode_responses=True) as admin,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(worker.run)
        with trio.fail_after(60):  # bounded wait on a real server
            while not all_done.is_set():
                await trio.sleep(0.05)
                kills += await _kill_connections(admin, backend.client_name)
                if kills >= 3:
                    killed_enough.set()
            worker.context.stop()
    assert kills >= 3
    assert done == set(range(n))
    (stats,) = await backend.stats()
    assert (stats.done, stats.dead, stats.pending, stats.leased) == (n, 0, 0, 0)
    assert backend.statistics().reconnects >= 1


async def test_a_silent_connection_is_abandoned_after_response_timeout(
    url: str, patient_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    parts = urlsplit(url)
    if parts.hostname is None:
        pytest.skip("the Redis under test is on a Unix socket; the proxy speaks TCP")
    proxy = SilencingProxy(parts.hostname, parts.port or 6379)
    prefix = f"turret-test:{uuid.uuid4().hex}:"
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        proxied = urlunsplit((parts.scheme, f"127.0.0.1:{proxy.port}", parts.path, "", ""))
        async with RedisBackend.open(proxied, prefix=prefix, response_timeout=5.0) as backend:
            await backend.push(1)  # the script connection is up
            proxy.silence()
            start = trio.current_time()
            with trio.fail_after(30):  # without response_timeout: waits for ever
                await backend.push(2)
            waited = trio.current_time() - start
            assert backend.statistics().reconnects >= 1
        nursery.cancel_scope.cancel()
    assert waited >= 5.0
    async with RedisBackend.open(url, prefix=prefix) as direct:
        (stats,) = await direct.stats()
        assert stats.pending == 2  # the push Redis ran, retried: stored once
        await direct.purge()
    assert "no reply from Redis within 5s (response_timeout)" in caplog.text


async def test_every_call_on_a_silent_connection_is_bounded_by_response_timeout(
    url: str, patient_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Calls that go through coredis's own connections (reading a task, the wake-up
    listener's XREAD) give up a silent connection after ``response_timeout`` too, and
    retry on a new one."""
    parts = urlsplit(url)
    if parts.hostname is None:
        pytest.skip("the Redis under test is on a Unix socket; the proxy speaks TCP")
    proxy = SilencingProxy(parts.hostname, parts.port or 6379)
    prefix = f"turret-test:{uuid.uuid4().hex}:"
    got = trio.Event()

    async def handler(i: int) -> None:
        got.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        proxied = urlunsplit((parts.scheme, f"127.0.0.1:{proxy.port}", parts.path, "", ""))
        async with RedisBackend.open(proxied, prefix=prefix, response_timeout=5.0) as backend:
            task_id = await backend.push(1, queue="read")
            assert await backend.get_task(task_id) is not None  # coredis's connection is up
            proxy.silence()
            start = trio.current_time()
            with trio.fail_after(30):  # without a reply timeout: waits for ever
                info = await backend.get_task(task_id)  # on the same, silent connection
            assert info is not None and info.state is TaskState.PENDING
            assert trio.current_time() - start >= 5.0

            # poll_interval far beyond the bounds below: only a wake-up starts the task.
            worker = WorkerBuilder("w").backend(backend).poll_interval(3600).build(handler)
            async with trio.open_nursery() as workers:
                workers.start_soon(worker.run)
                await trio.sleep(1)  # the worker goes idle, blocked in the listener's XREAD
                proxy.silence()
                await backend.push(2)  # its wake-up reaches the listener once it reconnects
                with trio.fail_after(30):
                    await got.wait()
                await trio.sleep(10)  # past the listener's response timeout
                worker.context.stop()
            await backend.purge()
        nursery.cancel_scope.cancel()
    assert "TimeoutError: HGETALL timed out after 5.0 seconds; retrying" in caplog.text
    # Without a reply timeout the listener's XREAD waits for ever on the silent
    # connection (the task still starts: a push hands it to a waiting worker directly).
    assert "wake-up listener: TimeoutError; reconnecting" in caplog.text


def test_response_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="response_timeout must be > 0 seconds, got 0"):
        RedisBackend(response_timeout=0)


async def test_idle_worker_wakes_after_its_connections_were_killed(
    url: str, backend: RedisBackend
) -> None:
    got = trio.Event()

    async def handler(i: int) -> None:
        got.set()

    # poll_interval far beyond the bound below: only a wake-up can start the task.
    worker = WorkerBuilder("w").backend(backend).poll_interval(3600).build(handler)
    async with (
        coredis.Redis.from_url(url, decode_responses=True) as admin,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(worker.run)
        await trio.sleep(0.2)  # the worker goes idle on the wake-up stream
        assert await _kill_connections(admin, backend.client_name) >= 1
        await backend.push(1)
        with trio.fail_after(10):
            await got.wait()
        worker.context.stop()


async def test_concurrent_settles_are_batched_each_with_its_outcome(
    backend: RedisBackend,
) -> None:
    await backend.push_many(Job(i) for i in range(200))
    tasks = await backend.claim("default", owner="w", limit=200, lease_ttl=30)
    outcomes: dict[int, str] = {}

    async def settle(k: int) -> None:
        task = tasks[k]
        assert task.ctx.lease is not None
        token = task.ctx.lease.token + (1 if k % 10 == 0 else 0)  # every 10th is stale
        try:
            if k % 3 == 0:
                await backend.ack(task.id, token, result=backend.codec.encode(k))
            elif k % 3 == 1:
                await backend.retry(task.id, token, delay=0, error="e")
            else:
                await backend.release(task.id, token)
            outcomes[k] = "ok"
        except LeaseLost:
            outcomes[k] = "lost"

    before = backend.statistics()
    async with trio.open_nursery() as nursery:
        for k in range(200):
            nursery.start_soon(settle, k)
    after = backend.statistics()
    assert all(outcomes[k] == ("lost" if k % 10 == 0 else "ok") for k in range(200))
    batches = after.settle_batches - before.settle_batches
    assert after.settles - before.settles == 200
    assert batches <= 5, f"{batches} round trips for 200 concurrent settles"
    (stats,) = await backend.stats()
    assert stats.leased == 20 and stats.done == len(
        [k for k in range(200) if k % 3 == 0 and k % 10]
    )
    info = await backend.get_task(tasks[3].id)
    assert info is not None and info.state is TaskState.DONE
    assert info.result is not None and backend.codec.decode(info.result) == 3


# coredis 6.9 leaves the memory streams of a connection that failed to connect unclosed;
# collect them here, where their ResourceWarnings are expected.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_password_never_shown(caplog: pytest.LogCaptureFixture, url: str) -> None:
    caplog.set_level(logging.DEBUG)
    secret_url = url.replace("redis://", f"redis://user:{SECRET}@", 1)
    backend = RedisBackend(secret_url, reconnect_timeout=0.2)
    assert SECRET not in repr(backend) and SECRET not in backend.url
    assert "***" in backend.url
    # the server refuses the credentials
    with pytest.raises(coredis.exceptions.AuthenticationError) as refused:
        async with backend:
            pass
    # nobody listens there: connection errors, retried and logged, then raised
    closed_port = RedisBackend(f"redis://user:{SECRET}@127.0.0.1:1/0", reconnect_timeout=0.2)
    with pytest.raises(coredis.exceptions.ConnectionError) as unreachable:
        async with closed_port:
            pass
    assert any("retrying" in r.getMessage() for r in caplog.records)
    for exc in (refused.value, unreachable.value):
        text = "".join(traceback.format_exception(exc))
        assert SECRET not in text
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in repr(closed_port) and SECRET not in str(closed_port.statistics())
    del refused, unreachable, backend, closed_port
    gc.collect()


async def test_url_from_environment(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("TURRET_REDIS_URL", url)
    async with RedisBackend.open(prefix=f"turret-test:{uuid.uuid4().hex}:") as backend:
        assert backend.url == url
        await backend.push(1)
        assert await backend.purge() >= 1


def _task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


async def test_no_task_outlives_the_block(url: str) -> None:
    before = _task_count()
    async with RedisBackend.open(url, prefix=f"turret-test:{uuid.uuid4().hex}:") as backend:
        assert _task_count() > before
        await backend.push(1)
        await backend.purge()
    assert _task_count() == before
    with pytest.raises(RuntimeError, match="not open"):
        await backend.push(1)


def test_backends_import_without_coredis() -> None:
    code = (
        "import sys; sys.modules['coredis'] = None\n"
        "import turret.backends as b\n"
        "assert b.MemoryBackend\n"
        "try:\n"
        "    b.RedisBackend\n"
        "except ImportError as e:\n"
        "    assert 'turret[redis]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('RedisBackend imported without coredis')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_wait_for_work_sleeps_until_next_run_at(backend: RedisBackend) -> None:
    await backend.push(1, queue="s", delay=0.3)
    start = trio.current_time()
    wakes = 0
    with trio.fail_after(5):
        while not await backend.claim("s", owner="w", limit=1, lease_ttl=10):
            await backend.wait_for_work("s")
            wakes += 1
    assert 0.29 <= trio.current_time() - start <= 1.0
    assert wakes <= 3  # the push's own wake-up, then the run_at timer: no polling


def test_public_names() -> None:
    assert turret.backends.RedisBackend is RedisBackend


async def test_a_producer_runs_no_wake_up_listener(url: str, backend: RedisBackend) -> None:
    """Only a backend that waits for work listens for wake-ups (a blocking XREAD on a
    connection of its own); one that only pushes does not."""
    producer_name = f"turret-test-{uuid.uuid4().hex[:8]}"
    async with RedisBackend.open(url, prefix=backend.prefix, client_name=producer_name) as p:
        for i in range(3):
            await p.push(i, queue="q")
        admin: coredis.Redis[bytes] = coredis.Redis.from_url(url)
        async with admin:
            commands = [
                c.get("cmd") for c in await admin.client_list() if c.get("name") == producer_name
            ]
        assert "xread" not in commands
        assert p.statistics().wakeups == 0
        # The consumer starts listening with its first wait, and misses nothing pushed
        # before: the three tasks are due at once.
        with trio.fail_after(5):
            await backend.wait_for_work("q")
        assert len(await backend.claim("q", owner="w", limit=5, lease_ttl=10)) == 3


# --- handoffs: a push leases its task straight to an idle consumer ---------------------


class FakeClock:
    """A backend clock the test moves by hand (registrations and leases expire by it)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pair(url: str) -> AsyncIterator[tuple[RedisBackend, RedisBackend, FakeClock]]:
    """A consumer and a producer on one store (two processes' view), on one fake clock."""
    clock = FakeClock()
    prefix = f"turret-test:{uuid.uuid4().hex}:"
    async with (
        RedisBackend.open(url, prefix=prefix, clock=clock) as consumer,
        RedisBackend.open(url, prefix=prefix, clock=clock) as producer,
    ):
        try:
            yield consumer, producer, clock
        finally:
            with trio.CancelScope(shield=True):
                await producer.purge()


async def _waiters(backend: RedisBackend, queue: str) -> int:
    return int(await backend._redis().zcard(f"{backend.prefix}q:{queue}:waiters"))


async def _until_waiters(backend: RedisBackend, queue: str, n: int) -> None:
    """Poll the store until ``queue`` has ``n`` registered waiters (bounded)."""
    with trio.fail_after(5):
        while True:
            if await _waiters(backend, queue) == n:
                return
            await trio.sleep(0.001)


@asynccontextmanager
async def _waiting(consumer: RedisBackend, queue: str) -> AsyncIterator[trio.Event]:
    """``consumer`` waits for work on ``queue`` (registered for a handoff) in the block;
    the event is set when the wait returns. Leaving the block cancels a wait still on."""
    if queue not in consumer._claimed_as:
        assert await consumer.claim(queue, owner="w1", limit=1, lease_ttl=30) == []
    returned = trio.Event()

    async def wait() -> None:
        await consumer.wait_for_work(queue)
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await _until_waiters(consumer, queue, 1)
        yield returned
        nursery.cancel_scope.cancel()


async def test_a_push_hands_its_task_to_a_waiting_consumer(
    pair: tuple[RedisBackend, RedisBackend, FakeClock],
) -> None:
    consumer, producer, clock = pair
    async with _waiting(consumer, "q") as returned:
        task_id = await producer.push("x", queue="q")
        info = await producer.get_task(task_id)
        assert info is not None and info.state is TaskState.LEASED
        assert (info.owner, info.attempt, info.lease_deadline) == ("w1", 1, clock.now + 30)
        with trio.fail_after(5):
            await returned.wait()
    assert await _waiters(producer, "q") == 0  # the push took the registration
    before = consumer.statistics()
    (task,) = await consumer.claim("q", owner="w1", limit=1, lease_ttl=30)
    assert consumer.statistics().round_trips == before.round_trips  # no round trip
    assert consumer.statistics().handoffs == 1
    assert task.id == task_id and consumer.codec.decode(task.args) == "x"
    assert task.ctx.lease is not None and task.ctx.lease.token == info.token
    assert (task.ctx.attempt, task.ctx.queue) == (1, "q")
    await consumer.ack(task.id, task.ctx.lease.token)
    done = await producer.get_task(task_id)
    assert done is not None and done.state is TaskState.DONE
    # a handed-off task holds its unique key like any live task
    async with _waiting(consumer, "k"):
        keyed = await producer.push(1, queue="k", unique_key="u")
        assert await producer.push(2, queue="k", unique_key="u") == keyed
    info = await producer.get_task(keyed)
    assert info is not None and info.state is TaskState.LEASED and info.unique_key == "u"
    (stats,) = [s for s in await producer.stats() if s.queue == "k"]
    assert (stats.pending, stats.leased) == (0, 1)


async def test_one_handoff_per_waiter_the_rest_waits_in_line(
    url: str, pair: tuple[RedisBackend, RedisBackend, FakeClock]
) -> None:
    consumer, producer, clock = pair
    async with (
        RedisBackend.open(url, prefix=consumer.prefix, clock=clock) as other,
        _waiting(consumer, "q"),
    ):
        assert await other.claim("q", owner="w2", limit=1, lease_ttl=30) == []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other.wait_for_work, "q")
            await _until_waiters(producer, "q", 2)
            ids = await producer.push_many(Job(i, queue="q") for i in range(3))
            nursery.cancel_scope.cancel()
        infos = [await producer.get_task(i) for i in ids]
        states = [(i.state, i.owner) for i in infos if i]
        assert sorted(states[:2], key=str) == [(TaskState.LEASED, "w1"), (TaskState.LEASED, "w2")]
        assert states[2] == (TaskState.PENDING, None)
    # the other consumer closed without claiming its task: given back, no attempt used
    (given_back,) = [i.id for i in infos if i and i.owner == "w2"]
    info = await producer.get_task(given_back)
    assert info is not None and info.state is TaskState.PENDING and info.attempt == 0


async def test_a_waiter_takes_as_many_tasks_as_it_had_free_slots(
    pair: tuple[RedisBackend, RedisBackend, FakeClock],
) -> None:
    consumer, producer, _clock = pair
    assert await consumer.claim("q", owner="w1", limit=3, lease_ttl=30) == []  # 3 free
    async with _waiting(consumer, "q") as returned:
        ids = await producer.push_many(Job(i, queue="q") for i in range(5))
        assert await _waiters(producer, "q") == 0  # full: the registration is gone
        with trio.fail_after(5):
            await returned.wait()
    infos = [await producer.get_task(i) for i in ids]
    assert [i.state for i in infos if i] == [TaskState.LEASED] * 3 + [TaskState.PENDING] * 2
    before = consumer.statistics().round_trips
    tasks = await consumer.claim("q", owner="w1", limit=3, lease_ttl=30)
    assert [t.id for t in tasks] == ids[:3]  # one reply brought all three
    assert consumer.statistics().round_trips == before
    # one push at a time: the room shrinks, the registration stays until it is full
    room = f"{producer.prefix}q:r:room"
    assert await consumer.claim("r", owner="w1", limit=2, lease_ttl=30) == []
    async with _waiting(consumer, "r"):
        (member,) = await producer._redis().hkeys(room)
        assert await producer._redis().hget(room, member) == b"2"
        await producer.push(1, queue="r")
        assert await producer._redis().hget(room, member) == b"1"
        assert await _waiters(producer, "r") == 1
        await producer.push(2, queue="r")
        assert await _waiters(producer, "r") == 0 and not await producer._redis().exists([room])
    # at most 4, whatever is free: what a crashed process can strand until lease expiry
    room = f"{producer.prefix}q:s:room"
    assert await consumer.claim("s", owner="w1", limit=50, lease_ttl=30) == []
    async with _waiting(consumer, "s"):
        (member,) = await producer._redis().hkeys(room)
        assert await producer._redis().hget(room, member) == b"4"
        assert await consumer.claim("s", owner="w1", limit=50, lease_ttl=30) == []
        assert await producer._redis().hget(room, member) == b"4"  # a short claim: capped
        # a later empty claim for fewer slots (one slot asking) leaves the room as it was
        assert await consumer.claim("s", owner="w1", limit=1, lease_ttl=30) == []
        assert await producer._redis().hget(room, member) == b"4"
    # a claim that leases tasks counts afresh: 1 of 2 leased, 1 slot free
    await producer.pause_queue("s")
    await producer.push(1, queue="s")  # pending: no handoff to a paused queue
    await producer.resume_queue("s")
    assert len(await consumer.claim("s", owner="w1", limit=2, lease_ttl=30)) == 1
    assert await producer._redis().hget(room, member) == b"1"


async def test_no_handoff_past_an_older_due_task(
    pair: tuple[RedisBackend, RedisBackend, FakeClock],
) -> None:
    consumer, producer, clock = pair
    member = f"{consumer._inbox} 30.0 w1"  # registered, though nobody waits here
    # an older task already pending (pushed while the queue was paused)
    await producer.pause_queue("q")
    older = await producer.push("older", queue="q")
    await producer.resume_queue("q")
    await producer._script("REGISTER", ["q", repr(clock.now), member, repr(clock.now + 3), ""])
    assert await _waiters(producer, "q") == 0  # due work: no registration
    await producer._redis().zadd(f"{producer.prefix}q:q:waiters", {member: clock.now + 3})
    newer = await producer.push("newer", queue="q", priority=10)
    for task_id in (older, newer):
        info = await producer.get_task(task_id)
        assert info is not None and info.state is TaskState.PENDING
    assert await _waiters(producer, "q") == 1
    tasks = await consumer.claim("q", owner="w1", limit=5, lease_ttl=30)
    assert [t.id for t in tasks] == [newer, older]  # priority, as always
    # an overdue scheduled task goes first too: no handoff past it
    scheduled = await producer.push("scheduled", queue="s", delay=5)
    await producer._redis().zadd(f"{producer.prefix}q:s:waiters", {member: clock.now + 30})
    clock.now += 6
    later = await producer.push("later", queue="s")
    info = await producer.get_task(later)
    assert info is not None and info.state is TaskState.PENDING
    tasks = await consumer.claim("s", owner="w1", limit=5, lease_ttl=30)
    assert [t.id for t in tasks] == [scheduled, later]
    # and so does an expired lease, taken back by the next claim
    (expiring,) = await producer.push_many([Job("expiring", queue="e")])
    assert len(await consumer.claim("e", owner="w1", limit=1, lease_ttl=1)) == 1
    await producer._redis().zadd(f"{producer.prefix}q:e:waiters", {member: clock.now + 30})
    clock.now += 2
    after = await producer.push("after", queue="e")
    info = await producer.get_task(after)
    assert info is not None and info.state is TaskState.PENDING
    tasks = await consumer.claim("e", owner="w1", limit=5, lease_ttl=30)
    assert [t.id for t in tasks] == [expiring, after]


async def test_no_handoff_to_a_paused_queue_or_of_a_scheduled_task(
    pair: tuple[RedisBackend, RedisBackend, FakeClock],
) -> None:
    consumer, producer, _clock = pair
    async with _waiting(consumer, "q") as returned:
        scheduled = await producer.push("later", queue="q", delay=10)
        await producer.pause_queue("q")
        paused = await producer.push("paused", queue="q")
        assert await _waiters(producer, "q") == 1  # still registered, nothing handed over
        assert not returned.is_set() or not consumer._stash
    for task_id, state in ((scheduled, TaskState.SCHEDULED), (paused, TaskState.PENDING)):
        info = await producer.get_task(task_id)
        assert info is not None and info.state is state and info.attempt == 0
    # a paused queue takes no registration either
    assert await consumer.claim("q", owner="w1", limit=1, lease_ttl=30) == []
    assert await _waiters(producer, "q") == 0
    await producer.resume_queue("q")
    (task,) = await consumer.claim("q", owner="w1", limit=1, lease_ttl=30)
    assert task.id == paused


async def test_a_waiter_that_stops_waiting_withdraws(
    pair: tuple[RedisBackend, RedisBackend, FakeClock],
) -> None:
    consumer, producer, _clock = pair
    async with _waiting(consumer, "q"):
        pass  # cancelled on the way out
    await _until_waiters(producer, "q", 0)
    task_id = await producer.push("x", queue="q")
    info = await producer.get_task(task_id)
    assert info is not None and info.state is TaskState.PENDING and info.attempt == 0


@pytest.mark.parametrize("waits", [True, False], ids=["it-waits", "busy-elsewhere"])
async def test_a_handoff_that_lands_after_the_wait_is_kept_for_the_next_claim(
    pair: tuple[RedisBackend, RedisBackend, FakeClock], waits: bool
) -> None:
    consumer, producer, _clock = pair
    async with _waiting(consumer, "q"):
        pass
    await _until_waiters(producer, "q", 0)
    # the short claim of an idle worker registers it again (it is about to wait)
    assert await consumer.claim("q", owner="w1", limit=1, lease_ttl=30) == []
    assert await _waiters(producer, "q") == 1
    task_id = await producer.push("x", queue="q")
    with trio.fail_after(5):
        if waits:
            await consumer.wait_for_work("q")  # at once: the inbox holds it
        else:  # nobody awaits the inbox: the claim reads it without waiting
            assert consumer._inbox_conn is not None
            await trio.lowlevel.wait_readable(consumer._inbox_conn._fd)
    before = consumer.statistics().round_trips
    (task,) = await consumer.claim("q", owner="w1", limit=1, lease_ttl=30)
    assert task.id == task_id and consumer.statistics().round_trips == before
    # a full claim says the worker is busy: no registration, no handoff
    await producer.push_many([Job(1, queue="q"), Job(2, queue="q")])
    assert len(await consumer.claim("q", owner="w1", limit=1, lease_ttl=30)) == 1
    assert await _waiters(producer, "q") == 0


async def test_handed_off_tasks_nobody_claims_are_given_back(
    url: str, pair: tuple[RedisBackend, RedisBackend, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, producer, clock = pair
    from turret.backends import _redis

    # stashed (the inbox brought it) but never claimed: given back after the hold
    monkeypatch.setattr(_redis, "_HOLD", 0.02)
    async with _waiting(consumer, "q") as returned:
        stashed = await producer.push("x", queue="q")
        with trio.fail_after(5):
            await returned.wait()
    with trio.fail_after(5):
        while True:
            info = await producer.get_task(stashed)
            if info is not None and info.state is TaskState.PENDING:
                break
            await trio.sleep(0.005)
    assert info is not None and info.attempt == 0 and info.lost == 0
    # in the inbox when the consumer closes: given back, no attempt used
    async with RedisBackend.open(url, prefix=consumer.prefix, clock=clock) as closing:
        member = f"{closing._inbox} 30.0 w9"
        await closing._register("q2", member)
        assert await _waiters(producer, "q2") == 1
        landed = await producer.push("y", queue="q2")
        info = await producer.get_task(landed)
        assert info is not None and info.state is TaskState.LEASED and info.owner == "w9"
    info = await producer.get_task(landed)
    assert info is not None and info.state is TaskState.PENDING and info.attempt == 0
    assert await _waiters(producer, "q2") == 0


async def test_a_dead_waiters_registration_expires_and_its_task_is_reclaimed(
    pair: tuple[RedisBackend, RedisBackend, FakeClock],
) -> None:
    consumer, producer, clock = pair
    ghost = "0badc0ffee0badc0 5.0 ghost"  # a crashed process: nobody reads its inbox
    await producer._register("q", ghost)
    clock.now += 3.5  # past the registration's TTL
    expired = await producer.push("a", queue="q")
    info = await producer.get_task(expired)
    assert info is not None and info.state is TaskState.PENDING
    assert await _waiters(producer, "q") == 0  # dropped by the push
    assert len(await consumer.claim("q", owner="w1", limit=1, lease_ttl=30)) == 1
    # a live registration of a process that dies takes one task, leased: the lease
    # expires and the task is reclaimed like any other
    await producer._register("q", ghost)
    swallowed = await producer.push("b", queue="q")
    second = await producer.push("c", queue="q")
    info = await producer.get_task(swallowed)
    assert info is not None and info.state is TaskState.LEASED and info.owner == "ghost"
    info = await producer.get_task(second)
    assert info is not None and info.state is TaskState.PENDING  # one task at most
    clock.now += 6
    assert await producer.reclaim() == 1
    info = await producer.get_task(swallowed)
    assert info is not None and info.state is TaskState.PENDING
    assert info.last_error == "worker lost" and info.lost == 1


async def test_a_done_record_expires_in_redis_after_its_retention(url: str) -> None:
    """The backend forgets a done task on its own clock (the conformance suite); Redis
    deletes the record itself: its key carries a TTL of max(done_ttl, result_ttl)."""
    prefix = f"turret-test:{uuid.uuid4().hex}:"
    async with RedisBackend.open(url, prefix=prefix, done_ttl=100.0, result_ttl=10.0) as b:
        try:
            task_id = await b.push("x")
            (task,) = await b.claim("default", owner="w", limit=1, lease_ttl=30)
            await b.ack(task_id, task.ctx.lease.token)
            admin = coredis.Redis.from_url(url)
            async with admin:
                ttl_ms = await admin.pttl(f"{prefix}t:{task_id}")
            assert 90_000 < ttl_ms <= 100_000
        finally:
            with trio.CancelScope(shield=True):
                await b.purge()


async def test_acks_made_while_a_claim_is_in_flight_ride_on_the_next_claim(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from turret.backends import _riding

    monkeypatch.setattr(_riding, "ACK_RIDE", 60.0)  # here the next claim always comes
    await backend.push_many([Job(i) for i in range(6)])
    leased = await backend.claim("default", owner="w", limit=3, lease_ttl=30)
    acks = [(t.id, t.ctx.lease.token, None) for t in leased if t.ctx.lease is not None]
    acks.append((leased[0].id, acks[0][1] + 1000, None))  # a stale token
    before = backend.statistics()
    outcomes: list[Any] = []

    async def ack() -> None:
        outcomes.extend(await backend.ack_many(acks))

    backend._rides.claims_in_flight += 1  # as if another worker's claim were under way
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ack)
                while not backend._rides.waiting:
                    await trio.lowlevel.checkpoint()
                claimed = await backend.claim("default", owner="w", limit=5, lease_ttl=30)
    finally:
        backend._rides.claims_in_flight -= 1
    assert len(claimed) == 3  # the three tasks left
    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], LeaseLost) and "stale" in str(outcomes[3])
    stats = backend.statistics()
    assert stats.acks_with_claims - before.acks_with_claims == 4
    assert stats.settle_batches == before.settle_batches  # no call stored only acks
    assert stats.round_trips - before.round_trips == 1
    for t in leased:
        info = await backend.get_task(t.id)
        assert info is not None and info.state is TaskState.DONE


def test_each_script_defines_the_prelude_it_uses_and_no_more() -> None:
    # Lua creates every local function of a script on each call: a script carries only
    # the PRELUDE definitions it calls, directly or through another.
    from turret.backends import _redis_lua as lua

    defined_in_prelude = {name for names, _ in lua._DEFINITIONS for name in names}
    always = set(lua._DEFINITIONS[0][0])  # P, tkey, qkey, fmt: one paragraph
    for name in lua.__all__:
        script: str = getattr(lua, name)
        defined = set(re.findall(r"^local function (\w+)", script, re.MULTILINE))
        called = set(re.findall(r"(?<!function )\b(\w+)\(", script)) & defined_in_prelude
        assert called <= defined, (name, called - defined)
        unused = {f for f in defined & defined_in_prelude if f not in called} - always
        assert not unused, (name, unused)
    assert "reclaim_queue" not in lua.PUSH
