"""OpenTelemetry spans: one per RPC, a child per Redis or etcd call.

Off by default, and free when off: nothing here is imported and no span object
is made; the call observer and the instrumented backends test `tracer is None`.
The provider belongs to the server (not the process-wide global), so tests can
hand one server an in-memory exporter.

Settings: `tracing` = off | console | otlp. `otlp` exports over gRPC to
`otlp_endpoint` (the opentelemetry-exporter-otlp-proto-grpc package); `console`
prints spans as JSON on stdout, for trying it out.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer


class Tracing:
    """The server's tracer and the provider that exports its spans."""

    def __init__(self, exporter: SpanExporter, *, batch: bool, service_name: str) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        self.provider: TracerProvider = provider
        self.tracer: Tracer = provider.get_tracer("blackboard_server")

    def server_span(self, name: str, attributes: dict[str, Any]) -> AbstractContextManager[Span]:
        from opentelemetry.trace import SpanKind

        return self.tracer.start_as_current_span(
            name,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def client_span(self, name: str, system: str) -> AbstractContextManager[Span] | None:
        """A child of the current span, or None when there is none (background work)."""
        from opentelemetry import trace

        if not trace.get_current_span().is_recording():
            return None
        return self.tracer.start_as_current_span(
            name, kind=trace.SpanKind.CLIENT, attributes={"db.system": system}
        )

    def close(self) -> None:
        self.provider.shutdown()


def trace_ids(span: Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def mark_error(span: Span, code: str, reason: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", code)
    if reason:
        span.set_attribute("blackboard.reason", reason)
    span.set_status(Status(StatusCode.ERROR, reason or code))


def open_tracing(mode: str, endpoint: str, exporter: SpanExporter | None = None) -> Tracing | None:
    """Tracing as configured; an explicit exporter (tests) turns it on whatever the mode."""
    if exporter is not None:
        return Tracing(exporter, batch=False, service_name="blackboard")
    if mode == "off":
        return None
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return Tracing(ConsoleSpanExporter(), batch=True, service_name="blackboard")
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,
        )
    except ImportError as missing:
        raise RuntimeError(
            "tracing=otlp needs opentelemetry-exporter-otlp-proto-grpc "
            "(pip install 'blackboard[tracing]')"
        ) from missing
    otlp: SpanExporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    return Tracing(otlp, batch=True, service_name="blackboard")
