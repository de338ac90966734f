"""Trace context in task headers, and the producer's ``send {queue}`` span.

Every backend calls :func:`traced_send` in its ``push_many`` (``push`` goes through
it), so producers get context propagation without each backend re-implementing it.
``opentelemetry-api`` stays optional: it is imported on first use, and without it the
helpers do nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from ..core._backend import Job

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import TracerProvider

__all__ = [
    "MESSAGING_SYSTEM",
    "configure_tracing",
    "error_type",
    "extract_context",
    "inject_headers",
    "traced_send",
]

#: The value of ``messaging.system`` on turret's spans.
MESSAGING_SYSTEM = "turret"
_SCOPE = "turret"

_UNRESOLVED: Any = object()
_otel: Any = _UNRESOLVED  # the opentelemetry modules, or None when not installed
_producer_provider: TracerProvider | None = None


def _api() -> Any:
    """``(trace, propagate, context)`` modules, or None without opentelemetry-api."""
    global _otel
    if _otel is _UNRESOLVED:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:
            _otel = None
        else:
            _otel = (trace, propagate, context)
    return _otel


def configure_tracing(tracer_provider: TracerProvider | None) -> None:
    """Set the tracer provider of the producer spans (``None``: the global one).

    Consumer spans come from :class:`~turret.layers.TracingLayer`, which takes its own
    ``tracer_provider``.

    Example::

        from opentelemetry.sdk.trace import TracerProvider

        turret.observability.configure_tracing(TracerProvider())
    """
    global _producer_provider
    _producer_provider = tracer_provider


def inject_headers(
    headers: Mapping[str, str] | None = None, *, context: Context | None = None
) -> dict[str, str]:
    """A copy of ``headers`` with the current trace context added (W3C ``traceparent``).

    Uses the global propagator (``opentelemetry.propagate``); without
    ``opentelemetry-api``, or outside any span, it returns a plain copy.

    Example::

        headers = turret.observability.inject_headers({"tenant": "acme"})
        await backend.push(args, headers=headers)
    """
    out = dict(headers) if headers else {}
    api = _api()
    if api is not None:
        api[1].inject(out, context=context)
    return out


def extract_context(headers: Mapping[str, str]) -> Context | None:
    """The trace context a producer put in ``headers``, or None without opentelemetry.

    Example::

        parent = turret.observability.extract_context(task.ctx.headers)
        with tracer.start_as_current_span("step", context=parent):
            ...
    """
    api = _api()
    if api is None:
        return None
    ctx: Context = api[1].extract(headers)
    return ctx


def error_type(error: BaseException) -> str:
    """The ``error.type`` of an exception: its fully qualified class name.

    Example::

        assert turret.observability.error_type(ValueError()) == "ValueError"
        assert turret.observability.error_type(turret.Abort("no")) == "turret.Abort"
    """
    cls = type(error)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module.startswith("turret."):  # the public path: turret.Abort, turret.layers.Elapsed
        parts = [p for p in module.split(".") if not p.startswith("_")]
        module = "turret" if parts[:2] == ["turret", "core"] else ".".join(parts)
    return f"{module}.{cls.__qualname__}"


def _with_headers(job: Job, carrier: MutableMapping[str, str]) -> Job:
    if not carrier:
        return job
    headers = dict(job.headers)
    headers.update(carrier)
    return attrs.evolve(job, headers=headers)


@contextmanager
def traced_send(jobs: Sequence[Job]) -> Iterator[Sequence[Job]]:
    """Wrap a backend's store of ``jobs`` in a PRODUCER ``send {queue}`` span.

    Yields the jobs with the span's context injected in their headers (W3C
    ``traceparent``), so the consumer's ``process`` span links to it. A no-op without
    ``opentelemetry-api``; without an SDK configured the span is non-recording and only
    the caller's context (if any) is injected. An error escaping the block is recorded
    on the span.

    Example (inside a backend)::

        async def push_many(self, jobs: Iterable[Job]) -> list[TaskId]:
            with traced_send(list(jobs)) as jobs:
                return await self._store(jobs)
    """
    api = _api()
    if api is None or not jobs:
        yield jobs
        return
    trace, propagate, otel_context = api
    if _producer_provider is None and isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    ):
        # No SDK: the span would not record, and would only carry the caller's context
        # (if any: an empty one has no span and no baggage) on; inject it directly.
        carrier: dict[str, str] = {}
        if otel_context.get_current():
            propagate.inject(carrier)
        yield [_with_headers(job, carrier) for job in jobs] if carrier else jobs
        return
    queues = {job.queue for job in jobs}
    queue = jobs[0].queue if len(queues) == 1 else None
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
    }
    if queue is not None:
        attributes["messaging.destination.name"] = queue
    if len(jobs) > 1:
        attributes["messaging.batch.message_count"] = len(jobs)
    tracer = trace.get_tracer(_SCOPE, tracer_provider=_producer_provider)
    with tracer.start_as_current_span(
        f"send {queue}" if queue is not None else "send",
        kind=trace.SpanKind.PRODUCER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        carrier = {}
        propagate.inject(carrier)
        try:
            yield [_with_headers(job, carrier) for job in jobs]
        except Exception as exc:
            span.set_attribute("error.type", error_type(exc))
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            raise
