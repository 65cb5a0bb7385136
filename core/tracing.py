"""OpenTelemetry tracing of rounds, role replies, model calls and code executions.

On when ``tracing.enabled`` (TaskWeaver's key; ``WEAVER_TRACING__ENABLED``) is set *and*
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` says where spans go (enabled
without either: one warning naming them, and tracing stays off, rather than exporting to a
localhost default nobody listens on). Spans go through one ``TracerProvider`` per process, made at
the first app that asks for it, with a batch processor and the OTLP/HTTP exporter, which reads the
standard variables itself: those two, ``..._HEADERS``, ``..._TIMEOUT``, ``..._CERTIFICATE``,
``OTEL_SERVICE_NAME`` (default ``weaver``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*`` and
``OTEL_SDK_DISABLED``. Spans still queued are sent by ``shutdown_tracing``, which the server's
shutdown calls: Chainlit ends its process with ``os._exit``, so the SDK's own exit hook never runs.

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
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from opentelemetry.trace import INVALID_SPAN, Span, Status, StatusCode, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger("weaver.tracing")
_LOCK = threading.Lock()
_TRACER: Tracer | None = None
_PROVIDER: TracerProvider | None = None
_WARNED = False  # the "no endpoint" warning, once per process
DEFAULT_SERVICE_NAME = "weaver"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def endpoint_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the standard variables say where spans go."""
    env = os.environ if environ is None else environ
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def process_tracer() -> Tracer | None:
    """This process's tracer, its provider and exporter set up on the first call; None (after one
    warning) when no OTLP endpoint is configured."""
    global _TRACER, _PROVIDER, _WARNED
    with _LOCK:
        if _TRACER is None and not endpoint_configured():
            if not _WARNED:
                _WARNED = True
                logger.warning(
                    "tracing.enabled is set but neither %s nor %s is: tracing stays off", *ENDPOINT_VARIABLES
                )
            return None
        if _TRACER is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
            if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
                resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
            provider = TracerProvider(resource=resource)  # at exit too, where the process exits normally
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _PROVIDER = provider
            _TRACER = provider.get_tracer("weaver")
            logger.info("tracing on: spans go to %s over OTLP/HTTP", traces_endpoint())
        return _TRACER


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Send the spans still queued (for at most ``timeout_s``) and stop the exporter; a later
    ``process_tracer`` starts afresh. Call it at the end of a server's shutdown."""
    global _TRACER, _PROVIDER
    with _LOCK:
        provider, _PROVIDER, _TRACER = _PROVIDER, None, None
    if provider is None:
        return
    if not provider.force_flush(int(timeout_s * 1000)):
        logger.warning("tracing: queued spans not all sent within %g s at shutdown", timeout_s)
    provider.shutdown()


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
