"""A TCP proxy that can go silent, and a clock for tests that wait on a silent server.

A server or network that goes silent resets nothing: the sockets stay open and replies
just stop coming. :class:`SilencingProxy` stands between a backend and its real server and
does that on demand; :func:`patient_clock` lets a test wait out a backend's response
timeout on trio's mock clock, without real sleeps.
"""

from __future__ import annotations

import trio
import trio.testing

__all__ = ["SilencingProxy", "patient_clock"]


class SilencingProxy:
    """A TCP proxy to a server that can go silent: after :meth:`silence`, the connections
    open at that moment still carry requests to the server, but its replies are dropped
    and the sockets stay open (a dead network path, not a reset). Later connections
    work. :meth:`reset` closes every connection (to end a test that would hang).

    Example::

        proxy = SilencingProxy("127.0.0.1", 6379)
        await nursery.start(proxy.serve)  # then connect to 127.0.0.1:proxy.port
        proxy.silence()
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._muted: list[trio.Event] = []
        self._open: list[trio.CancelScope] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def silence(self) -> None:
        for muted in self._muted:
            muted.set()

    def reset(self) -> None:
        for scope in self._open:
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(*self.target)
        muted = trio.Event()
        self._muted.append(muted)

        async def pump(
            src: trio.SocketStream, dst: trio.SocketStream, muted: trio.Event | None
        ) -> None:
            try:
                while data := await src.receive_some(1 << 16):
                    if muted is None or not muted.is_set():
                        await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()  # either side gone: close both

        async with client, server, trio.open_nursery() as nursery:
            self._open.append(nursery.cancel_scope)
            nursery.start_soon(pump, client, server, None)
            nursery.start_soon(pump, server, client, muted)


def patient_clock() -> trio.testing.MockClock:
    """Jumps only once every task has waited 0.5 s of real time: a real server's reply and
    a new connection (well under that) come first; a silent server's reply never does."""
    return trio.testing.MockClock(autojump_threshold=0.5)
