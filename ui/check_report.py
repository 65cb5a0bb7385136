"""What ``weaver check`` reports, shared by each provider's checker (ui/check.py for OpenAI-style
servers, ui/check_ollama.py for Ollama's native API): the steps, their verdicts, and the first
two steps every provider takes the same way."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from core.config import LLMSettings

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
