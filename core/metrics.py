"""Prometheus metrics of the engine and the web tier, defined in one place (``prometheus_client``).

Every series is named ``weaver_*``. Counters and histograms are updated where things happen
(rounds in ``session``, model calls in ``roles/base``, code runs in ``roles/code_interpreter``,
kernel starts in ``execution/kernel``, failed logins in ``ui/guards/login_throttle``); what is a
state rather than an event (live sessions, kernels, connected users, the history's queue) is read
when ``/metrics`` is scraped, from a reading registered with ``watch``, so nothing has to keep a
copy of it up to date. A reading that fails or returns None is left out of that scrape: a
half-started server still answers.

``metrics.enabled`` (``WEAVER_METRICS__ENABLED``, default on) is process-wide, as the registry is:
the app sets it at start (``configure``). Off, the updates do nothing and ``/metrics`` says so.
Labels take a handful of fixed values each (an outcome, a backend name), never a user or a chat.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable, Iterator, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)
disable_created_metrics()  # a ``*_created`` twin of every series: twice the scrape, for nothing used here

# Rounds and kernel starts take from ~10 ms (a warm text round) to minutes (a long computation).
ROUND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

ROUNDS = Counter("weaver_rounds", "Rounds ended, by how they ended", ["outcome"])
ROUND_SECONDS = Histogram(
    "weaver_round_duration_seconds", "Time from a message to its round's end", ["outcome"], buckets=ROUND_BUCKETS
)
LLM_REQUESTS = Counter("weaver_llm_requests", "Model calls made (retries inside one call count once)", ["backend"])
LLM_ERRORS = Counter("weaver_llm_errors", "Model calls that failed (a cancel is not a failure)", ["backend"])
LLM_RETRIES = Counter("weaver_llm_retries", "Extra attempts model calls needed", ["backend"])
LLM_TOKENS = Counter(
    "weaver_llm_tokens",
    "Tokens the model servers reported, by provider and configured model",
    ["direction", "provider", "model"],
)
# Every api_type's backend name (core/llm/factory.py); groq, qwen and zhipuai name themselves.
PROVIDERS = ("offline", "openai", "azure", "azure_ad", "ollama", "groq", "qwen", "zhipuai", "anthropic", "google_genai")
OTHER_MODEL = "other"  # a model not configured at start: the label stays bounded
LLM_FIRST_TOKEN = Histogram(
    "weaver_llm_first_token_seconds",
    "Time from a model call to its first streamed piece",
    ["backend"],
    buckets=FIRST_TOKEN_BUCKETS,
)
KERNEL_STARTS = Counter("weaver_kernel_starts", "Kernel starts, by purpose and outcome", ["purpose", "outcome"])
KERNEL_START_SECONDS = Histogram(
    "weaver_kernel_start_seconds", "Time to start a kernel (launch and bootstrap)", ["purpose"], buckets=START_BUCKETS
)
EXECUTIONS = Counter("weaver_code_executions", "Code executions, by outcome", ["outcome"])
LOGIN_FAILURES = Counter("weaver_login_failures", "Password logins refused, by reason", ["reason"])


def _start_at_zero() -> None:
    """Every known label value from the start, so a rate or an alert on it works before the first event."""
    for outcome in ("finished", "failed", "cancelled"):
        ROUNDS.labels(outcome)
        ROUND_SECONDS.labels(outcome)
    for backend in PROVIDERS:
        for counter in (LLM_REQUESTS, LLM_ERRORS, LLM_RETRIES):
            counter.labels(backend)
    for purpose in ("session", "pool"):
        KERNEL_STARTS.labels(purpose, "ok")
        KERNEL_STARTS.labels(purpose, "failed")
    for status in ("success", "failure", "timeout", "cancelled"):
        EXECUTIONS.labels(status)
    for reason in LOGIN_FAILURE_REASONS:
        LOGIN_FAILURES.labels(reason)


LOGIN_FAILURE_REASONS = ("password", "throttled", "bad_form")
_start_at_zero()

Kind = Literal["gauge", "counter"]
Reading = Callable[[], "float | int | None"]


class _Readings(Collector):
    """Values read at scrape time from whoever registered them (``watch``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readings: dict[str, tuple[Kind, str, Reading]] = {}

    def watch(self, name: str, kind: Kind, documentation: str, read: Reading) -> None:
        with self._lock:
            self._readings[name] = (kind, documentation, read)

    def forget(self, name: str) -> None:
        with self._lock:
            self._readings.pop(name, None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            readings = list(self._readings.items())
        for name, (kind, documentation, read) in readings:
            try:
                value = read()
            except Exception:  # noqa: BLE001 - one broken reading must not cost the scrape
                logger.debug("metric %s could not be read", name, exc_info=True)
                continue
            if value is None:
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, documentation, value=float(value))


_READINGS = _Readings()
REGISTRY.register(_READINGS)
_enabled = True


_models: set[tuple[str, str]] = set()  # (provider, model) pairs configured: the token counter's labels


def configure(enabled: bool, models: Iterable[tuple[str, str]] = ()) -> None:
    """Turn the updates on or off for this process (``metrics.enabled``); ``models``: the (provider,
    model) pairs the configuration names, whose token series start at zero. Any other model a call
    reports is counted as ``model="other"``, so a model server cannot grow the label set."""
    global _enabled
    _enabled = enabled
    for provider, model in models:
        _models.add((provider, model))
        for direction in ("prompt", "completion"):
            LLM_TOKENS.labels(direction, provider, model)


def enabled() -> bool:
    return _enabled


def watch(name: str, kind: Kind, documentation: str, read: Reading) -> None:
    """Report ``read()`` as ``name`` at every scrape (a later ``watch`` of the same name replaces it)."""
    _READINGS.watch(name, kind, documentation, read)


def forget(name: str) -> None:
    _READINGS.forget(name)


def render() -> tuple[bytes, str]:
    """The text exposition of every series, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# ----- updates, called where things happen ----------------------------------------------------


def round_ended(outcome: str, seconds: float) -> None:
    if _enabled:
        ROUNDS.labels(outcome).inc()
        ROUND_SECONDS.labels(outcome).observe(seconds)


def llm_call(
    backend: str,
    failed: bool,
    attempts: int,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    first_token_s: float | None,
    model: str = "",
) -> None:
    """One model call as its ``LLMCallRecord`` tells it (cancelled calls: ``failed`` False);
    ``model``: the configured model it called."""
    if not _enabled:
        return
    LLM_REQUESTS.labels(backend).inc()
    if failed:
        LLM_ERRORS.labels(backend).inc()
    if attempts > 1:
        LLM_RETRIES.labels(backend).inc(attempts - 1)
    label = model if (backend, model) in _models else OTHER_MODEL
    if prompt_tokens:
        LLM_TOKENS.labels("prompt", backend, label).inc(prompt_tokens)
    if completion_tokens:
        LLM_TOKENS.labels("completion", backend, label).inc(completion_tokens)
    if first_token_s is not None:
        LLM_FIRST_TOKEN.labels(backend).observe(first_token_s)


def kernel_started(purpose: str, ok: bool, seconds: float) -> None:
    """``purpose``: "session" (someone waits for it) or "pool" (started ahead)."""
    if _enabled:
        KERNEL_STARTS.labels(purpose, "ok" if ok else "failed").inc()
        if ok:
            KERNEL_START_SECONDS.labels(purpose).observe(seconds)


def code_executed(outcome: str) -> None:
    if _enabled:
        EXECUTIONS.labels(outcome).inc()


def login_failed(reason: str) -> None:
    if _enabled:
        LOGIN_FAILURES.labels(reason).inc()
