"""What ``weaver check`` reports, shared by each provider's checker (ui/check.py for OpenAI-style
servers, ui/check_ollama.py for Ollama's native API, ui/check_anthropic.py, ui/check_gemini.py):
the steps, their verdicts, the first two steps every provider takes the same way, and the later
ones for a provider checked over its own API (one short answer, then streaming and JSON through
the backend the roles use)."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx

from core.cancel import CancelToken
from core.config import LLMSettings
from core.llm.base import ChatRequest, LLMBackend, LLMError

PASS, FAIL, SKIP = "ok", "FAIL", "--"


@dataclass
class CheckStep:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str = ""
    key: str | None = None  # the config key to change when it failed


@dataclass
class CheckReport:
    """What ``weaver check`` found; ``ok`` and the one-line ``summary`` are for a banner."""

    target: str
    steps: list[CheckStep] = field(default_factory=list)
    offline: bool = False
    latency_s: float | None = None

    @property
    def ok(self) -> bool:
        return all(step.status != FAIL for step in self.steps)

    @property
    def failure(self) -> CheckStep | None:
        return next((step for step in self.steps if step.status == FAIL), None)

    @property
    def summary(self) -> str:
        if self.offline:
            return "Offline mode: no language model is configured, so there is no connection to check."
        failed = self.failure
        if failed is not None:
            return f"Model check failed ({self.target}): {failed.detail}"
        latency = f", {self.latency_s:.2f} s for a short answer" if self.latency_s is not None else ""
        return f"Model connection OK ({self.target}{latency})."

    def lines(self) -> list[str]:
        out = [f"weaver check: {self.target}"]
        out += [f"  {step.status:<4}  {step.name}" + (f": {step.detail}" if step.detail else "") for step in self.steps]
        out.append(("PASSED: " if self.ok else "FAILED: ") + self.summary)
        return out

    def add(self, name: str, status: str, detail: str = "", key: str | None = None) -> bool:
        self.steps.append(CheckStep(name, status, detail, key))
        return status != FAIL


STEP_ORDER = [
    "server reachable",
    "key accepted",
    "model exists",
    "chat completion",
    "streaming works",
    "JSON mode works",
]


def skip_rest(report: CheckReport, after: str) -> CheckReport:
    done = {step.name for step in report.steps}
    for name in STEP_ORDER[STEP_ORDER.index(after) + 1 :]:
        if name not in done:
            report.add(name, SKIP, "not checked")
    return report


def reachable(report: CheckReport, settings: LLMSettings, where: str) -> bool:
    parts = urlsplit(where)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return report.add("server reachable", FAIL, f"{where!r} is not an http(s) URL; change llm.api_base", "api_base")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=settings.connect_timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return report.add(
            "server reachable",
            FAIL,
            f"cannot connect to {parts.hostname}:{port} ({reason}); is the server running? "
            "Otherwise change llm.api_base",
            "api_base",
        )
    return report.add("server reachable", PASS, f"{parts.hostname}:{port}")


def snippet(text: Any, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ------------------------------------------------------------------ steps over a provider's own API

PROMPT = [{"role": "user", "content": 'Reply with the JSON object {"ok": true} and nothing else.'}]


@dataclass
class Reply:
    """What a provider's checker reads from its one short, non-streamed answer."""

    key_refused: bool = False
    model_missing: bool = False
    text: str = ""
    model: str = ""
    detail: str = ""


@dataclass(frozen=True)
class ApiProbe:
    """How ``check_api`` checks one provider over its own API."""

    name: str  # the api_type, for the report's title
    where: Callable[[str | None], str]  # llm.api_base → the address used
    client: Callable[[LLMSettings], httpx.Client]  # raises LLMError when no key is set
    ask: Callable[[httpx.Client, LLMSettings], httpx.Response]  # one short, non-streamed answer
    judge: Callable[[httpx.Response], Reply]
    backend: Callable[[LLMSettings], LLMBackend]  # the backend a round uses
    key_hint: str = ""  # after "change llm.api_key": a variable read instead


def check_api(settings: LLMSettings, probe: ApiProbe) -> CheckReport:
    """Every step, each only when the one before passed; bounded by ``llm.connect_timeout`` and
    ``llm.timeout`` per request, with no retries (a verdict now, not after backoffs)."""
    where = probe.where(settings.api_base)
    report = CheckReport(f"{probe.name} model {settings.model!r} at {where}")
    settings = settings.model_copy(update={"max_retries": 0})
    try:
        client = probe.client(settings)
    except LLMError as exc:  # no key at all
        report.add("config loads", FAIL, str(exc), "api_key")
        return report
    report.add("config loads", PASS)
    with client:
        if not reachable(report, settings, where):
            return skip_rest(report, "server reachable")
        if not completion_step(report, settings, lambda: probe.ask(client, settings), probe.judge, probe.key_hint):
            return skip_rest(report, "key accepted")
    return backend_steps(report, probe.backend(settings), settings)


def completion_step(
    report: CheckReport,
    settings: LLMSettings,
    post: Callable[[], httpx.Response],
    judge: Callable[[httpx.Response], Reply],
    key_hint: str = "",
) -> bool:
    """ "key accepted", "model exists" and "chat completion" from one short answer (its time is
    the latency); ``key_hint`` follows "change llm.api_key" (a variable read instead)."""
    started = time.monotonic()
    try:
        response = post()
    except httpx.HTTPError as exc:
        return transport_failure(report, exc, settings, "key accepted")
    report.latency_s = time.monotonic() - started
    reply, code = judge(response), response.status_code
    if reply.key_refused:
        detail = f"the server refused the key (HTTP {code}: {reply.detail}); change llm.api_key{key_hint}"
        return report.add("key accepted", FAIL, detail, "api_key")
    report.add("key accepted", PASS)
    if reply.model_missing:
        detail = f"model {settings.model!r} not found (HTTP {code}: {reply.detail}); change llm.model"
        return report.add("model exists", FAIL, detail, "model")
    if code != 200:
        return report.add("chat completion", FAIL, f"the server answered HTTP {code}: {reply.detail}")
    report.add("model exists", PASS, reply.model or settings.model)
    if not reply.text:
        detail = "the server answered without any text (is llm.api_base the provider's API?)"
        return report.add("chat completion", FAIL, detail, "api_base")
    return report.add("chat completion", PASS, f"answered in {report.latency_s:.2f} s")


def backend_steps(report: CheckReport, backend: LLMBackend, settings: LLMSettings) -> CheckReport:
    """ "streaming works" and "JSON mode works" through the backend the roles use (its JSON
    request as sent in a round), then closes it."""
    try:
        if not _streamed(report, backend, json_mode=False):
            return skip_rest(report, "streaming works")
        if settings.response_format != "json_object":
            report.add("JSON mode works", SKIP, "not used (llm.response_format is text)")
        else:
            _streamed(report, backend, json_mode=True)
    finally:
        backend.close()
    return report


def _streamed(report: CheckReport, backend: LLMBackend, json_mode: bool) -> bool:
    step = "JSON mode works" if json_mode else "streaming works"
    started = time.monotonic()
    try:
        chunks = list(backend.stream_chat(ChatRequest("check", list(PROMPT), json_mode=json_mode), CancelToken()))
    except LLMError as exc:
        return report.add(step, FAIL, str(exc))
    text = "".join(chunks)
    if not json_mode:
        if not text:
            return report.add(step, FAIL, "the streamed answer had no text", "model")
        return report.add(step, PASS, f"{len(chunks)} chunks in {time.monotonic() - started:.2f} s")
    try:
        json.loads(text)
    except ValueError:
        detail = f'asked for JSON, the model answered {snippet(text)!r}; set llm.response_format to "text"'
        return report.add(step, FAIL, detail, "response_format")
    return report.add(step, PASS)


def transport_failure(
    report: CheckReport, exc: httpx.HTTPError, settings: LLMSettings, step: str, hint: str = ""
) -> bool:
    """A request that got no answer: a timeout names llm.timeout, anything else llm.api_base."""
    if isinstance(exc, httpx.TimeoutException):
        return report.add(step, FAIL, f"no answer within {settings.timeout:g} s{hint}; raise llm.timeout", "timeout")
    return report.add(step, FAIL, f"the connection failed ({snippet(exc)}); check llm.api_base", "api_base")
