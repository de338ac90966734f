"""RespConnection: one Redis connection for many callers, driven from their own tasks.

Against the real server (``redis_kit``); each test uses keys of its own and deletes them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
import trustme

from tests import services

from .redis_kit import redis_test_url

coredis = pytest.importorskip("coredis")

from turret import Job, WorkerBuilder  # noqa: E402
from turret.backends import RedisBackend  # noqa: E402
from turret.backends._redis_conn import Pending, RespConnection  # noqa: E402


@pytest.fixture
def pool() -> coredis.ConnectionPool:
    name = f"turret-conn-{uuid.uuid4().hex[:8]}"
    return coredis.ConnectionPool.from_url(redis_test_url(), client_name=name)


@pytest.fixture
async def conn(pool: coredis.ConnectionPool) -> AsyncIterator[RespConnection]:
    connection = await RespConnection.connect(pool)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
async def admin() -> AsyncIterator[coredis.Redis[bytes]]:
    client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_test_url())
    async with client:
        yield client


@pytest.fixture
async def key(admin: coredis.Redis[bytes]) -> AsyncIterator[str]:
    name = f"turret-conn-test:{uuid.uuid4().hex}"
    yield name
    await admin.delete([name])


async def test_concurrent_callers_each_get_their_own_reply(
    conn: RespConnection, admin: coredis.Redis[bytes], key: str
) -> None:
    got: dict[int, object] = {}

    async def call(i: int) -> None:
        got[i] = await conn.send(b"ECHO", f"reply {i}")
        await conn.send(b"RPUSH", key, i)

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(call, i)
    assert got == {i: f"reply {i}".encode() for i in range(300)}
    assert sorted(int(x) for x in await admin.lrange(key, 0, -1)) == list(range(300))


async def test_the_handshake_names_the_connection_and_selects_the_database(
    admin: coredis.Redis[bytes], key: str
) -> None:
    name = f"turret-conn-{uuid.uuid4().hex[:8]}"
    db7 = urlunsplit(urlsplit(redis_test_url())._replace(path="/7"))
    conn = await RespConnection.connect(coredis.ConnectionPool.from_url(db7, client_name=name))
    try:
        await conn.send(b"SET", key, b"in seven")
        clients = {int(c["id"]): c for c in await admin.client_list()}
        assert clients[conn.client_id]["name"] == name
        assert int(clients[conn.client_id]["db"]) == 7
    finally:
        conn.close()
        seven: coredis.Redis[bytes] = coredis.Redis.from_url(db7)
        async with seven:
            assert await seven.get(key) == b"in seven"
            await seven.delete([key])


async def test_one_reply_awaited_by_several_tasks_reaches_all_of_them(
    conn: RespConnection, admin: coredis.Redis[bytes], key: str
) -> None:
    pending = conn.send(b"BLMPOP", 30, 1, key, b"LEFT")
    got = await _await_blocked(pending, 3, lambda: admin.rpush(key, [b"item"]))
    assert got == [[key.encode(), [b"item"]]] * 3
    assert await pending == [key.encode(), [b"item"]]  # and again, at once


async def test_a_reader_cancelled_hands_the_reading_to_the_next_caller(
    conn: RespConnection, admin: coredis.Redis[bytes], key: str
) -> None:
    blocked = conn.send(b"BLMPOP", 30, 1, key, b"LEFT")
    echoed: list[object] = []

    async def echo() -> None:
        echoed.append(await conn.send(b"ECHO", b"after"))  # its reply comes second

    # A guard, not a wait: without the hand-off nobody reads again, and echo() hangs.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            reader = trio.CancelScope()
            nursery.start_soon(_await_in, reader, blocked)
            await trio.testing.wait_all_tasks_blocked()  # it reads (the BLMPOP blocks)
            assert conn._reading
            nursery.start_soon(echo)
            await trio.testing.wait_all_tasks_blocked()
            reader.cancel()  # the reader gives up: echo() must read now
            await trio.testing.wait_all_tasks_blocked()
            await admin.rpush(key, [b"x"])
    assert echoed == [b"after"]
    assert blocked.complete
    assert await blocked == [key.encode(), [b"x"]]


async def test_poll_takes_a_reply_nobody_awaits_without_waiting(conn: RespConnection) -> None:
    pending = conn.send(b"PING")
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(conn._fd)
    conn.poll()
    assert pending.complete
    assert await pending == b"PONG"


async def test_an_error_reply_raises_and_the_connection_goes_on(conn: RespConnection) -> None:
    with pytest.raises(coredis.exceptions.NoScriptError):
        await conn.send(b"EVALSHA", "0" * 40, 0)
    with pytest.raises(coredis.exceptions.ResponseError, match="wrong number"):
        await conn.send(b"GET")
    assert await conn.send(b"PING") == b"PONG"
    assert conn.usable


async def test_a_large_command_waits_for_the_socket_and_keeps_its_order(
    conn: RespConnection, key: str
) -> None:
    big = b"x" * (8 << 20)  # more than a socket's send buffer: part of it waits in order
    first = conn.send(b"SET", key, big)
    second = conn.send(b"STRLEN", key)
    assert conn._out  # the rest of SET and all of STRLEN wait for the next caller
    assert await second == len(big)
    assert await first == b"OK"


async def test_a_killed_connection_fails_its_callers_and_says_so(
    conn: RespConnection, admin: coredis.Redis[bytes], key: str
) -> None:
    blocked = conn.send(b"BLMPOP", 30, 1, key, b"LEFT")
    failed = await _await_blocked(blocked, 1, lambda: admin.client_kill(identifier=conn.client_id))
    assert [str(exc) for exc in failed] == ["Redis closed the connection"]
    assert not conn.usable
    with pytest.raises(coredis.exceptions.ConnectionError):
        await conn.send(b"PING")


async def test_connecting_nowhere_is_a_connection_error() -> None:
    pool = coredis.ConnectionPool.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(coredis.exceptions.ConnectionError, match="cannot connect to Redis"):
        await RespConnection.connect(pool)


async def _await_blocked(
    pending: Pending, awaiters: int, release: Callable[[], Awaitable[object]]
) -> list[object]:
    """Await ``pending`` in ``awaiters`` tasks and, once they all wait, ``release()``;
    what each got: the reply, or the ConnectionError it raised."""
    got: list[object] = []

    async def wait() -> None:
        try:
            got.append(await pending)
        except coredis.exceptions.ConnectionError as exc:
            got.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(awaiters):
            nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not pending.complete
        await release()
    return got


async def _await_in(scope: trio.CancelScope, pending: Pending) -> None:
    with scope:
        await pending


# --- throwaway servers: a Unix socket, TLS (rediss://) -----------------------------------


async def _start_redis(args: list[str], what: str) -> trio.Process:
    """A throwaway redis-server with ``args``, once it says it is ready; in CI a missing
    binary fails the test (the machine must have one), elsewhere it skips it."""
    server = shutil.which("redis-server")
    if server is None:
        if services.IN_CI:
            pytest.fail(f"no redis-server binary to start a {what} server; CI must have one")
        pytest.skip(f"{what} test skipped: no redis-server binary to start one")
    proc = await trio.lowlevel.open_process(
        [server, "--save", "", "--appendonly", "no", *args], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    with trio.fail_after(10):  # a guard: the server says when it is ready
        seen = b""
        while b"ready to accept connections" not in seen.lower():
            chunk = await proc.stdout.receive_some()
            if not chunk:
                await proc.wait()
                pytest.fail(f"redis-server exited: {seen.decode(errors='replace')}")
            seen += chunk
    return proc


async def _stop_redis(proc: trio.Process) -> None:
    proc.terminate()
    await proc.wait()
    if proc.stdout is not None:
        await proc.stdout.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _end_to_end(url: str, *, pushed: int, trickled: int) -> RedisBackend:
    """Push ``pushed`` tasks, start a worker, then push ``trickled`` more one at a time
    (to a worker that goes idle between them); every task must run. The backend, closed."""
    done: list[int] = []
    all_done = trio.Event()
    total = pushed + trickled

    async def handler(n: int) -> None:
        done.append(n)
        if len(done) == total:
            all_done.set()

    async with RedisBackend.open(url) as backend:
        await backend.push_many([Job(n) for n in range(pushed)])
        worker = WorkerBuilder("e2e").backend(backend).poll_interval(3600).build(handler)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            for n in range(pushed, total):
                await backend.push(n)
                await trio.sleep(0.01)
            with trio.fail_after(10):  # a guard, not a wait
                await all_done.wait()
            worker.context.stop()
    assert sorted(done) == list(range(total))
    return backend


async def test_a_unix_socket_url_works_end_to_end(tmp_path: Path) -> None:
    # A throwaway server listening on a Unix socket only (the shared one listens on TCP).
    sock = tmp_path / "redis.sock"
    proc = await _start_redis(["--port", "0", "--unixsocket", str(sock)], "Unix socket")
    try:
        await _end_to_end(f"unix://{sock}?db=0", pushed=20, trickled=0)
    finally:
        await _stop_redis(proc)


@pytest.fixture
async def tls_url(tmp_path: Path) -> AsyncIterator[str]:
    """A throwaway Redis that speaks TLS only, with a certificate from a test CA; the
    URL trusts that CA and requires the server's certificate."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    port = _free_port()
    proc = await _start_redis(
        [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(tmp_path / "cert.pem"),
            "--tls-key-file", str(tmp_path / "key.pem"),
            "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
            "--tls-auth-clients", "no",
        ],
        "TLS",
    )  # fmt: skip
    try:
        yield (
            f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={tmp_path / 'ca.pem'}"
        )
    finally:
        await _stop_redis(proc)


async def test_over_tls_concurrent_callers_each_get_their_own_reply(tls_url: str) -> None:
    conn = await RespConnection.connect(coredis.ConnectionPool.from_url(tls_url))
    try:
        assert not conn.pollable  # TLS records are read by awaiting them
        big = b"x" * (1 << 20)  # more than one TLS record, more than the socket takes
        pending = [conn.send(b"SET", f"k{i}", big + str(i).encode()) for i in range(4)]
        strlen = [conn.send(b"STRLEN", f"k{i}") for i in range(4)]
        got: dict[int, object] = {}

        async def wait(i: int) -> None:
            got[i] = await strlen[i]

        async with trio.open_nursery() as nursery:
            for i in reversed(range(4)):  # awaited out of order, by several tasks
                nursery.start_soon(wait, i)
        assert [await p for p in pending] == [b"OK"] * 4
        assert got == {i: len(big) + 1 for i in range(4)}
    finally:
        conn.close()


async def test_a_tls_url_works_end_to_end(tls_url: str) -> None:
    # Pushes, claims, the inbox's handoffs (read by the sweeper over TLS) and settles.
    backend = await _end_to_end(tls_url, pushed=20, trickled=20)
    assert backend.statistics().handoffs >= 1


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_url: str, tmp_path: Path
) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other.pem"))
    url = tls_url.replace(str(tmp_path / "ca.pem"), str(tmp_path / "other.pem"))
    with pytest.raises(coredis.exceptions.ConnectionError, match="certificate verify failed"):
        await RespConnection.connect(coredis.ConnectionPool.from_url(url))
