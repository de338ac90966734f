"""A mock service: records calls, lets the test decide each response and readiness."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import attrs
import trio

from ..core._service import Service

__all__ = ["MockService", "MockStatistics"]

Req = TypeVar("Req")
Res = TypeVar("Res")


@attrs.frozen
class MockStatistics:
    """Snapshot of a :class:`MockService`."""

    calls: int
    in_flight: int
    reservations: int
    waiting: int
    ready: bool


class _Reservation:
    __slots__ = ("nowait", "owner")

    def __init__(self, owner: MockService[Any, Any], nowait: bool) -> None:
        self.owner = owner
        self.nowait = nowait

    async def __aenter__(self) -> None:
        owner = self.owner
        if self.nowait:
            if not owner.is_ready:
                raise trio.WouldBlock
        else:
            owner.waiting += 1
            try:
                while not owner.is_ready:
                    await owner._ready_event.wait()
            finally:
                owner.waiting -= 1
        owner.reservations += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.owner.reservations -= 1


class MockService(Service[Req, Res], Generic[Req, Res]):
    """A service whose answers and readiness the test controls (like httpx's MockTransport).

    ``handler(req)`` decides each response: return a value (or an awaitable of one) or
    raise. Without a handler every call returns ``None``. Every request is appended to
    ``calls`` (with the ``trio.current_time()`` of the call in ``call_times``).
    ``set_ready(False)`` makes ``ready()`` wait (and ``ready_nowait()`` raise
    ``trio.WouldBlock``) until ``set_ready(True)``.

    Example::

        async def answer(req: int) -> int:
            if req < 0:
                raise ValueError("negative")
            return req * 2

        mock = MockService(answer)
        assert await call_once(mock, 21, as_task=False) == 42
        assert mock.calls == [21]
        mock.set_ready(False)
        await assert_not_ready(mock)
    """

    def __init__(
        self, handler: Callable[[Req], Res | Awaitable[Res]] | None = None, *, ready: bool = True
    ) -> None:
        self.handler = handler
        self.calls: list[Req] = []
        self.call_times: list[float] = []
        self.is_ready = ready
        self.in_flight = 0
        self.reservations = 0
        self.waiting = 0
        self._ready_event = trio.Event()
        if ready:
            self._ready_event.set()

    def set_ready(self, ready: bool) -> None:
        """Open (``True``) or close (``False``) readiness; waiting reservations wake."""
        self.is_ready = ready
        if ready:
            self._ready_event.set()
        elif self._ready_event.is_set():
            self._ready_event = trio.Event()

    def ready(self) -> AbstractAsyncContextManager[None]:
        return _Reservation(self, nowait=False)

    def ready_nowait(self) -> AbstractAsyncContextManager[None]:
        """A reservation that raises ``trio.WouldBlock`` on entry when not ready."""
        return _Reservation(self, nowait=True)

    async def __call__(self, req: Req, /) -> Res:
        self.calls.append(req)
        self.call_times.append(trio.current_time())
        self.in_flight += 1
        try:
            await trio.lowlevel.checkpoint()
            if self.handler is None:
                return cast(Res, None)
            out = self.handler(req)
            if inspect.isawaitable(out):
                return await out
            return out
        finally:
            self.in_flight -= 1

    def statistics(self) -> MockStatistics:
        """Calls made, calls running, reservations held and waiting, readiness."""
        return MockStatistics(
            calls=len(self.calls),
            in_flight=self.in_flight,
            reservations=self.reservations,
            waiting=self.waiting,
            ready=self.is_ready,
        )
