"""TracingLayer and producer propagation, checked with the OpenTelemetry SDK in memory."""

from __future__ import annotations

from typing import Any

import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import turret
from turret.backends import MemoryBackend
from turret.layers import TracingLayer
from turret.observability import error_type, inject_headers


def build(backend: MemoryBackend, provider: TracerProvider, handler: Any) -> turret.Worker:
    return (
        turret.WorkerBuilder("w")
        .backend(backend)
        .queue("mail")
        .layer(TracingLayer(provider))
        .backoff(turret.ConstantBackoff(1.0))
        .build(handler)
    )


async def run_for(worker: turret.Worker, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(seconds)
        worker.context.stop()


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


async def test_producer_and_consumer_spans_are_linked(
    autojump_clock: trio.testing.MockClock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    backend = MemoryBackend()
    with provider.get_tracer("test").start_as_current_span("request") as request:
        task_id = await backend.push({"to": "a@b.c"}, queue="mail", headers={"tenant": "x"})

    seen: list[dict[str, str]] = []

    async def handler(args: dict[str, str], ctx: turret.TaskContext) -> None:
        seen.append(dict(ctx.headers))

    await run_for(build(backend, provider, handler), 5)

    spans = exporter.get_finished_spans()
    (send,) = by_kind(spans, SpanKind.PRODUCER)
    (process,) = by_kind(spans, SpanKind.CONSUMER)
    assert send.name == "send mail"
    assert send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "turret"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.destination.name"] == "mail"

    # the producer's context travels in the headers (W3C traceparent), next to user headers
    assert seen[0]["tenant"] == "x"
    assert seen[0]["traceparent"].split("-")[2] == format(send.context.span_id, "016x")

    assert process.name == "process mail"
    assert process.attributes == {
        "messaging.system": "turret",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "mail",
        "messaging.message.id": task_id,
        "messaging.turret.attempt": 1,
        "messaging.turret.max_attempts": 3,
    }
    (link,) = process.links
    assert link.context.trace_id == send.context.trace_id
    assert link.context.span_id == send.context.span_id
    assert process.status.status_code is StatusCode.UNSET


async def test_retried_then_succeeded_has_no_error(
    autojump_clock: trio.testing.MockClock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    backend = MemoryBackend()
    await backend.push(1, queue="mail")
    await backend.push(2, queue="mail")
    calls: dict[int, int] = {}

    async def handler(n: int) -> None:
        calls[n] = calls.get(n, 0) + 1
        if calls[n] == 1:
            if n == 1:
                raise ValueError("flaky")
            raise turret.Retry(after=1, reason="later")

    await run_for(build(backend, provider, handler), 30)

    process = by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    attempts = [s.attributes["messaging.turret.attempt"] for s in process]  # type: ignore[index]
    assert sorted(attempts) == [1, 1, 2, 2]  # type: ignore[type-var]
    for span in process:
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in span.attributes  # type: ignore[operator]


async def test_final_failure_and_abort_have_error_type(
    autojump_clock: trio.testing.MockClock,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    backend = MemoryBackend()
    await backend.push("boom", queue="mail", max_attempts=2)
    await backend.push("abort", queue="mail", max_attempts=5)

    async def handler(what: str) -> None:
        if what == "abort":
            raise turret.Abort("bad input")
        raise KeyError(what)

    await run_for(build(backend, provider, handler), 30)

    process = by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    finals = [s for s in process if s.status.status_code is StatusCode.ERROR]
    assert len(process) == 3  # boom twice, abort once
    types = [s.attributes["error.type"] for s in finals]  # type: ignore[index]
    assert sorted(types) == ["KeyError", "turret.Abort"]  # type: ignore[type-var]
    (first_boom,) = [s for s in process if s.status.status_code is StatusCode.UNSET]
    assert first_boom.attributes["messaging.turret.attempt"] == 1  # type: ignore[index]
    assert "error.type" not in first_boom.attributes  # type: ignore[operator]
    assert all(s.events for s in finals)  # the exception is recorded on final failures


async def test_push_outside_a_span_without_sdk_still_runs() -> None:
    # no tracer configured: no traceparent, nothing breaks
    backend = MemoryBackend()
    task_id = await backend.push(1)
    info = await backend.get_task(task_id)
    assert info is not None
    assert "traceparent" not in info.headers
    assert inject_headers({"a": "b"}) == {"a": "b"}


def test_error_type_names() -> None:
    assert error_type(ValueError()) == "ValueError"
    assert error_type(turret.Abort("x")) == "turret.Abort"
    assert error_type(trio.TooSlowError()) == "trio.TooSlowError"


async def test_push_without_sdk_carries_the_callers_baggage() -> None:
    # no tracer configured: no span is made, yet what the caller's context holds goes on
    from opentelemetry import baggage, context

    backend = MemoryBackend()
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        task_id = await backend.push(1)
    finally:
        context.detach(token)
    info = await backend.get_task(task_id)
    assert info is not None
    assert info.headers.get("baggage") == "tenant=acme"
    assert "traceparent" not in info.headers
