"""``weaver check`` for ``llm.api_type = ollama``: the same steps and verdicts as for OpenAI-style
servers (ui/check.py), over Ollama's native API: ``/api/show`` says whether the model is pulled,
``/api/chat`` answers once whole, once streamed, and once with ``format: "json"``."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from core.config import LLMSettings
from core.llm.ollama_backend import make_client, ollama_base
from ui.check_report import FAIL, PASS, PROMPT, SKIP, CheckReport, reachable, skip_rest, snippet, transport_failure


def check_ollama(settings: LLMSettings) -> CheckReport:
    """Each step only when the one before passed; bounded by ``llm.connect_timeout`` and ``llm.timeout``."""
    where = ollama_base(settings.api_base)
    report = CheckReport(f"ollama model {settings.model!r} at {where}")
    report.add("config loads", PASS)
    if not reachable(report, settings, where):
        return skip_rest(report, "server reachable")
    with make_client(settings) as client:
        if not _model(report, client, settings):
            return skip_rest(report, "model exists")
        if not _completion(report, client, settings):
            return skip_rest(report, "chat completion")
        if not _streaming(report, client, settings):
            return skip_rest(report, "streaming works")
        _json_mode(report, client, settings)
    return report


def _body(settings: LLMSettings, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": settings.model,
        "messages": PROMPT,
        "stream": False,
        "options": {"temperature": settings.temperature, "num_predict": 20},
    }
    body.update(extra)
    return body


def _model(report: CheckReport, client: httpx.Client, settings: LLMSettings) -> bool:
    try:
        response = client.post("/api/show", json={"model": settings.model})
    except httpx.HTTPError as exc:
        return _transport_failure(report, exc, settings, "model exists")
    report.add("key accepted", PASS, "Ollama needs no key")
    if response.status_code == 404:
        return report.add(
            "model exists",
            FAIL,
            f"model {settings.model!r} is not on the server; run `ollama pull {settings.model}` or change llm.model",
            "model",
        )
    if response.status_code != 200:
        return report.add(
            "model exists",
            FAIL,
            f"the server answered HTTP {response.status_code} to /api/show ({snippet(response.text)}); "
            "is llm.api_base the Ollama server's address?",
            "api_base",
        )
    return report.add("model exists", PASS, settings.model)


def _completion(report: CheckReport, client: httpx.Client, settings: LLMSettings) -> bool:
    started = time.monotonic()
    try:
        response = client.post("/api/chat", json=_body(settings))
    except httpx.HTTPError as exc:
        return _transport_failure(report, exc, settings, "chat completion")
    report.latency_s = time.monotonic() - started
    text = _content(response)
    if response.status_code != 200 or not text:
        return report.add(
            "chat completion", FAIL, f"no answer (HTTP {response.status_code}: {snippet(response.text)})", "model"
        )
    return report.add("chat completion", PASS, f"answered in {report.latency_s:.2f} s")


def _streaming(report: CheckReport, client: httpx.Client, settings: LLMSettings) -> bool:
    started = time.monotonic()
    pieces: list[str] = []
    try:
        with client.stream("POST", "/api/chat", json=_body(settings, stream=True)) as response:
            for line in response.iter_lines():
                if line.strip():
                    chunk = json.loads(line)
                    if chunk.get("error"):
                        return report.add("streaming works", FAIL, f"the server reported: {snippet(chunk['error'])}")
                    if (chunk.get("message") or {}).get("content"):
                        pieces.append(chunk["message"]["content"])
    except httpx.HTTPError as exc:
        return _transport_failure(report, exc, settings, "streaming works")
    except ValueError:
        detail = "the stream was not Ollama's JSON lines; check llm.api_base"
        return report.add("streaming works", FAIL, detail, "api_base")
    if not pieces:
        return report.add("streaming works", FAIL, "the streamed answer had no text", "model")
    return report.add("streaming works", PASS, f"{len(pieces)} chunks in {time.monotonic() - started:.2f} s")


def _json_mode(report: CheckReport, client: httpx.Client, settings: LLMSettings) -> bool:
    if settings.response_format != "json_object":
        return report.add("JSON mode works", SKIP, "not used (llm.response_format is text)")
    try:
        response = client.post("/api/chat", json=_body(settings, format="json"))
    except httpx.HTTPError as exc:
        return _transport_failure(report, exc, settings, "JSON mode works")
    text = _content(response)
    try:
        json.loads(text)
    except ValueError:
        return report.add(
            "JSON mode works",
            FAIL,
            f'asked for JSON, the model answered {snippet(text)!r}; set llm.response_format to "text"',
            "response_format",
        )
    return report.add("JSON mode works", PASS)


def _content(response: httpx.Response) -> str:
    try:
        return str(((response.json() or {}).get("message") or {}).get("content") or "")
    except ValueError:
        return ""


def _transport_failure(report: CheckReport, exc: httpx.HTTPError, settings: LLMSettings, step: str) -> bool:
    return transport_failure(report, exc, settings, step, " (a large model may still be loading)")
