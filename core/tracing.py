"""OpenTelemetry tracing of rounds, role replies, model calls and code executions.

On when ``tracing.enabled`` (TaskWeaver's key; ``WEAVER_TRACING__ENABLED``) is set. Spans go
through one ``TracerProvider`` per process, made at the first app that asks for it, with a batch
processor and the OTLP/HTTP exporter, which reads the standard variables itself:
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (default
``http://localhost:4318/v1/traces``), ``..._HEADERS``, ``..._TIMEOUT``, ``..._CERTIFICATE``,
``OTEL_SERVICE_NAME`` (default ``weaver``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*`` and
``OTEL_SDK_DISABLED``. Spans still queued are sent when the process exits.

The provider is Weaver's own, not OpenTelemetry's global one: Chainlit's Literal AI integration
(traceloop) installs a global provider of its own when used, and Weaver's spans must neither end up
in it nor depend on who set the global first.

What a span carries: the round's span names the Weaver session (the chat), the round and the user
(its children share its trace); the others the role, the model's name and token counts, an
execution's outcome. Never a message, code, its output or an exception's text (an error is named
by its type).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any, Iterator, Mapping

from opentelemetry.trace import INVALID_SPAN, Span, Status, StatusCode, Tracer

logger = logging.getLogger("weaver.tracing")
_LOCK = threading.Lock()
_TRACER: Tracer | None = None
DEFAULT_SERVICE_NAME = "weaver"


def process_tracer() -> Tracer:
    """This process's tracer, its provider and exporter set up on the first call."""
    global _TRACER
    with _LOCK:
        if _TRACER is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
            if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
                resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
            provider = TracerProvider(resource=resource)  # flushed and shut down at exit
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _TRACER = provider.get_tracer("weaver")
            logger.info("tracing on: spans go to %s over OTLP/HTTP", traces_endpoint())
        return _TRACER


def traces_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """Where the OTLP/HTTP exporter sends spans, by the standard variables (for the log line)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return f"{base.rstrip('/')}/v1/traces"


def _value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else str(value)


class Tracing:
    """The app's tracing: spans when enabled, a shared do-nothing span otherwise (no cost to speak of)."""

    def __init__(self, enabled: bool = False) -> None:
        self._tracer = process_tracer() if enabled else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
        """A span around the body, a child of the current one; attributes whose value is None are
        left out. An exception leaving the body marks the span as an error named by its type only."""
        if self._tracer is None:
            yield INVALID_SPAN
            return
        attrs = {key: _value(value) for key, value in (attributes or {}).items() if value is not None}
        with self._tracer.start_as_current_span(
            name, attributes=attrs, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_attribute("weaver.error", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
