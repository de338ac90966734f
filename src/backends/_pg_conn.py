"""A psycopg connection whose statements are driven from trio, without threads.

psycopg 3 implements its protocol as generators that yield when they would block
(``Wait.R`` / ``Wait.W`` / ``Wait.RW``) and are resumed with what became ready; its
sync API drives them with ``select`` and its async API with asyncio. Here they are
driven with :func:`trio.lowlevel.wait_readable` / :func:`~trio.lowlevel.wait_writable`
on the connection's socket, so a statement costs one event-loop wake-up instead of a
thread hand-off (which, on a busy interpreter, waits up to ``sys.getswitchinterval()``
for the GIL on every reply).

The hot statements (a worker's claims and acks) take a leaner path,
:meth:`TrioConnection.run_prepared`: prepared once per connection, run with text
parameters the caller has already encoded, answered in binary, with no cursor. It costs
about half the CPU of :meth:`TrioConnection.execute` (query conversion, the parameter
dumpers and the row makers are psycopg's Python code, run on every call).

A statement interrupted in the middle of the protocol (cancellation, a broken socket)
leaves the connection in an unknown state: :attr:`TrioConnection.reusable` turns False
and the owner must close it.
"""

from __future__ import annotations

import select
from collections.abc import Generator, Sequence
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import errors, generators, pq
from psycopg._enums import Ready, Wait

__all__ = ["TrioConnection"]

T = TypeVar("T")

Conn = psycopg.Connection[tuple[Any, ...]]

_IDLE_STATES = (
    pq.TransactionStatus.IDLE,
    pq.TransactionStatus.INTRANS,
    pq.TransactionStatus.INERROR,
)


async def _wait(gen: Generator[Any, Any, T], fd: int) -> T:
    """Run one of psycopg's protocol generators to completion on trio; its value."""
    waited = False
    try:
        state = next(gen)
        while True:
            if state == Wait.R:
                await trio.lowlevel.wait_readable(fd)
                ready = Ready.R
            elif state == Wait.W:
                await trio.lowlevel.wait_writable(fd)
                ready = Ready.W
            else:  # Wait.RW: only when the send buffer is full (a very large statement)
                with trio.move_on_after(0.01):
                    await trio.lowlevel.wait_writable(fd)
                readable, writable, _ = select.select([fd], [fd], [], 0)
                ready = Ready((Ready.R if readable else 0) | (Ready.W if writable else 0))
            waited = True
            state = gen.send(ready)
    except StopIteration as stop:
        value: T = stop.value
    if not waited:
        await trio.lowlevel.cancel_shielded_checkpoint()
    return value


class TrioConnection:
    """One autocommit connection; :meth:`execute` runs a statement on trio.

    Example::

        conn = TrioConnection(psycopg.Connection.connect(dsn, autocommit=True))
        rows = await conn.execute("SELECT %s::int", (1,))
        conn.close()
    """

    __slots__ = ("_cursor", "_prepared", "conn", "fd", "reusable")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.fd = conn.pgconn.socket
        self._cursor = conn.cursor()
        self._prepared: set[bytes] = set()
        self.reusable = True

    @property
    def broken(self) -> bool:
        return self.conn.broken or self.conn.closed

    @property
    def idle(self) -> bool:
        """Fit for the pool: reusable, unbroken, and outside any transaction."""
        return (
            self.reusable
            and not self.broken
            and self.conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        )

    async def execute(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (an empty list when it returns none)."""
        cur = self._cursor
        self.reusable = False
        try:
            # The same generator ``Cursor.execute`` runs under ``Connection.wait``.
            await _wait(cur._execute_gen(query, params), self.fd)
        except psycopg.Error:
            # An error *reply* is fully read: the connection is fine for the next one.
            self.reusable = not self.broken and self.conn.pgconn.transaction_status in _IDLE_STATES
            raise
        self.reusable = True
        result = cur.pgresult
        if result is None or result.status != pq.ExecStatus.TUPLES_OK:
            return []
        return cur.fetchall()

    async def run_prepared(
        self, name: bytes, query: bytes, params: Sequence[bytes | None]
    ) -> pq.abc.PGresult:
        """Run ``query`` (``$1``-style placeholders) as the prepared statement ``name``,
        preparing it on first use; ``params`` in text format, the result in binary.

        The result's values are raw bytes in PostgreSQL's binary format (``get_value``).
        An error reply raises the matching :mod:`psycopg.errors` class.

        Example::

            res = await conn.run_prepared(b"turret_one", b"SELECT $1::int", [b"1"])
            assert int.from_bytes(res.get_value(0, 0), "big") == 1
        """
        pgconn = self.conn.pgconn
        self.reusable = False
        if name not in self._prepared:
            pgconn.send_prepare(name, query)
            self._check(await _wait(generators.execute(pgconn), self.fd))
            self._prepared.add(name)
        pgconn.send_query_prepared(name, params, None, 1)
        return self._check(await _wait(generators.execute(pgconn), self.fd))

    def _check(self, results: list[pq.abc.PGresult]) -> pq.abc.PGresult:
        """The last result, with the connection reusable again; an error reply raised."""
        self.reusable = not self.broken and self.conn.pgconn.transaction_status in _IDLE_STATES
        for result in results:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise errors.error_from_result(result, encoding=self.conn.info.encoding)
        return results[-1]

    def close(self) -> None:
        """Close the connection (wakes any trio task waiting on its socket first)."""
        if not self.conn.closed:
            trio.lowlevel.notify_closing(self.fd)
            self.conn.close()
