"""Catch panics: turn a bug's exception into a :class:`Panic` carrying its traceback."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

import attrs

from ..core._errors import TurretError
from ..core._service import Service

__all__ = ["CatchPanic", "CatchPanicLayer", "CatchPanicStatistics", "Panic"]

Req = TypeVar("Req")
Res = TypeVar("Res")


class Panic(TurretError):
    """An unexpected exception from the inner service, with its formatted traceback.

    ``error`` is the original exception (also ``__cause__``); ``traceback_text`` is
    ``traceback.format_exception(error)`` joined. The backend's settle appends
    ``traceback_text`` to the stored error, so ``last_error`` / the dead-letter reason
    shows where the bug is.

    Example::

        except turret.layers.Panic as exc:
            log.error("handler bug:\\n%s", exc.traceback_text)
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
        self.traceback_text = "".join(traceback.format_exception(error)).rstrip("\n")


@attrs.frozen
class CatchPanicStatistics:
    """Snapshot of a :class:`CatchPanic`: how many panics it caught."""

    panics: int


class CatchPanic(Service[Req, Res]):
    """The service :class:`CatchPanicLayer` builds. Forwards ``ready()``."""

    __slots__ = ("inner", "panics", "ready")
    forwards_ready = True  # ready() is inner.ready(), unchanged

    #: The inner service's ``ready``, bound once: readiness is forwarded untouched and
    #: ``ready()`` costs no call of its own.
    ready: Callable[[], AbstractAsyncContextManager[None]]

    def __init__(self, inner: Service[Req, Res]) -> None:
        self.inner = inner
        self.ready = inner.ready
        self.panics = 0

    async def __call__(self, req: Req, /) -> Res:
        try:
            return await self.inner(req)
        except TurretError:
            raise  # Retry, Abort, Elapsed, Overloaded, Panic...: not bugs, keep their meaning
        except Exception as exc:
            self.panics += 1
            raise Panic(exc) from exc

    def statistics(self) -> CatchPanicStatistics:
        """How many exceptions were turned into :class:`Panic`."""
        return CatchPanicStatistics(panics=self.panics)


@attrs.frozen
class CatchPanicLayer(Generic[Req, Res]):
    """Turn any unexpected exception into a :class:`Panic` with its formatted traceback.

    Caught: every ``Exception`` that is not a :class:`~turret.TurretError` (exception
    groups of them included). Left alone: turret's own errors, which already name the
    failure and some of which are control flow (``Retry``, ``Abort``, ``InvalidPayload``,
    a layer's ``Elapsed``…), and ``BaseException``\\ s (``trio.Cancelled``,
    ``KeyboardInterrupt``). Inside a worker the task fails with the traceback recorded
    as its last error, and the worker keeps running. Place it innermost to catch the
    handler's bugs, or outermost to catch the layers' too.

    Example::

        worker = (
            WorkerBuilder("w").backend(backend)
            .layer(CatchPanicLayer())
            .build(handler)
        )
    """

    def layer(self, inner: Service[Req, Res], /) -> CatchPanic[Req, Res]:
        return CatchPanic(inner)
