"""A Redis connection driven from its callers' own tasks: RedisBackend's hot path.

A coredis connection runs a writer task and a reader task: a request wakes the writer,
its reply wakes the reader, and the reader wakes the caller. That is three scheduler
hops, about 0.1 ms per round trip on this machine, for every claim, settle and push.

A :class:`RespConnection` has no task of its own, as ``_pg_conn.py`` drives psycopg:

* **Writing.** A caller writes its command itself, at once and without waiting when the
  socket takes it (a plain socket always does, short of a full send buffer). Otherwise
  the command waits in order behind the others, and the next caller that awaits a reply
  sends them all.
* **Reading.** The first caller waiting for a reply reads the socket for everyone.
  Replies come back in order; each goes to its request and wakes whoever awaits it.
  When the reader has its own reply, it hands the reading on to the next caller still
  waiting.

The protocol is coredis's own: its RESP packer and parser, RESP3 after ``HELLO 3``.
coredis still parses the URL, runs the wake-up listener and the rare calls.

Example (inside the backend)::

    conn = await RespConnection.connect(pool)
    assert await conn.send(b"PING") == b"PONG"
    pending = conn.send(b"BLMPOP", 5, 1, b"list", b"LEFT")  # in flight...
    reply = await pending  # ...awaited later, by any task, or by several at once
"""

from __future__ import annotations

import collections
import contextlib
import copy
import os
import ssl
from collections.abc import Generator
from typing import Any

import coredis
import coredis.exceptions
import trio
from coredis._packer import Packer
from coredis.constants.resp import DataType
from coredis.parser import NotEnoughData, Parser

__all__ = ["Pending", "RespConnection"]

_SEND_TIMEOUT = 10.0  # a send that cannot finish within this breaks the connection


def _socket_of(stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> Any:
    return (
        stream.socket if isinstance(stream, trio.SocketStream) else stream.transport_stream.socket
    )


class Pending:
    """A command sent on a :class:`RespConnection`: await it (any task, any number of
    times, several at once) for its reply. A reply that is an error raises it."""

    __slots__ = ("_conn", "_event", "_reply", "_waiters", "complete")

    def __init__(self, conn: RespConnection) -> None:
        self._conn = conn
        self._event: trio.Event | None = None
        self._reply: Any = None
        self._waiters = 0
        self.complete = False

    def _resolve(self, reply: Any) -> None:
        self._reply = reply
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._get().__await__()

    async def _get(self) -> Any:
        conn = self._conn
        if not self.complete:
            if conn._out:
                await conn._flush()
            while not self.complete:
                if conn._reading:
                    # Another caller reads: it wakes us with our reply, or when it
                    # stops reading before our reply came (then we read).
                    if self._event is None:
                        self._event = trio.Event()
                    event = self._event
                    self._waiters += 1
                    try:
                        await event.wait()
                    except BaseException:
                        self._waiters -= 1
                        if not conn._reading:
                            conn._hand_off()  # cancelled after being handed the reading
                        raise
                    self._waiters -= 1
                else:
                    await conn._read(self)
        else:
            await trio.lowlevel.checkpoint()
        if isinstance(self._reply, BaseException):
            # A copy: one error (a lost connection) may reach many tasks, or one twice.
            raise copy.copy(self._reply)
        return self._reply


class RespConnection:
    """One connection to Redis for many concurrent callers, without tasks of its own.

    Example::

        conn = await RespConnection.connect(pool)
        try:
            assert await conn.send(b"PING") == b"PONG"
        finally:
            conn.close()
    """

    def __init__(self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
        self._stream = stream
        # a plain socket is written without waiting (see _write); TLS goes through _flush
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self._packer = Packer("utf-8")
        self._parser = Parser()
        self._pending: collections.deque[Pending] = collections.deque()
        self._out: list[bytes] = []  # written by nobody yet, in order
        self._flushing = False
        self._reading = False
        self._error: coredis.exceptions.ConnectionError | None = None
        self.client_id = 0

    @classmethod
    async def connect(cls, pool: coredis.ConnectionPool[Any]) -> RespConnection:
        """Connect where ``pool`` connects (coredis parsed its URL): same host or socket,
        TLS context, credentials, database and client name.

        Example::

            conn = await RespConnection.connect(coredis.ConnectionPool.from_url(url))
        """
        kwargs = pool.connection_kwargs
        location: Any = pool.location
        context: ssl.SSLContext | None = kwargs.get("ssl_context")
        stream: Any = None
        try:
            with trio.fail_after(pool.connect_timeout or 10.0):
                if hasattr(location, "path"):
                    stream = await trio.open_unix_socket(location.path)
                else:
                    stream = await trio.open_tcp_stream(location.host, location.port)
                if context is not None:
                    stream = trio.SSLStream(stream, context, server_hostname=location.host)
                    await stream.do_handshake()
        except BaseException as exc:
            if stream is not None:
                _socket_of(stream).close()
            if isinstance(exc, (OSError, trio.TooSlowError, trio.BrokenResourceError)):
                # a failed TLS handshake is a BrokenResourceError with no text of its own:
                # the SSL error under it says why (a certificate the CA list refuses, ...)
                why = str(exc) or str(exc.__cause__ or "") or type(exc).__name__
                raise coredis.exceptions.ConnectionError(
                    f"cannot connect to Redis at {location}: {why}"
                ) from exc
            raise
        conn = cls(stream)
        try:
            hello: list[Any] = [b"HELLO", 3]
            username, password = kwargs.get("username"), kwargs.get("password")
            if username or password:
                hello += [b"AUTH", username or b"default", password or b""]
            if kwargs.get("client_name"):
                hello += [b"SETNAME", kwargs["client_name"]]
            greeting = await conn.send(*hello)
            conn.client_id = int(greeting[b"id"])
            if kwargs.get("db"):
                await conn.send(b"SELECT", kwargs["db"])
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def pollable(self) -> bool:
        """True when :meth:`poll` can read (a plain socket; not TLS)."""
        return self._fd >= 0

    @property
    def usable(self) -> bool:
        """False once the connection broke or was closed (make a new one)."""
        return self._error is None

    def send(self, command: bytes, *args: Any) -> Pending:
        """Send one command now (no waiting) and return its :class:`Pending` reply.

        A command the socket does not take at once is sent by the next caller that
        awaits a reply on this connection, in order. On a broken connection the reply
        is a ``coredis.exceptions.ConnectionError``.
        """
        pending = Pending(self)
        if self._error is not None:
            pending._resolve(self._error)
            return pending
        self._pending.append(pending)
        self._write(b"".join(self._packer.pack_command(command, *args)))
        return pending

    def close(self, reason: str = "the connection was closed") -> None:
        """Close the socket; every reply still awaited fails with ConnectionError(reason).

        Example::

            conn.close("no reply from Redis within 30s")
        """
        self._fail(coredis.exceptions.ConnectionError(reason))

    # --- internals ------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._out or self._flushing or self._fd < 0:
            self._out.append(data)
            return
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(coredis.exceptions.ConnectionError(f"connection lost: {exc}"))
            return
        if sent < len(data):
            self._out.append(data[sent:])

    async def _flush(self) -> None:
        """Send what waits in ``_out`` (unless another caller is sending it already)."""
        if self._flushing:
            await trio.lowlevel.checkpoint()
            return
        self._flushing = True
        try:
            # Shielded: a send cut short leaves the stream unusable for every caller.
            with trio.CancelScope(shield=True), trio.move_on_after(_SEND_TIMEOUT) as scope:
                while self._out and self._error is None:
                    data = b"".join(self._out)
                    self._out.clear()
                    if self._fd < 0:
                        await self._stream.send_all(data)
                        continue
                    while data:
                        await trio.lowlevel.wait_writable(self._fd)
                        if self._error is not None:
                            break  # closed meanwhile: the fd may be another file's now
                        with contextlib.suppress(BlockingIOError):
                            data = data[os.write(self._fd, data) :]
            if scope.cancelled_caught:
                self._fail(coredis.exceptions.ConnectionError("a send to Redis timed out"))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(coredis.exceptions.ConnectionError(f"connection lost: {exc}"))
        finally:
            self._flushing = False

    async def _read(self, mine: Pending) -> None:
        """Read once for everyone and resolve the replies that came; hand the reading on
        once ``mine`` (the reader's own request) is answered, or if it is cancelled."""
        self._reading = True
        try:
            data = await self._stream.receive_some(1 << 16)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._reading = False
            self._fail(coredis.exceptions.ConnectionError(f"connection lost: {exc}"))
            return
        except BaseException:  # cancelled: the next caller waiting reads
            self._reading = False
            self._hand_off()
            raise
        self._reading = False
        self._received(data)
        if mine.complete:
            self._hand_off()

    def poll(self) -> None:
        """Take the replies that have arrived, without waiting (when no caller is reading
        for everyone already): a reply nobody awaits, such as a blocking command's sent
        ahead, is then ``complete``. A no-op on TLS, whose records need awaiting.

        Example::

            pending = conn.send(b"BLMPOP", 5, 1, b"inbox", b"LEFT")
            ...  # later, in a step that must not wait
            conn.poll()
            if pending.complete:
                reply = await pending  # at once
        """
        if self._reading or self._error is not None or self._fd < 0 or not self._pending:
            return
        try:
            data = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(coredis.exceptions.ConnectionError(f"connection lost: {exc}"))
            return
        self._received(data)
        self._hand_off()  # a caller waiting may have been answered: the reading is free

    def _received(self, data: bytes | bytearray) -> None:
        """Parse every complete reply in ``data`` (and what came before) and resolve its
        request, in order."""
        if not data:
            self._fail(coredis.exceptions.ConnectionError("Redis closed the connection"))
            return
        parser = self._parser
        parser.feed(bytes(data))
        try:
            while self._pending:
                parsed = parser.parse(decode=False)
                if isinstance(parsed, NotEnoughData):
                    break
                kind, value = parsed
                if kind == DataType.PUSH:
                    continue  # no subscriptions here: nothing to deliver it to
                self._pending.popleft()._resolve(value)
        except Exception as exc:  # a reply coredis cannot parse: nothing after it is safe
            self._fail(coredis.exceptions.ConnectionError(f"bad reply: {exc!r}"))

    def _hand_off(self) -> None:
        """Wake the first caller still waiting for a reply: it reads next."""
        for pending in self._pending:
            if pending._waiters:
                pending._wake()
                return

    def _fail(self, error: coredis.exceptions.ConnectionError) -> None:
        if self._error is None:
            self._error = error
            _socket_of(self._stream).close()
        pending, self._pending = self._pending, collections.deque()
        self._out.clear()
        for p in pending:
            p._resolve(self._error)
