"""A local OTLP/HTTP trace receiver for tests and benchmarks: ``POST /v1/traces`` on 127.0.0.1.

Each request body is decoded with opentelemetry-proto's ``ExportTraceServiceRequest`` (protobuf,
gzip or not, as the exporter sends it) into ``ReceivedSpan``s; the raw bodies are kept too, so a
test can check that some text never left the process. Answers 200 with an empty export response.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

PATH = "/v1/traces"


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int
    service_name: str


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(value)


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=span.status.code,
                        service_name=str(resource.get("service.name", "")),
                    )
                )
    return spans


class OTLPReceiver:
    """Started on a free port; ``endpoint`` is what ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` takes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.spans: list[ReceivedSpan] = []
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != PATH:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.take(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{PATH}"

    def start(self) -> "OTLPReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def take(self, body: bytes) -> None:
        spans = decode(body)
        with self._cond:
            self.bodies.append(body)
            self.spans.extend(spans)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float) -> list[ReceivedSpan]:
        """Every span received once ``predicate(spans)`` holds; ``AssertionError`` after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.spans), timeout):
                names = sorted({s.name for s in self.spans})
                raise AssertionError(f"spans not received in {timeout:.0f}s; got {len(self.spans)}: {names}")
            return list(self.spans)


def main() -> None:
    """``python -m tests.otlp_receiver``: a receiver in a process of its own (benchmarks, so decoding
    spans does not compete with the measured process). Prints its endpoint; then, for each line read
    on stdin, the number of spans received so far; stops at end of input."""
    import sys

    receiver = OTLPReceiver().start()
    print(receiver.endpoint, flush=True)
    for _ in sys.stdin:
        with receiver._cond:
            count = len(receiver.spans)
        print(count, flush=True)
    receiver.stop()


if __name__ == "__main__":
    main()
