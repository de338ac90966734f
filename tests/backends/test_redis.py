"""Redis-only behaviour: connection loss, secrets, lifetimes, batched settles.

The contract itself runs on Redis through the conformance suite (``conftest.KITS``).
Every test uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import traceback
import uuid
from collections.abc import AsyncIterator

import pytest
import trio

import turret
from turret import Job, LeaseLost, TaskState, WorkerBuilder

from .redis_kit import redis_test_url

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
