"""OpenTelemetry tracing: one CONSUMER span ``process {queue}`` per delivery.

The span follows the OpenTelemetry messaging semantic conventions: ``messaging.*``
attributes set at creation, a link to the producer's context carried in the task's
headers (W3C ``traceparent``, read with the global propagator), and ``error.type`` with
an error status **only when the failure is final** (the last attempt, or
:class:`~turret.Abort`). A failure that the backend will retry, and a
:class:`~turret.Retry`, leave the span's status unset: the retry is a new delivery with
its own span.

Place it outside an in-process :class:`~turret.layers.RetryLayer` (first ``.layer()``
call) so that one span covers the whole delivery. Depends on ``opentelemetry-api`` only
(``pip install 'turret[tracing]'``).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NoOpTracer, ProxyTracer, SpanKind, Status, StatusCode

from ..core._errors import Abort, Retry
from ..core._service import Service
from ..core._task import Task
from ..observability._propagation import MESSAGING_SYSTEM, error_type

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = ["Tracing", "TracingLayer"]

Res = TypeVar("Res")

_VERSION = "0.1.0"


class Tracing(Service[Task[Any], Res]):
    """The service :class:`TracingLayer` builds: a CONSUMER span around each call.

    Forwards ``ready()``: tracing does not change backpressure.
    """

    __slots__ = ("_proxy", "inner", "tracer")
    forwards_ready = True  # ready() is inner.ready(), unchanged

    def __init__(self, inner: Service[Task[Any], Res], tracer: Tracer) -> None:
        self.inner = inner
        self.tracer = tracer
        # The global provider's tracer is a proxy until an SDK is installed: resolve late.
        self._proxy = tracer if isinstance(tracer, ProxyTracer) else None

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()

    async def __call__(self, task: Task[Any], /) -> Res:
        tracer = self.tracer
        if self._proxy is not None:
            tracer = getattr(self._proxy, "_tracer", self._proxy)
            if not isinstance(tracer, NoOpTracer):
                self.tracer, self._proxy = tracer, None  # an SDK is installed: for good
        if isinstance(tracer, NoOpTracer):
            return await self.inner(task)  # no-op provider: no spans, no context work
        ctx = task.ctx
        links: list[Link] | None = None
        if ctx.headers:
            producer = trace.get_current_span(propagate.extract(ctx.headers)).get_span_context()
            if producer.is_valid:
                links = [Link(producer)]
        queue = ctx.queue
        with tracer.start_as_current_span(
            f"process {queue}",
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": ctx.id,
                "messaging.turret.attempt": ctx.attempt,
                "messaging.turret.max_attempts": ctx.max_attempts,
            },
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await self.inner(task)
            except Retry:
                if ctx.is_last_attempt:  # the backend dead-letters it: final
                    _final(span, "turret.Retry", "retry requested on the last attempt")
                raise
            except Abort as exc:
                _final(span, error_type(exc), str(exc), exc)
                raise
            except Exception as exc:
                if ctx.is_last_attempt:
                    _final(span, error_type(exc), str(exc), exc)
                raise


def _final(span: Any, kind: str, message: str, exc: BaseException | None = None) -> None:
    if not span.is_recording():
        return
    span.set_attribute("error.type", kind)
    if exc is not None:
        span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, message))


@attrs.frozen
class TracingLayer(Generic[Res]):
    """A CONSUMER span ``process {queue}`` per delivery, linked to the producer's span.

    ``tracer_provider`` defaults to the global one (``opentelemetry.trace``). Producers
    get their PRODUCER ``send {queue}`` span and the ``traceparent`` header from the
    backend's ``push`` (see :func:`turret.observability.traced_send`).

    Example::

        from turret.layers import TracingLayer

        worker = (
            WorkerBuilder("mail").backend(backend)
            .layer(TracingLayer())            # outermost: one span per delivery
            .layer(RetryLayer(policy))
            .build(send_email)
        )
    """

    tracer_provider: TracerProvider | None = None

    def layer(self, inner: Service[Task[Any], Res], /) -> Tracing[Res]:
        tracer = trace.get_tracer("turret", _VERSION, tracer_provider=self.tracer_provider)
        return Tracing(inner, tracer)
