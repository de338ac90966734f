"""Timeout: the call must finish within ``seconds``, or it fails with :class:`Elapsed`."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

import attrs
import trio

from ..core._errors import TurretError
from ..core._service import Service

__all__ = ["Elapsed", "Timeout", "TimeoutLayer"]

Req = TypeVar("Req")
Res = TypeVar("Res")

# Bound once: the hot path looks up no module attribute.
_CancelScope = trio.CancelScope
_current_time = trio.current_time


class Elapsed(TurretError):
    """A call through a :class:`TimeoutLayer` ran longer than its ``seconds``.

    The inner call was cancelled. Inside a worker this is a task failure: the backend
    retries it with backoff, or dead-letters it on the last attempt.

    Example::

        except turret.layers.Elapsed as exc:
            print(f"gave up after {exc.seconds}s")
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the call did not finish within {seconds:g}s and was cancelled")
        self.seconds = seconds


class Timeout(Service[Req, Res]):
    """The service :class:`TimeoutLayer` builds; forwards ``ready()`` untimed."""

    __slots__ = ("inner", "ready", "seconds")
    forwards_ready = True  # ready() is inner.ready(), unchanged

    #: The inner service's ``ready``, bound once: readiness is forwarded untouched and
    #: ``ready()`` costs no call of its own.
    ready: Callable[[], AbstractAsyncContextManager[None]]

    def __init__(self, inner: Service[Req, Res], seconds: float) -> None:
        self.inner = inner
        self.ready = inner.ready
        self.seconds = seconds

    async def __call__(self, req: Req, /) -> Res:
        # A bare cancel scope: cheaper than trio.fail_after (no generator-based context
        # manager on the hot path), and it lets us raise our own error type.
        with _CancelScope(deadline=_current_time() + self.seconds):
            return await self.inner(req)
        raise Elapsed(self.seconds)  # only reached when the deadline cancelled the call


@attrs.frozen
class TimeoutLayer(Generic[Req, Res]):
    """Fail a call that runs longer than ``seconds`` with :class:`Elapsed`.

    The deadline covers the call only, never the wait for readiness: time a worker
    spends waiting for a slot or a rate-limit token does not count. Inside a worker, the
    settle (ack, retry) happens outside every user layer, so it is never cut short.
    Place it inside a :class:`RetryLayer` to time each try, outside to time them all.

    Example::

        worker = (
            WorkerBuilder("fetch").backend(backend)
            .layer(TimeoutLayer(30))      # each task gets 30 s
            .build(fetch_page)
        )
    """

    seconds: float = attrs.field()

    @seconds.validator
    def _check(self, _attr: attrs.Attribute[float], value: float) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"TimeoutLayer(seconds): seconds must be > 0, got {value!r}")
        if value == math.inf:
            raise ValueError("TimeoutLayer(seconds): use no TimeoutLayer for no timeout")

    def layer(self, inner: Service[Req, Res], /) -> Timeout[Req, Res]:
        return Timeout(inner, float(self.seconds))
