"""Every backend carries the producer's trace context to the consumer (W3C traceparent)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from turret import Backend, Job

from .test_contract import info


async def test_push_inside_a_span_stores_its_traceparent(backend: Backend) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        one = await backend.push(1, queue="traced")
        (many,) = await backend.push_many([Job(2, queue="traced")])
    trace_id = format(span.get_span_context().trace_id, "032x")
    for task_id in (one, many):
        headers = (await info(backend, task_id)).headers
        assert headers["traceparent"].startswith("00-"), headers
        assert headers["traceparent"].split("-")[1] == trace_id
    outside = await backend.push(3, queue="traced")
    assert "traceparent" not in (await info(backend, outside)).headers
    assert trace.get_current_span() is trace.INVALID_SPAN
