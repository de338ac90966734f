"""Filter: reject requests that do not satisfy a predicate, with :class:`Rejected`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

import attrs

from ..core._errors import Abort
from ..core._service import Service

__all__ = ["Filter", "FilterLayer", "FilterStatistics", "Rejected"]

Req = TypeVar("Req")
Res = TypeVar("Res")


class Rejected(Abort):
    """A :class:`FilterLayer`'s predicate refused the request.

    It derives from :class:`~turret.Abort` on purpose: a request the filter refuses
    would be refused again, so inside a worker the task goes to dead letters at once
    (reason ``"aborted: rejected: …"``) and no ``RetryLayer`` retries it.

    Example::

        except turret.layers.Rejected as exc:
            print(exc.reason)
    """


@attrs.frozen
class FilterStatistics:
    """Snapshot of a :class:`Filter`: requests passed and rejected."""

    passed: int
    rejected: int


class Filter(Service[Req, Res]):
    """The service :class:`FilterLayer` builds. Forwards ``ready()``."""

    __slots__ = ("inner", "passed", "predicate", "reason", "rejected")
    forwards_ready = True  # ready() is inner.ready(), unchanged

    def __init__(
        self, inner: Service[Req, Res], predicate: Callable[[Req], bool], reason: str
    ) -> None:
        self.inner = inner
        self.predicate = predicate
        self.reason = reason
        self.passed = 0
        self.rejected = 0

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()

    async def __call__(self, req: Req, /) -> Res:
        if not self.predicate(req):
            self.rejected += 1
            raise Rejected(f"rejected: {self.reason}")
        self.passed += 1
        return await self.inner(req)

    def statistics(self) -> FilterStatistics:
        """How many requests passed and how many were rejected."""
        return FilterStatistics(passed=self.passed, rejected=self.rejected)


@attrs.frozen
class FilterLayer(Generic[Req, Res]):
    """Call the inner service only when ``predicate(req)`` is true; else raise :class:`Rejected`.

    ``reason`` goes into the error message (and so the dead-letter reason).

    Example::

        only_eu = FilterLayer(
            lambda task: task.args.get("region") == "eu", reason="not an EU task"
        )
        worker = WorkerBuilder("eu").backend(backend).layer(only_eu).build(handler)
    """

    predicate: Callable[[Req], bool] = attrs.field()
    reason: str = attrs.field(default="the filter's predicate returned False", kw_only=True)

    @predicate.validator
    def _check(self, _attr: attrs.Attribute[Callable[[Req], bool]], value: object) -> None:
        if not callable(value):
            raise ValueError(f"FilterLayer(predicate): expected a callable, got {value!r}")

    def layer(self, inner: Service[Req, Res], /) -> Filter[Req, Res]:
        return Filter(inner, self.predicate, self.reason)
