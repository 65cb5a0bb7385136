"""Tracing through OpenTelemetry when it is installed; a no-op otherwise."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

_otel_trace: Any
try:  # pragma: no cover - depends on the environment
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover
    _otel_trace = None


class Tracing:
    def __init__(self, enabled: bool = True) -> None:
        self._tracer = _otel_trace.get_tracer("weaver") if (enabled and _otel_trace) else None

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        if self._tracer is None:
            yield
            return
        with self._tracer.start_as_current_span(name) as span:
            for key, value in attributes.items():
                span.set_attribute(key, value if isinstance(value, (str, int, float, bool)) else str(value))
            yield
