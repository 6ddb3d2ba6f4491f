"""OpenTelemetry tracing, on only when an OTLP endpoint is configured.

The server continues the caller's trace from the W3C ``traceparent`` metadata,
and clients pass theirs on with ``outgoing_metadata()``, so one trace crosses services.
"""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_provider: TracerProvider | None = None


def configure_tracing(workload: str, endpoint: str | None, insecure: bool = True) -> TracerProvider | None:
    global _provider
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": workload, "service.namespace": "modalmesh"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure),
                                                   schedule_delay_millis=200))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def tracer():
    return trace.get_tracer("modalmesh")


def extract_context(metadata) -> object:
    return propagate.extract({k: v for k, v in (metadata or ()) if isinstance(v, str)})


def outgoing_metadata() -> list[tuple[str, str]]:
    """Metadata that carries the current trace to the next service."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())
