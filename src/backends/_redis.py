"""A Redis backend: the fast shared queue, on coredis (anyio, so it runs on trio).

Every state change is one Lua script (see ``_redis_lua.py`` for the data layout), so a
crash between steps cannot lose or duplicate a task. Idle workers wake on a pub/sub
channel; a worker's acks are one script call per ``ack_many``, and other settles from
one process are coalesced into one script call per round trip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs
import coredis
import coredis.exceptions
import trio
from coredis.commands.script import Script
from coredis.retry import NoRetryPolicy
from coredis.tokens import PureToken

from ..core._backend import Job, QueueStats, Renewal, TaskInfo, TaskState, check_queue_name
from ..core._codec import Codec
from ..core._errors import LeaseLost
from ..core._task import Lease, Task, TaskContext, TaskId
from . import _redis_lua as lua
from ._producer import Producer
from ._redis_conn import Pending, RespConnection
from ._riding import AckRides

__all__ = ["DEFAULT_REDIS_URL", "RedisBackend", "RedisStatistics", "redact_url"]

log = logging.getLogger("turret.backends.redis")

T = TypeVar("T")

#: Used when neither the constructor nor ``TURRET_REDIS_URL`` names a server.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: Errors after which a call is retried on a fresh connection (with backoff).
_RETRYABLE: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,  # includes BusyLoadingError (Redis restarting)
    TimeoutError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)

_PUSH_CHUNK = 1000  # jobs per script call (one pipeline, one round trip)
_SETTLE_CHUNK = 500  # settles per script call
#: How long a short claim's next-due hint stands in for a NEXT_DUE call (seconds).
_HINT_FRESH = 0.05
#: A handoff registration lives this long (backend clock) unless renewed: a crashed
#: process's registration stops taking tasks after this (_ROOM_MAX tasks at most).
_REG_TTL = 3.0
#: A waiter renews its registration this often while it waits (seconds).
_REG_RENEW = 1.0
#: A handed-off task nobody in this process claims within this time is given back.
_HOLD = 1.0
#: Most tasks one registration takes (a crashed process strands at most this many, until
#: their leases expire).
_ROOM_MAX = 4
#: Longest block of the inbox's BLMPOP (seconds).
_INBOX_BLOCK = 5.0
#: Longest block of the wake-up listener's XREAD (seconds); at most half the reply
#: timeout of coredis's connections, so a blocked read is never taken for a silent one.
_WAKE_BLOCK = 5.0
#: A BLMPOP still unanswered this long after it was sent means a dead connection.
_INBOX_STUCK = _INBOX_BLOCK + 10.0


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe for logs, reprs and errors).

    Example::

        >>> redact_url("redis://user:s3cret@cache:6379/0")
        'redis://user:***@cache:6379/0'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _f(value: float) -> str:
    """A float as an exact string (Python's repr round-trips; Redis parses it exactly)."""
    return repr(float(value))


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@attrs.frozen
class RedisStatistics:
    """A snapshot of a :class:`RedisBackend`'s client side (see ``statistics()``).

    ``round_trips`` counts script calls; ``settles / settle_batches`` is the average
    number of ack/retry/dead/release calls coalesced per round trip; ``handoffs``
    counts tasks a push leased straight to this process's idle workers.

    Example::

        s = backend.statistics()
        print(s.settles / max(1, s.settle_batches), "settles per round trip")
    """

    url: str
    prefix: str
    round_trips: int
    reconnects: int
    settles: int
    settle_batches: int
    wakeups: int
    #: Tasks leased to this process by a push (handoff), without a claim round trip.
    handoffs: int = 0
    #: Acks stored by a claim's script call (``ack_many`` while a claim was in flight).
    acks_with_claims: int = 0


class _Pool(coredis.ConnectionPool[Any]):
    """coredis's pool, keeping its capacity when a leased connection dies.

    coredis 6.9 returns a released connection to the pool only if it is still usable,
    without giving its slot back otherwise: every connection killed while leased (a
    blocking XREAD, a request in flight) shrinks the pool, until ``get_connection``
    waits forever. Here a dead connection's slot is returned as an empty one.
    """

    _BUFFERS = (
        "_push_message_buffer_in",
        "_push_message_buffer_out",
        "_streamed_message_buffer_in",
        "_streamed_message_buffer_out",
        "_write_buffer_in",
        "_write_buffer_out",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._connecting: dict[Any, trio.lowlevel.Task] = {}

    def release(self, connection: Any) -> None:
        super().release(connection)
        if not connection.usable and not self._available_connections.full():
            self._available_connections.put_nowait(None)

    async def _construct_connection(self) -> Any:
        connection = await super()._construct_connection()
        self._connecting[connection] = trio.lowlevel.current_task()
        return connection

    async def get_connection(self, **kwargs: Any) -> Any:
        # A connection that failed to connect never closes its buffers (ResourceWarning
        # at garbage collection); close them here.
        try:
            return await super().get_connection(**kwargs)
        finally:
            me = trio.lowlevel.current_task()
            for connection in [c for c, task in self._connecting.items() if task is me]:
                del self._connecting[connection]
                if connection not in self._online_connections and not connection.usable:
                    for name in self._BUFFERS:
                        stream = getattr(connection, name, None)
                        if stream is not None:
                            stream.close()


class _Wait:
    """One wait_for_work in progress: a wake-up cancels its scope (unless the waiting
    task wakes itself, reading the inbox: it looks at ``woken`` before waiting again)."""

    __slots__ = ("scope", "task", "woken")

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.task = trio.lowlevel.current_task()
        self.woken = False

    def wake(self) -> None:
        self.woken = True
        if self.scope is not None and trio.lowlevel.current_task() is not self.task:
            self.scope.cancel()


class _Settle:
    __slots__ = ("args", "done", "error", "failure")

    def __init__(self, args: list[str | bytes]) -> None:
        self.args = args
        self.done = trio.Event()
        self.error = ""
        self.failure: BaseException | None = None


class RedisBackend(Producer):
    """Tasks in Redis, shared by any number of worker processes and hosts.

    Open it with ``async with``: that opens the connections, the wake-up listener and
    the settle batcher, and closes them all on exit. The URL comes from ``url``, else
    ``TURRET_REDIS_URL``, else ``redis://127.0.0.1:6379/0``; the password never shows
    in ``repr``, logs or errors. Keys live under ``prefix`` (default ``"turret:"``); for
    Redis Cluster put a hash tag in it (``"{turret}:"``) so every key shares one slot.

    Time comes from ``clock`` (default ``time.time``, shared by hosts with synced
    clocks). Connection loss and Redis restarts are retried with backoff for up to
    ``reconnect_timeout`` seconds; every call is safe to retry. A script call with no
    reply for ``response_timeout`` seconds (a silent server or network) counts as a lost
    connection and is retried on a new one; so does any other call (coredis's
    ``stream_timeout``, unless the URL sets its own). Connections are named
    ``client_name`` (``CLIENT LIST`` shows them). A done task is kept
    ``done_ttl`` seconds, or as long as its result (``None``: forever), then forgotten
    on the backend's clock; its record expires in Redis soon after. For durability
    across a Redis restart, run Redis with ``appendonly yes`` (and ``appendfsync
    everysec`` or ``always``).

    Example::

        async with RedisBackend.open("redis://localhost:6379/0") as backend:
            await backend.push({"to": "a@b.c"}, queue="mail")
            worker = WorkerBuilder("w").backend(backend).queue("mail").build(send)
            await worker.run()
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "turret:",
        codec: Codec | None = None,
        clock: Callable[[], float] = time.time,
        default_max_attempts: int = 3,
        max_payload_bytes: int = 1 << 20,
        aging: float = 60.0,
        max_lost: int = 3,
        result_ttl: float | None = 7 * 86400.0,
        done_ttl: float | None = 7 * 86400.0,
        reconnect_timeout: float = 30.0,
        response_timeout: float = 30.0,
        max_connections: int = 16,
        client_name: str = "turret",
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
        if not prefix:
            raise ValueError("prefix must be a non-empty string, e.g. 'turret:'")
        if reconnect_timeout < 0:
            raise ValueError(f"reconnect_timeout must be >= 0 seconds, got {reconnect_timeout}")
        if not response_timeout > 0:
            raise ValueError(
                f"response_timeout must be > 0 seconds, got {response_timeout} (it bounds the "
                "wait for one script call's reply; a slow Lua script needs a larger one)"
            )
        if max_connections < 4:
            raise ValueError(
                "max_connections must be >= 4 (coredis's pool: the wake-up listener holds "
                f"one, pipelined pushes and the rare calls share the rest), got {max_connections}"
            )
        self._url = url or os.environ.get("TURRET_REDIS_URL") or DEFAULT_REDIS_URL
        self.prefix = prefix
        self.reconnect_timeout = reconnect_timeout
        self.response_timeout = response_timeout
        self.max_connections = max_connections
        self.client_name = client_name
        if result_ttl is None or done_ttl is None:
            self._keep_ms = ""
        else:
            self._keep_ms = str(max(1, math.ceil(max(done_ttl, result_ttl) * 1000)))
        self._ttl = "" if result_ttl is None else _f(result_ttl)
        self._forget = "" if self._forget_after is None else _f(self._forget_after)
        self._client: coredis.Redis[bytes] | None = None
        self._pool: coredis.ConnectionPool[Any] | None = None
        self._scripts: dict[str, Script[bytes]] = {}
        # the connection script calls are multiplexed on (see _fast)
        self._hot: RespConnection | None = None
        self._hot_lock = trio.Lock()
        self._stack: AsyncExitStack | None = None
        # wake-ups: the waits in progress and one generation counter per queue
        self._waits: dict[str, set[_Wait]] = defaultdict(set)
        self._gen: dict[str, int] = defaultdict(int)
        # per queue, from its latest short claim: the wake-up generation when that claim
        # started, when it returned (monotonic), and its next-due hint
        self._quiet: dict[str, tuple[int, float, bytes | str]] = {}
        # the wake-up listener starts with the first wait_for_work (a producer needs none)
        self._nursery: trio.Nursery | None = None
        self._listening: trio.Event | None = None
        # settle batching
        self._settles: list[_Settle] = []
        self._settle_ready = trio.Event()
        self._closed = False
        self._round_trips = 0
        self._reconnects = 0
        self._settle_count = 0
        self._settle_batches = 0
        self._rides = AckRides()
        self._wakeups = 0
        # handoffs (see _redis_lua): this process's inbox, its registration per queue,
        # and the tasks handed to it that no claim has taken yet
        self._inbox = ""
        self._inbox_running = False  # started with the listener
        self._inbox_conn: RespConnection | None = None  # its own: it blocks in BLMPOP
        self._inbox_req: Pending | None = None  # the BLMPOP in flight, awaited by the waits
        self._inbox_sent = 0.0  # when (trio clock) that BLMPOP was sent
        self._inbox_lock = trio.Lock()
        self._draining = False  # closing: no new BLMPOP may take tasks from the inbox
        self._claimed_as: dict[str, tuple[str, float]] = {}  # queue: owner, lease ttl
        self._member: dict[str, str] = {}  # queue: the registration's member
        self._registered: set[str] = set()  # queues whose registration may be live
        self._stash: dict[str, list[tuple[float, Task[bytes]]]] = {}
        self._room: dict[str, int] = {}  # queue: slots the latest short claim left free
        self._handoffs = 0

    def __repr__(self) -> str:
        state = "open" if self._client is not None else "closed"
        return f"<RedisBackend {redact_url(self._url)} prefix={self.prefix!r} {state}>"

    @property
    def url(self) -> str:
        """The server URL with its password redacted."""
        return redact_url(self._url)

    # --- lifetime ---------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str | None = None, **options: Any) -> AsyncIterator[RedisBackend]:
        """Open a backend for the ``async with`` block (same arguments as the class).

        Example::

            async with RedisBackend.open("redis://localhost:6379/0", prefix="app:") as b:
                await b.push(1)
        """
        async with cls(url, **options) as backend:
            yield backend

    async def __aenter__(self) -> RedisBackend:
        if self._stack is not None:
            raise RuntimeError("this RedisBackend is already open; open it once")
        stack = AsyncExitStack()
        try:
            pool = _Pool.from_url(
                self._url,
                decode_responses=False,
                max_connections=self.max_connections,
                client_name=self.client_name,
                stream_timeout=self.response_timeout,  # a ?stream_timeout= in the URL wins
            )
            client: coredis.Redis[bytes] = coredis.Redis(
                connection_pool=pool, decode_responses=False, retry_policy=NoRetryPolicy()
            )
            await stack.enter_async_context(client)
            self._client = client
            self._pool = pool
            for name in lua.__all__:
                self._scripts[name] = client.register_script(getattr(lua, name))
            await self._call(lambda: client.ping())  # fail fast on a wrong URL / password
            await self._call(self._load_scripts)  # EVALSHA from the first call on
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            self._nursery = nursery
            await nursery.start(self._flush_settles)
        except BaseException:
            self._client = None
            self._scripts.clear()
            await stack.aclose()
            raise
        self._closed = False
        self._stack = stack
        self._inbox = os.urandom(8).hex()
        self._draining = False
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stack is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._drain_inbox()
        stack, self._stack = self._stack, None
        self._closed = True
        for op in self._settles:
            op.failure = RuntimeError("the RedisBackend was closed before this settle was sent")
            op.done.set()
        self._settles.clear()
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self._client = None
            self._pool = None
            for conn in (self._hot, self._inbox_conn):
                if conn is not None:
                    conn.close()
            self._hot = None
            self._nursery = None
            self._listening = None
            self._inbox_running = False
            self._inbox_conn = None
            self._inbox_req = None
            self._scripts.clear()
            self._registered.clear()
            self._stash.clear()

    # --- plumbing ---------------------------------------------------------------------

    def _redis(self) -> coredis.Redis[bytes]:
        if self._client is None:
            raise RuntimeError(
                "the RedisBackend is not open; use `async with RedisBackend.open(url) as b:`"
            )
        return self._client

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``; on connection loss retry with backoff for ``reconnect_timeout``.

        Every script is safe to run twice (pushes carry their ids, settles remember the
        token that settled), so a retry after a lost reply keeps the same outcome.
        """
        delay = 0.01
        give_up: float | None = None
        while True:
            try:
                self._round_trips += 1
                return await op()
            except _RETRYABLE as exc:
                if isinstance(exc, TimeoutError) and self._pool is not None:
                    # No reply in time: coredis keeps a silent connection open (it
                    # multiplexes every call on its connections); open new ones.
                    self._pool.disconnect()
                now = time.monotonic()
                if give_up is None:
                    give_up = now + self.reconnect_timeout
                if now >= give_up:
                    raise
                self._reconnects += 1
                log.warning(
                    "redis %s: %s: %s; retrying in %.2fs",
                    self.url,
                    type(exc).__name__,
                    _scrub(str(exc), self._url),
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _script(self, name: str, args: Sequence[str | bytes | int]) -> Any:
        self._redis()
        return await self._call(lambda: self._fast(name, args))

    async def _fast(self, name: str, args: Sequence[str | bytes | int]) -> Any:
        """One ``EVALSHA`` on the hot connection, which every script call shares.

        It is a :class:`RespConnection`, driven from its callers' tasks: coredis's
        command path (a writer task, a reader task, a telemetry span, a pool checkout)
        costs about as much as the round trip itself.
        """
        conn = self._hot
        if conn is None or not conn.usable:
            conn = await self._hot_connection()
        script = self._scripts[name]
        key = self.prefix + "token"  # routes the call to the prefix's slot
        try:
            return await self._reply(conn, b"EVALSHA", script.sha, 1, key, self.prefix, *args)
        except coredis.exceptions.NoScriptError:  # Redis restarted, or SCRIPT FLUSH
            await self._redis().script_load(script.script)
            return await self._reply(conn, b"EVALSHA", script.sha, 1, key, self.prefix, *args)

    async def _reply(self, conn: RespConnection, command: bytes, *args: Any) -> Any:
        """Send ``command`` on ``conn`` and await its reply. A connection with no reply
        for ``response_timeout`` (a server or network gone silent, not reset) is closed:
        every call awaiting it fails with ConnectionError and :meth:`_call` retries it
        on a new connection."""
        pending = conn.send(command, *args)
        with trio.move_on_after(self.response_timeout):
            return await pending
        conn.close(f"no reply from Redis within {self.response_timeout:g}s (response_timeout)")
        return await pending  # raises that ConnectionError

    async def _load_scripts(self) -> None:
        client = self._redis()
        async with client.pipeline(transaction=False) as pipe:
            for script in self._scripts.values():
                pipe.script_load(script.script)

    async def _hot_connection(self) -> RespConnection:
        async with self._hot_lock:
            conn = self._hot
            if conn is not None and conn.usable:
                return conn
            pool = self._pool
            assert pool is not None
            self._hot = None
            if conn is not None:
                conn.close()
            conn = await RespConnection.connect(pool)
            if self._pool is not pool:  # closed meanwhile
                conn.close()
                raise RuntimeError("the RedisBackend was closed")
            self._hot = conn
            return conn

    # --- wake-ups ---------------------------------------------------------------------

    def _wake(self, queue: str) -> None:
        self._gen[queue] += 1
        for wait in self._waits.get(queue, ()):
            wait.wake()

    def _wake_all(self) -> None:
        for queue in list(self._waits):
            self._wake(queue)

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Fan the ``wake`` stream out to this process's waiting workers.

        One blocking ``XREAD`` on a connection of its own; after a connection loss it
        resumes from the last entry it saw, so no wake-up is missed.
        """
        client = self._redis()
        stream = self.prefix + "wake"
        timeout = self._pool.connection_kwargs.get("stream_timeout") if self._pool else None
        block = min(_WAKE_BLOCK, timeout / 2) if timeout else _WAKE_BLOCK
        block_ms = max(1, round(1000 * block))
        last: str | bytes = "$"
        delay = 0.01
        started = False
        while True:
            try:
                if not started:
                    # Resolve "$" now, so a push right after open() is not missed.
                    info = await client.xrevrange(stream, count=1)
                    last = info[0].identifier if info else "0-0"
                    started = True
                    task_status.started()
                elif delay > 0.01:
                    await client.ping()  # reconnected: reset the backoff
                    delay = 0.01
                reply = await client.xread({stream: last}, count=1000, block=block_ms)
            except _RETRYABLE as exc:
                self._reconnects += 1
                log.warning(
                    "redis %s: wake-up listener: %s; reconnecting in %.2fs",
                    self.url,
                    type(exc).__name__,
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
                self._wake_all()  # wake-ups may have been missed meanwhile
                continue
            delay = 0.01  # the connection works again
            if not reply:
                continue
            for entries in reply.values():
                for entry in entries:
                    last = entry.identifier
                    queue = entry.field_values.get(b"q")
                    if queue is not None:
                        self._wakeups += 1
                        self._wake(_s(queue))

    async def _start_listener(self) -> None:
        """Start the wake-up listener and the inbox sweeper once, on the first wait
        (producers never wait)."""
        if self._listening is None:
            self._redis()  # raises the usual error when the backend is not open
            assert self._nursery is not None
            self._listening = listening = trio.Event()
            try:
                await self._nursery.start(self._listen)
                if not self._inbox_running:
                    await self._nursery.start(self._sweeper)
            except BaseException:
                self._listening = None  # the next wait tries again
                listening.set()
                raise
            listening.set()
        else:
            await self._listening.wait()

    async def wait_for_work(self, queue: str) -> None:
        await self._take_inbox()  # a BLMPOP answered while nobody waited
        if self._stash.get(queue):  # handed to us and not claimed yet
            await trio.lowlevel.checkpoint()
            return
        if self._listening is None or not self._listening.is_set():
            # Pushes before the listener started woke no one: look at the queue itself.
            await self._start_listener()
            self._quiet.pop(queue, None)
        quiet = self._quiet.get(queue)
        if quiet is not None and quiet[0] != self._gen[queue]:
            # Woken since the latest short claim started: what the wake-up announced
            # may not have been claimed yet (whichever task claimed; the worker loop
            # waits, its slots claim). Otherwise that claim, which ran after every
            # announced push, found nothing due, so blocking misses no work.
            await trio.lowlevel.checkpoint()
            return
        member = self._waiter_member(queue)
        fresh = quiet is not None and time.monotonic() - quiet[1] <= _HINT_FRESH
        wait = _Wait()
        waits = self._waits[queue]
        waits.add(wait)  # a wake-up from now on ends the wait
        try:
            if fresh and (member is None or self._is_registered(queue, member)):
                assert quiet is not None
                raw = quiet[2]  # the claim's own NEXT_DUE (and registration): no round trip
            elif member is not None:
                raw = await self._register(queue, member)
            else:
                raw = await self._script("NEXT_DUE", [queue])
            deadline = math.inf
            if raw:
                deadline = trio.current_time() + max(0.0, float(_s(raw)) - self.now())
            while not wait.woken:
                step = deadline
                if member is not None:
                    step = min(deadline, trio.current_time() + _REG_RENEW)
                with trio.CancelScope(deadline=step) as wait.scope:
                    if member is None:
                        await trio.sleep_forever()
                    while not wait.woken and not self._stash.get(queue):
                        await self._await_inbox()
                wait.scope = None
                if wait.woken or self._stash.get(queue) or step >= deadline:
                    return
                # Still idle: renew the registration (it expires after _REG_TTL).
                assert member is not None
                raw = await self._register(queue, member)
                if raw:
                    deadline = min(
                        deadline, trio.current_time() + max(0.0, float(_s(raw)) - self.now())
                    )
        except BaseException:
            # Cancelled (the caller's poll interval, a shutdown): the last local waiter
            # withdraws the registration. A task handed over meanwhile stays for the
            # next claim, or is given back after _HOLD (or when the backend closes).
            if len(waits) == 1 and member is not None:
                self._unregister(queue, member)
            raise
        finally:
            waits.discard(wait)

    # --- handoffs ---------------------------------------------------------------------

    def _waiter_member(self, queue: str) -> str | None:
        """This process's handoff registration for ``queue``, from its latest claim
        there (a waiter's owner and lease TTL), or None before any claim."""
        claimed = self._claimed_as.get(queue)
        if claimed is None or not self._inbox_running:
            return None
        owner, lease_ttl = claimed
        return f"{self._inbox} {_f(lease_ttl)} {owner}"

    def _is_registered(self, queue: str, member: str) -> bool:
        return queue in self._registered and self._member.get(queue) == member

    async def _register(self, queue: str, member: str) -> bytes | str:
        old = self._member.get(queue, "")
        now = self.now()
        raw = await self._script(
            "REGISTER",
            [
                queue,
                _f(now),
                member,
                _f(now + _REG_TTL),
                old if old != member else "",
                str(self._room.get(queue, 1)),
            ],
        )
        self._member[queue] = member
        if int(raw[1]):
            self._registered.add(queue)
        else:
            self._registered.discard(queue)
        return raw[0]  # type: ignore[no-any-return]

    def _unregister(self, queue: str, member: str) -> None:
        """Withdraw a registration without waiting (safe inside a cancelled task): the
        request is queued on the hot connection, in order with every later call."""
        self._registered.discard(queue)
        conn = self._hot
        if conn is None or not conn.usable or self._client is None:
            return  # it expires after _REG_TTL; a task handed over meanwhile is kept
        script = self._scripts["UNREGISTER"]
        conn.send(b"EVALSHA", script.sha, 1, self.prefix + "token", self.prefix, queue, member)

    async def _await_inbox(self) -> None:
        """Wait for the inbox's BLMPOP (sending one if none is in flight) and take what
        it brought. Every wait awaits the same request; cancelling a wait leaves it in
        flight (the connection stays usable), for the next wait or the sweeper."""
        req = self._inbox_req
        if req is None:
            req = await self._send_inbox()
            if req is None:  # no connection yet, or closing
                await trio.sleep(0.05)
                return
        try:
            reply = await req
        except _RETRYABLE as exc:
            self._inbox_failed(req, exc)
            await trio.sleep(0.05)
            return
        self._took(req, reply)

    async def _take_inbox(self) -> None:
        """Take the reply of a BLMPOP answered while nobody awaited it (read without
        waiting: a worker busy with its tasks still gets what a push handed it)."""
        req, conn = self._inbox_req, self._inbox_conn
        if req is not None and not req.complete and conn is not None:
            conn.poll()
        if req is not None and req.complete:
            try:
                reply = await req  # answered: returns at once
            except _RETRYABLE as exc:
                self._inbox_failed(req, exc)
                return
            self._took(req, reply)

    async def _send_inbox(self) -> Pending | None:
        async with self._inbox_lock:
            if self._inbox_req is not None:
                return self._inbox_req
            conn = self._inbox_conn
            pool = self._pool
            if pool is None or self._draining:
                return None
            if conn is None or not conn.usable:
                self._inbox_conn = None
                if conn is not None:
                    conn.close()
                try:
                    conn = await RespConnection.connect(pool)
                except _RETRYABLE as exc:
                    self._reconnects += 1
                    log.warning("redis %s: inbox: %s", self.url, type(exc).__name__)
                    await trio.sleep(0.05)
                    return None
                if self._pool is not pool or self._draining:  # closed meanwhile
                    conn.close()
                    return None
                self._inbox_conn = conn
            return self._blmpop(conn)

    def _blmpop(self, conn: RespConnection) -> Pending:
        self._inbox_sent = trio.current_time()
        self._inbox_req = conn.send(
            b"BLMPOP", _f(_INBOX_BLOCK), 1, self.prefix + "i:" + self._inbox, b"LEFT", b"COUNT", 100
        )
        return self._inbox_req

    def _blmpop_nowait(self) -> None:
        """Put a BLMPOP in flight again at once (no wait), if the connection is up: a
        handoff that lands before the next wait is then already on its way here."""
        conn = self._inbox_conn
        if (
            self._inbox_req is None
            and not self._draining
            and conn is not None
            and conn.usable
            and not self._inbox_lock.locked()
        ):
            self._blmpop(conn)

    def _inbox_failed(self, req: Any, exc: BaseException) -> None:
        if self._inbox_req is req:
            self._inbox_req = None
            self._reconnects += 1
            log.warning("redis %s: inbox: %s; reconnecting", self.url, type(exc).__name__)
            if self._inbox_conn is not None:
                self._inbox_conn.close()

    def _took(self, req: Any, reply: Any) -> None:
        if self._inbox_req is not req:
            return  # another wait took it
        self._inbox_req = None
        if reply:
            self._deliver(reply[1])

    def _deliver(self, items: Sequence[bytes]) -> None:
        until = trio.current_time() + _HOLD
        woken: set[str] = set()
        for item in items:
            task = _handed_task(item)
            queue = task.ctx.queue
            self._stash.setdefault(queue, []).append((until, task))
            self._room.pop(queue, None)  # taken by the push
            if item.partition(b"\n")[0].endswith(b" 0"):
                self._registered.discard(queue)  # no room left: the push took it
            woken.add(queue)
        self._handoffs += len(items)
        for queue in woken:
            self._wake(queue)

    async def _sweeper(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Every _HOLD / 2: keep a BLMPOP in flight on the inbox, take what one brought
        while nobody waited, and give back stashed tasks no claim took within _HOLD."""
        self._inbox_running = True
        try:
            task_status.started()
            while True:
                await self._take_inbox()
                if self._inbox_req is None:
                    await self._send_inbox()
                now = trio.current_time()
                if self._inbox_req is not None and now - self._inbox_sent > _INBOX_STUCK:
                    # No reply long after the BLMPOP's block ended: a silent network.
                    self._inbox_failed(self._inbox_req, TimeoutError("BLMPOP: no reply"))
                for queue, entries in list(self._stash.items()):
                    keep = [(until, task) for until, task in entries if until > now]
                    for until, task in entries:
                        if until <= now:
                            assert self._nursery is not None
                            self._nursery.start_soon(self._give_back, task)
                    if keep:
                        self._stash[queue] = keep
                    else:
                        del self._stash[queue]
                conn = self._inbox_conn
                if conn is not None and not conn.pollable and not any(self._waits.values()):
                    # TLS: a reply is read only by awaiting it (and the BLMPOP itself is
                    # sent by the first caller awaiting): nobody waits for work, so here.
                    with trio.move_on_after(_HOLD / 2):
                        await self._await_inbox()
                else:
                    await trio.sleep(_HOLD / 2)
        finally:
            self._inbox_running = False

    async def _give_back(self, task: Task[bytes]) -> None:
        assert task.ctx.lease is not None
        try:
            await self.release(task.ctx.id, task.ctx.lease.token)
        except LeaseLost:
            pass  # its lease expired meanwhile and was reclaimed
        except Exception as exc:  # its lease expires and is reclaimed
            log.warning("redis %s: giving back handed-off task %s: %r", self.url, task.id, exc)

    async def _drain_inbox(self) -> None:
        """At close: withdraw every registration, empty the inbox and give back (no
        attempt used) every handed-off task no claim took."""
        self._draining = True
        req, conn = self._inbox_req, self._inbox_conn
        if req is not None and conn is not None and not req.complete:
            # End the BLMPOP at once (as if it timed out) and take what it brought.
            with contextlib.suppress(Exception), trio.move_on_after(1):
                await self._redis().client_unblock(conn.client_id)
                await req
        await self._take_inbox()
        if not self._member and not self._stash:
            return
        pairs: list[str] = []
        for queue, member in self._member.items():
            pairs += [queue, member]
        tasks = [task for entries in self._stash.values() for _, task in entries]
        self._stash.clear()
        self._member.clear()
        self._registered.clear()
        try:
            items = await self._script("DRAIN", [self._inbox, *pairs])
            tasks += [_handed_task(item) for item in items]
            if tasks:
                nonce = os.urandom(8).hex()
                args: list[str | bytes] = [_f(self.now()), "", "", _f(self.aging), nonce, ""]
                for task in tasks:
                    assert task.ctx.lease is not None
                    args += ["L", task.ctx.id, str(task.ctx.lease.token), "", ""]
                await self._script("SETTLE", args)
        except Exception as exc:  # their leases expire, are reclaimed
            log.warning("redis %s: giving back %d handed-off tasks: %r", self.url, len(tasks), exc)

    # --- producing --------------------------------------------------------------------

    async def _store(self, encoded: Sequence[tuple[Job, bytes]]) -> list[TaskId]:
        if not encoded:
            await trio.lowlevel.checkpoint()
            return []
        now = self.now()
        nows = _f(now)
        args: list[str | bytes] = []
        for job, payload in encoded:
            run_at = now + job.delay
            order = max(now, run_at) - job.priority * self.aging
            args += [
                TaskId.new(),
                job.queue,
                payload,
                str(job.priority),
                str(job.max_attempts or self.default_max_attempts),
                json.dumps(dict(job.headers)) if job.headers else "",
                "" if job.unique_key is None else "k:" + job.unique_key,
                _f(run_at),
                _f(order),
                "1" if run_at <= now else "0",
            ]
        width = 10 * _PUSH_CHUNK
        if len(args) <= width:
            ids = await self._script("PUSH", [nows, *args])
        else:
            ids = await self._push_pipelined(
                nows, [args[i : i + width] for i in range(0, len(args), width)]
            )
        return [TaskId(_s(i)) for i in ids]

    async def _push_pipelined(self, nows: str, chunks: list[list[str | bytes]]) -> list[Any]:
        client = self._redis()
        script = self._scripts["PUSH"]
        key = self.prefix + "token"

        async def run() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                results: list[Any] = [
                    script(keys=[key], args=[self.prefix, nows, *chunk], client=pipe)
                    for chunk in chunks
                ]
            return [i for r in results for i in await r]

        return await self._call(run)

    # --- consuming --------------------------------------------------------------------

    async def claim(
        self, queue: str, *, owner: str, limit: int, lease_ttl: float
    ) -> list[Task[bytes]]:
        self._claimed_as[queue] = (owner, lease_ttl)
        out: list[Task[bytes]] = []
        await self._take_inbox()  # returns at once
        stash = self._stash.get(queue)
        if stash:
            # Handed to this process by a push: already leased, no round trip.
            take = stash[:limit]
            del stash[:limit]
            if not stash:
                del self._stash[queue]
            now = self.now()
            for _, task in take:
                assert task.ctx.lease is not None
                if task.ctx.lease.deadline > now:  # else reclaimed like any expired lease
                    out.append(task)
            limit -= len(out)
            if limit <= 0 and out:
                return out
        gen = self._gen[queue]
        now = self.now()
        deadline = now + lease_ttl
        member = self._member.get(queue, "") if self._inbox_running else ""
        # free slots known from the short claims since the worker went idle (none of
        # them took a task): a later claim for fewer slots leaves the room as it was
        floor = 0 if out else self._room.get(queue, 0)
        call: list[str | bytes] = [
            queue,
            owner,
            str(limit),
            _f(now),
            _f(deadline),
            str(self.max_lost),
            os.urandom(8).hex(),  # the nonce: a retried call is the same claim
            member,
            _f(now + _REG_TTL),
            str(_ROOM_MAX),
            str(floor),
        ]
        riders = self._rides.take(_SETTLE_CHUNK)
        with self._rides.claiming(riders):
            if riders:  # acks riding on this claim: stored first, in the same call
                call += self._settle_header()
                for task_id, token in AckRides.keys(riders):
                    call += _ack_args(task_id, token, None)
                settled, raw = await self._script("SETTLE_CLAIM", call)
                AckRides.answer(riders, [LeaseLost(_s(err)) if err else None for err in settled])
                self._settle_count += len(settled)
            else:
                raw = await self._script("CLAIM", call)
        rows = len(raw) - len(raw) % 9
        if rows < len(raw):  # a short claim: NEXT_DUE's answer follows the tasks
            self._quiet[queue] = (gen, time.monotonic(), raw[rows])
            free = limit - rows // 9 if rows else max(limit, floor)
            self._room[queue] = min(free, _ROOM_MAX)
        else:
            self._room.pop(queue, None)  # full: busy
        if member:
            if rows + 1 < len(raw) and raw[-1] == b"1":
                self._registered.add(queue)  # renewed: the caller goes idle
                self._blmpop_nowait()  # a handoff from now on is on its way at once
            else:
                self._registered.discard(queue)  # busy (a full claim) or paused
        for i in range(0, rows, 9):
            tid, args, attempt, max_attempts, priority, run_at, enq, headers, token = raw[i : i + 9]
            ctx = TaskContext(
                id=TaskId(_s(tid)),
                queue=queue,
                attempt=int(attempt),
                max_attempts=int(max_attempts),
                priority=int(priority),
                run_at=float(run_at),
                enqueued_at=float(enq),
                headers=json.loads(headers) if headers else {},
                lease=Lease(owner, deadline, int(token)),
            )
            out.append(Task(args, ctx))
        return out

    async def renew(
        self, leases: Sequence[tuple[TaskId, int]], *, lease_ttl: float
    ) -> list[Renewal]:
        if not leases:
            await trio.lowlevel.checkpoint()
            return []
        now = self.now()
        args: list[str] = [_f(now), _f(now + lease_ttl)]
        for task_id, token in leases:
            args += [task_id, str(token)]
        raw = await self._script("RENEW", args)
        verdicts = {0: Renewal.LOST, 1: Renewal.RENEWED, 2: Renewal.CANCEL_REQUESTED}
        return [verdicts[int(v)] for v in raw]

    async def ack(self, task_id: TaskId, token: int, *, result: bytes | None = None) -> None:
        await self._settle(_ack_args(task_id, token, result))

    async def ack_many(
        self, acks: Sequence[tuple[TaskId, int, bytes | None]]
    ) -> list[LeaseLost | None]:
        """Ack several tasks, one script call per 500 of them; one outcome each.

        Example::

            outcomes = await backend.ack_many([(task.ctx.id, task.ctx.lease.token, None)])
        """
        rode = await self._rides.ride(acks, _SETTLE_CHUNK)
        if rode is not None:
            return rode
        outcomes: list[LeaseLost | None] = []
        for start in range(0, len(acks), _SETTLE_CHUNK):
            chunk = acks[start : start + _SETTLE_CHUNK]
            args = self._settle_header()
            for task_id, token, result in chunk:
                args += _ack_args(task_id, token, result)
            raw = await self._script("SETTLE", args)
            self._settle_count += len(chunk)
            self._settle_batches += 1
            outcomes += [LeaseLost(_s(err)) if err else None for err in raw]
        return outcomes

    def _settle_header(self) -> list[str | bytes]:
        """The SETTLE script's leading arguments; its nonce makes a retried call (after a
        lost reply) recognise the settles it already made."""
        return [
            _f(self.now()),
            self._ttl,
            self._keep_ms,
            _f(self.aging),
            os.urandom(8).hex(),
            self._forget,
        ]

    async def retry(self, task_id: TaskId, token: int, *, delay: float, error: str) -> None:
        run_at = self.now() + max(0.0, delay)
        await self._settle(["R", task_id, str(token), _f(run_at), error])

    async def dead(self, task_id: TaskId, token: int, *, reason: str) -> None:
        await self._settle(["D", task_id, str(token), reason, ""])

    async def release(self, task_id: TaskId, token: int) -> None:
        await self._settle(["L", task_id, str(token), "", ""])

    async def _settle(self, args: list[str | bytes]) -> None:
        """Queue one settle for the batcher and wait for its own outcome."""
        self._redis()
        op = _Settle(args)
        self._settles.append(op)
        self._settle_ready.set()
        await op.done.wait()
        if op.failure is not None:
            raise op.failure
        if op.error:
            raise LeaseLost(op.error)

    async def _flush_settles(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Send queued settles, one script call per round trip, and hand out outcomes."""
        task_status.started()
        while True:
            await self._settle_ready.wait()
            self._settle_ready = trio.Event()
            ops, self._settles = self._settles[:_SETTLE_CHUNK], self._settles[_SETTLE_CHUNK:]
            if self._settles:
                self._settle_ready.set()
            if not ops:
                continue
            args = self._settle_header()
            for op in ops:
                args += op.args
            try:
                raw = await self._script("SETTLE", args)
            except Exception as exc:  # delivered to every caller, who raises it
                for op in ops:
                    op.failure = exc
                    op.done.set()
                continue
            except BaseException:
                for op in ops:
                    op.failure = RuntimeError(
                        "the RedisBackend was closed while this settle was in flight; "
                        "its outcome is unknown (the lease decides: it expires or was settled)"
                    )
                    op.done.set()
                raise
            self._settle_count += len(ops)
            self._settle_batches += 1
            for op, err in zip(ops, raw, strict=True):
                op.error = _s(err)
                op.done.set()

    # --- producers and operators ------------------------------------------------------

    async def get_task(self, task_id: TaskId) -> TaskInfo | None:
        client = self._redis()
        raw = await self._call(lambda: client.hgetall(self.prefix + "t:" + task_id))
        if not raw:
            return None
        h = {_s(k): v for k, v in raw.items()}
        if (
            "fa" in h
            and self.kept_until(float(h["fa"]), float(h["rx"]) if "rx" in h else None) <= self.now()
        ):
            return None  # done and forgotten (its key expires in Redis soon after)
        return self._info(task_id, h)

    def _info(self, task_id: str, h: dict[str, bytes]) -> TaskInfo:
        now = self.now()
        state = TaskState(_s(h["s"]))
        leased = state is TaskState.LEASED
        rx = float(h["rx"]) if "rx" in h else None
        expired = rx is not None and rx <= now
        headers = h.get("h", b"")
        return TaskInfo(
            id=TaskId(task_id),
            queue=_s(h["q"]),
            state=state,
            args=h["a"],
            attempt=int(h["n"]),
            max_attempts=int(h["m"]),
            priority=int(h["p"]),
            run_at=float(h["r"]),
            enqueued_at=float(h["e"]),
            headers=json.loads(headers) if headers else {},
            unique_key=_s(h["u"]) if "u" in h else None,
            owner=_s(h["w"]) if leased and "w" in h else None,
            lease_deadline=float(h["d"]) if leased and "d" in h else None,
            token=int(h.get("t", b"0")),
            lost=int(h.get("l", b"0")),
            result=None if expired else h.get("res"),
            result_expires_at=None if expired else rx,
            last_error=_s(h["err"]) if "err" in h else None,
            dead_reason=_s(h["dr"]) if "dr" in h else None,
            cancel_requested="c" in h,
        )

    async def cancel(self, task_id: TaskId, *, reason: str = "cancel requested") -> bool:
        return bool(await self._script("CANCEL", [task_id, reason]))

    async def reclaim(self) -> int:
        return int(await self._script("RECLAIM", [_f(self.now()), str(self.max_lost)]))

    async def pause_queue(self, queue: str) -> None:
        check_queue_name(queue)
        client = self._redis()

        async def run() -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(self.prefix + "q:" + queue + ":paused", "1")
                pipe.sadd(self.prefix + "queues", [queue])

        await self._call(run)

    async def resume_queue(self, queue: str) -> None:
        check_queue_name(queue)
        client = self._redis()

        async def run() -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete([self.prefix + "q:" + queue + ":paused"])
                pipe.xadd(
                    self.prefix + "wake",
                    {"q": queue},
                    trim_strategy=PureToken.MAXLEN,
                    threshold=1000,
                    trim_operator=PureToken.APPROXIMATELY,
                )

        await self._call(run)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[TaskInfo]:
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        raw = await self._script("DEAD_LETTERS", [queue, str(limit)])
        out: list[TaskInfo] = []
        i = 0
        while i < len(raw):
            task_id, n = _s(raw[i]), int(raw[i + 1])
            fields = raw[i + 2 : i + 2 + n]
            out.append(self._info(task_id, {_s(fields[j]): fields[j + 1] for j in range(0, n, 2)}))
            i += 2 + n
        return out

    async def replay(self, task_ids: Sequence[TaskId], *, delay: float = 0.0) -> list[TaskId]:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        if not task_ids:
            await trio.lowlevel.checkpoint()
            return []
        now = self.now()
        raw = await self._script("REPLAY", [_f(now), _f(now + delay), _f(self.aging), *task_ids])
        return [TaskId(_s(i)) for i in raw]

    # --- inspection -------------------------------------------------------------------

    async def stats(self) -> list[QueueStats]:
        raw = await self._script("STATS", [_f(self.now())])
        out = [
            QueueStats(
                queue=_s(raw[i]),
                pending=int(raw[i + 1]),
                scheduled=int(raw[i + 2]),
                leased=int(raw[i + 3]),
                done=int(raw[i + 4]),
                dead=int(raw[i + 5]),
                paused=bool(raw[i + 6]),
                reclaimed=int(raw[i + 7]),
            )
            for i in range(0, len(raw), 8)
        ]
        return sorted(out, key=lambda s: s.queue)

    def statistics(self) -> RedisStatistics:
        """A frozen snapshot of the client side: round trips, reconnects, batching.

        Example::

            print(backend.statistics().reconnects)
        """
        return RedisStatistics(
            url=self.url,
            prefix=self.prefix,
            round_trips=self._round_trips,
            reconnects=self._reconnects,
            settles=self._settle_count,
            settle_batches=self._settle_batches,
            wakeups=self._wakeups,
            handoffs=self._handoffs,
            acks_with_claims=self._rides.carried,
        )

    async def prune(self) -> int:
        """Forget the done tasks past their retention now (on the backend's clock); how
        many. Their keys expire in Redis on their own; settles and ``stats()`` drop them
        from the done count as well.

        Example::

            async with RedisBackend.open(url, done_ttl=3600) as backend:
                forgotten = await backend.prune()
        """
        return int(await self._script("PRUNE", [_f(self.now())]))

    async def purge(self) -> int:
        """Delete every key under this backend's prefix (tests, resets); return how many.

        Uses ``SCAN`` + ``UNLINK``, never ``FLUSHALL``; other prefixes are untouched.

        Example::

            async with RedisBackend.open(url, prefix="test-42:") as backend:
                ...
                await backend.purge()
        """
        client = self._redis()
        pattern = _glob_escape(self.prefix) + "*"

        async def run() -> int:
            count = 0
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    count += await client.unlink(batch)
                    batch = []
            if batch:
                count += await client.unlink(batch)
            return count

        return await self._call(run)


def _ack_args(task_id: TaskId, token: int, result: bytes | None) -> list[str | bytes]:
    """One ack's five arguments to the SETTLE script."""
    if result is None:
        return ["A", task_id, str(token), "0", ""]
    return ["A", task_id, str(token), "1", result]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _scrub(text: str, url: str) -> str:
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def _handed_task(item: bytes) -> Task[bytes]:
    """A task from an inbox entry (``handoff_item`` in ``_redis_lua``)."""
    head, _, rest = item.partition(b"\n")
    fields = head.split(b" ")
    tok, deadline, attempt, max_attempts, priority, run_at, enq, lq, li, lo, lh = fields[:11]
    a = int(lq)
    b = a + int(li)
    c = b + int(lo)
    d = c + int(lh)
    headers = rest[c:d]
    ctx = TaskContext(
        id=TaskId(rest[a:b].decode()),
        queue=rest[:a].decode(),
        attempt=int(attempt),
        max_attempts=int(max_attempts),
        priority=int(priority),
        run_at=float(run_at),
        enqueued_at=float(enq),
        headers=json.loads(headers) if headers else {},
        lease=Lease(rest[b:c].decode(), float(deadline), int(tok)),
    )
    return Task(rest[d:], ctx)
