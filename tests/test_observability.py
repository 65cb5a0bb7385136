"""What an operator watches a server with: ``/metrics``, ``/ready`` and OpenTelemetry spans.

One real ``weaver ui`` for the module, on a throwaway PostgreSQL history, talking to the scripted
model server (``tests/llm_server.py``) and exporting spans to a local OTLP/HTTP receiver
(``tests/otlp_receiver.py``), both on 127.0.0.1. A request "through a proxy" is faked the way
HAProxy relays one: the server trusts 127.0.0.1 as its proxy and the request names another client in
``X-Forwarded-For``. The database stops answering by stopping (SIGSTOP) the postmaster this module
started and its backends, by their pids, and answers again on SIGCONT.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine

from core import TaskWeaverApp, metrics
from core.config import ExecutionSettings, load_config
from core.execution.gateway_backend import GatewayBackend
from core.tracing import Tracing
from tests.llm_server import Answer, ScriptedLLMServer, Status
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.pg_cluster import PgCluster, start_cluster
from tests.ui_harness import UIServer, answers, start_server, stop_server, wait_until

pytestmark = pytest.mark.timeout(180)

TOKEN = "metrics-token-0123456789abcdef"
CANARY = "CANARY-7d1f"  # in the user's message, the model's answers, the code and its output
PROXIED = {"X-Forwarded-For": "203.0.113.7"}


def _planner(send_to: str, message: str) -> str:
    return json.dumps(
        {"thought": "t", "plan": ["work"], "current_plan_step": "work", "send_to": send_to, "message": message}
    )


def _code(code: str) -> str:
    return json.dumps({"thought": "run it", "reply_type": "python", "reply_content": code})


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[UIServer, ScriptedLLMServer, OTLPReceiver, PgCluster]]:
    receiver = OTLPReceiver().start()
    llm = ScriptedLLMServer().start()
    cluster = start_cluster()
    root = tmp_path_factory.mktemp("weaver-observed")
    env = {
        "WEAVER_DATABASE_URL": cluster.create_database(),
        "WEAVER_LLM__API_TYPE": "openai",
        "WEAVER_LLM__API_BASE": llm.base_url,
        "WEAVER_LLM__API_KEY": "test-key",
        "WEAVER_LLM__MODEL": "test-model",
        "WEAVER_LLM__MAX_RETRIES": "0",
        "WEAVER_EXECUTION__POOL_SIZE": "0",
        "WEAVER_TRACING__ENABLED": "true",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: spans leave within a moment, not 5 s
        "WEAVER_METRICS_TOKEN": TOKEN,
        "WEAVER_UI_TRUSTED_PROXIES": "127.0.0.1",
        "WEAVER_UI_READY_TIMEOUT_S": "1",
        "WEAVER_UI_READY_DB_GRACE_S": "0",  # a silent database fails /ready at once (the grace: in-process below)
        "WEAVER_UI_READY_CACHE_S": "0",
    }
    try:
        server = start_server(root / "app", root / "server.log", extra_env=env)
    except BaseException:
        cluster.stop()
        llm.stop()
        receiver.stop()
        raise
    try:
        yield server, llm, receiver, cluster
    finally:
        stop_server(server)
        cluster.stop()
        llm.stop()
        receiver.stop()


def _scrape(
    server: UIServer, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{server.base_url}/metrics", headers=headers or {}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), -1.0)


def _trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def test_a_round_is_counted_traced_and_its_text_never_leaves(
    observed: tuple[UIServer, ScriptedLLMServer, OTLPReceiver, PgCluster],
) -> None:
    server, llm, receiver, _ = observed
    before = _scrape(server)
    llm.push(
        Answer(_planner("CodeInterpreter", f"Print {CANARY}."), chunks=3),
        Answer(_code(f"print('{CANARY}' * 2)"), chunks=3),
        Answer(_planner("User", f"It printed {CANARY}."), chunks=3),
    )
    with server.client() as chat:
        turn = chat.ask(f"Please print {CANARY}")
        assert any(CANARY in text for text in answers(turn)), answers(turn)
        during = _scrape(server)
    assert _value(during, "weaver_users_connected") >= 1
    assert _value(during, "weaver_sessions_live") >= 1
    assert _value(during, "weaver_kernels_live") >= 1
    assert _value(during, "weaver_kernels_pooled") == 0  # execution.pool_size = 0 here

    def grew(name: str, by: float, **labels: str) -> bool:
        return _value(during, name, **labels) - max(_value(before, name, **labels), 0) >= by

    assert grew("weaver_rounds_total", 1, outcome="finished")
    assert grew("weaver_round_duration_seconds_count", 1, outcome="finished")
    assert grew("weaver_llm_requests_total", 3, backend="openai")
    assert grew(
        "weaver_llm_tokens_total", 3 * 11, direction="prompt", provider="openai", model="test-model"
    )  # the server reports 11 + 7
    assert grew("weaver_llm_tokens_total", 3 * 7, direction="completion", provider="openai", model="test-model")
    assert grew("weaver_llm_first_token_seconds_count", 3, backend="openai")
    assert grew("weaver_code_executions_total", 1, outcome="success")
    assert grew("weaver_kernel_starts_total", 1, purpose="session", outcome="ok")
    assert grew("weaver_kernel_start_seconds_count", 1, purpose="session")
    for series in ("weaver_history_queue_depth", "weaver_login_failures_total"):
        assert any(name == series for name, _ in during), f"{series} missing"

    # The spans: one trace per round, every part of it, named by ids and the user only.
    spans = receiver.wait_for(lambda got: any(s.name == "weaver.round" for s in got), 20)
    [round_span] = [s for s in spans if s.name == "weaver.round"]
    assert round_span.attributes["weaver.session.id"] and round_span.attributes["weaver.round.id"]
    assert round_span.attributes["enduser.id"] == getpass.getuser()  # the local login's user
    assert round_span.attributes["weaver.model"] == "test-model"
    mine = receiver.wait_for(lambda got: len(_trace(got, round_span.trace_id)) >= 8, 20)
    ours = _trace(mine, round_span.trace_id)
    names = sorted(s.name for s in ours)
    assert names == sorted(["weaver.round"] + ["weaver.role"] * 3 + ["weaver.llm"] * 3 + ["weaver.execution"]), names
    assert round_span.parent_span_id == "" and round_span.service_name == "weaver"
    roles = [s for s in ours if s.name == "weaver.role"]
    assert sorted(str(s.attributes["weaver.role"]) for s in roles) == ["CodeInterpreter", "Planner", "Planner"]
    assert all(s.parent_span_id == round_span.span_id for s in roles)
    role_ids = {s.span_id for s in roles}
    assert all(s.parent_span_id in role_ids for s in ours if s.name in ("weaver.llm", "weaver.execution"))
    llm_spans = [s for s in ours if s.name == "weaver.llm"]
    assert {s.attributes["gen_ai.system"] for s in llm_spans} == {"openai"}
    assert {s.attributes["gen_ai.response.model"] for s in llm_spans} == {"scripted-model"}
    assert [s.attributes["gen_ai.usage.input_tokens"] for s in llm_spans] == [11, 11, 11]
    assert [s.attributes["gen_ai.usage.output_tokens"] for s in llm_spans] == [7, 7, 7]
    [execution] = [s for s in ours if s.name == "weaver.execution"]
    assert execution.attributes["weaver.execution.outcome"] == "success"
    assert not any(CANARY.encode() in body for body in receiver.bodies)  # no message, code or output
    assert f"tracing on: spans go to {receiver.endpoint} over OTLP/HTTP" in server.log()


def test_a_failed_model_call_is_an_error_in_metrics_and_spans(
    observed: tuple[UIServer, ScriptedLLMServer, OTLPReceiver, PgCluster],
) -> None:
    server, llm, receiver, _ = observed
    before = _scrape(server)
    llm.push(Status(401, "bad key"))
    with server.client() as chat:
        chat.ask("hello")
    after = _scrape(server)
    assert (
        _value(after, "weaver_llm_errors_total", backend="openai")
        == _value(before, "weaver_llm_errors_total", backend="openai") + 1
    )
    assert (
        _value(after, "weaver_rounds_total", outcome="failed")
        == _value(before, "weaver_rounds_total", outcome="failed") + 1
    )
    spans = receiver.wait_for(
        lambda got: any(s.name == "weaver.llm" and s.attributes.get("weaver.error") == "LLMError" for s in got), 20
    )
    failed = [s for s in spans if s.name == "weaver.llm" and s.attributes.get("weaver.error") == "LLMError"]
    assert failed[0].status_code == 2  # STATUS_CODE_ERROR, named by the exception's type only


def test_metrics_through_a_proxy_need_the_token(
    observed: tuple[UIServer, ScriptedLLMServer, OTLPReceiver, PgCluster],
) -> None:
    server = observed[0]
    url = f"{server.base_url}/metrics"
    refused = httpx.get(url, headers=PROXIED, timeout=10)
    assert refused.status_code == 401 and "WEAVER_METRICS_TOKEN" in refused.json()["detail"]
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "weaver_" not in refused.text
    wrong = httpx.get(url, headers={**PROXIED, "Authorization": "Bearer " + "x" * len(TOKEN)}, timeout=10)
    assert wrong.status_code == 403 and "weaver_" not in wrong.text
    # A proxy on this machine that the server does not trust still relays: the header alone refuses.
    assert httpx.get(url, headers={"X-Real-IP": "203.0.113.8"}, timeout=10).status_code == 401
    assert (
        _value(
            _scrape(server, {**PROXIED, "Authorization": f"Bearer {TOKEN}"}), "weaver_rounds_total", outcome="finished"
        )
        >= 0
    )
    assert httpx.post(url, timeout=10).status_code in (403, 405)  # no writes (the guard or the route refuses)
    # The guards stand in front: a Host the server does not answer is refused before the route.
    rebound = httpx.get(url, headers={"Host": "evil.example"}, timeout=10)
    assert rebound.status_code == 400 and "WEAVER_UI_ALLOWED_HOSTS" in rebound.text and "weaver_" not in rebound.text
    # /ready: the verdict for everyone (the load balancer), the details for loopback or the token.
    proxied = httpx.get(f"{server.base_url}/ready", headers=PROXIED, timeout=10)
    assert proxied.status_code == 200
    assert proxied.json() == {
        "ready": True,
        "checks": {"engine": {"ok": True}, "database": {"ok": True}, "kernels": {"ok": True}, "draining": {"ok": True}},
    }


def test_ready_turns_503_while_the_database_does_not_answer(
    observed: tuple[UIServer, ScriptedLLMServer, OTLPReceiver, PgCluster],
) -> None:
    server, _, _, cluster = observed
    ready = f"{server.base_url}/ready"
    assert httpx.get(ready, timeout=10).status_code == 200
    assert cluster.proc is not None
    stopped = _signal_cluster(cluster.proc.pid, signal.SIGSTOP)
    try:
        down = wait_until(lambda: _answer_if(ready, 503), 30, "/ready to say 503")
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    body = down.json()
    assert body["ready"] is False and body["checks"]["engine"]["ok"] is True
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["database"]["detail"].startswith("no answer within 1 s (WEAVER_UI_READY_TIMEOUT_S)")
    up = wait_until(lambda: _answer_if(ready, 200), 30, "/ready to say 200 again")
    assert up.json()["ready"] is True
    assert "not ready: database" in server.log()


def _signal_cluster(postmaster: int, sig: int) -> list[int]:
    """``sig`` to the postmaster we started and to its children (each backend is a process group of
    its own, so the group's signal would miss them); returns their pids."""
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    pids = [postmaster, *(int(pid) for pid in children)]
    for pid in pids:
        os.kill(pid, sig)
    return pids


def _answer_if(url: str, status: int) -> httpx.Response | None:
    response = httpx.get(url, timeout=10)
    return response if response.status_code == status else None


# ----- in-process: the settings, the extra checks, the switches --------------------------------


def test_a_short_metrics_token_stops_the_server_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from ui.ops_routes import OpsSettingsError, ops_settings

    monkeypatch.setenv("WEAVER_METRICS_TOKEN", "short")
    with pytest.raises(OpsSettingsError, match="WEAVER_METRICS_TOKEN: .*at least 16 characters"):
        ops_settings()
    monkeypatch.setenv("WEAVER_METRICS_TOKEN", "")
    monkeypatch.setenv("WEAVER_UI_READY_TIMEOUT_S", "0")
    with pytest.raises(OpsSettingsError, match="WEAVER_UI_READY_TIMEOUT_S"):
        ops_settings()
    monkeypatch.delenv("WEAVER_UI_READY_TIMEOUT_S")
    settings = ops_settings()
    assert settings.metrics_token is None and settings.ui_ready_timeout_s == 2.0


def test_a_registered_check_makes_the_server_unready(tmp_path: Path) -> None:
    """The hook other parts use (e.g. a draining server): one ``register`` call."""
    from ui import readiness

    draining = False
    readiness.register("paused", lambda: "the server is paused" if draining else None)
    database = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}")
    try:
        found = asyncio.run(readiness.readiness(lambda: None, lambda: database, 1.0))
        assert found.checks["database"] == {"ok": True} and found.checks["paused"] == {"ok": True}
        assert found.checks["engine"] == {"ok": False, "detail": "the engine has not started yet"}
        draining = True
        found = asyncio.run(readiness.readiness(lambda: None, lambda: None, 1.0))
        assert not found.ready
        assert found.checks["paused"] == {"ok": False, "detail": "the server is paused"}
        assert found.body(with_details=False)["checks"]["paused"] == {"ok": False}
    finally:
        readiness.EXTRA_CHECKS.pop("paused", None)
        asyncio.run(database.dispose())


def test_a_database_blip_is_a_note_while_the_history_spools_its_writes(tmp_path: Path) -> None:
    """Replicas share the database: a blip the history rides out must not take all of them out of
    the load balancer. Ready (with a note) while the history keeps its writes and the outage is
    younger than WEAVER_UI_READY_DB_GRACE_S; unready past it, or once the spool is full."""
    from ui import readiness
    from ui.history.write_behind import OutagePolicy, WriteBehind

    async def database_down(rows: dict[str, dict[str, object]]) -> None:
        raise ConnectionRefusedError("the database does not answer")

    async def scenario() -> None:
        silent = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'h.db'}")  # cannot open
        writes = WriteBehind(database_down, 0.0, outage=OutagePolicy(retry_first_s=60, wait_s=0.1, spool_bytes=10_000))
        writes.add("step-1", {"output": "kept"})
        await writes.flush(now=True)
        assert writes.failing_since is not None
        outage = readiness.DatabaseOutage()

        async def ready(grace: float) -> readiness.Readiness:
            return await readiness.readiness(lambda: None, lambda: silent, 1.0, grace, lambda: writes, outage)

        try:
            found = await ready(60.0)
            assert found.checks["database"]["ok"] is True
            assert "history spooling since 0 s" in found.checks["database"]["detail"]
            found = await ready(0.0)
            assert found.checks["database"]["ok"] is False
            assert "WEAVER_UI_READY_DB_GRACE_S=0" in found.checks["database"]["detail"]
            writes.add("step-2", {"output": "x" * 20_000})  # past the spool's bound
            await writes.flush(now=True)
            writes.add("step-3", {"output": "not kept"})
            assert writes.dropped_rows == 1
            found = await ready(60.0)
            assert found.checks["database"]["ok"] is False
            assert "can no longer keep writes" in found.checks["database"]["detail"]
        finally:
            await writes.close()
            await silent.dispose()

    asyncio.run(scenario())


def test_ready_answers_are_reused_for_a_second_and_mapped_loopback_is_loopback() -> None:
    """/ready is open to anyone: a flood reuses one verdict per WEAVER_UI_READY_CACHE_S; and
    ``::ffff:127.0.0.1`` (a dual-stack socket's loopback client) gets the details as 127.0.0.1 does."""
    from ui.ops_routes import OpsRoutes, OpsSettings, _loopback

    assert _loopback({"client": ("::ffff:127.0.0.1", 5000), "headers": []})
    assert not _loopback({"client": ("::ffff:203.0.113.7", 5000), "headers": []})
    asked = 0

    def engine() -> None:
        nonlocal asked
        asked += 1
        return None

    async def scenario() -> None:
        routes = OpsRoutes(lambda *a: None, OpsSettings(ui_ready_cache_s=1.0), "", engine, lambda: None)  # type: ignore[arg-type]
        first = await routes._readiness()
        for _ in range(50):
            assert await routes._readiness() is first
        made = asked
        routes.settings = OpsSettings(ui_ready_cache_s=0.0)
        await routes._readiness()
        assert asked > made

    asyncio.run(scenario())


@pytest.mark.gateway
def test_ready_asks_the_kernel_gateway(tmp_path: Path) -> None:
    from tests.gateway_server import start_gateway

    gateway = start_gateway(tmp_path / "gw")
    try:
        backend = GatewayBackend(ExecutionSettings(gateway_url=gateway.url, gateway_token=gateway.token))
        assert backend.readiness(1.0).ok
        os.kill(gateway.pid, signal.SIGSTOP)
        try:
            stuck = backend.readiness(1.0)
        finally:
            os.kill(gateway.pid, signal.SIGCONT)
        assert not stuck.ok and gateway.url in stuck.detail and stuck.key == "execution.gateway_url"
        assert backend.readiness(5.0).ok
    finally:
        gateway.stop()
    gone = backend.readiness(1.0)
    assert not gone.ok and "could not be reached" in gone.detail


def test_tracing_enabled_is_taskweavers_key_and_metrics_can_be_off(tmp_path: Path) -> None:
    (tmp_path / "taskweaver_config.json").write_text(
        json.dumps({"tracing.enabled": True, "tracing.endpoint": "http://127.0.0.1:4317", "metrics.enabled": False})
    )
    assert load_config(tmp_path).tracing.enabled is True
    app = TaskWeaverApp(tmp_path, config={"tracing.enabled": False, "execution.pool_size": 0})
    try:
        assert metrics.enabled() is False  # metrics.enabled = false, from the file
        before = REGISTRY.get_sample_value("weaver_rounds_total", {"outcome": "finished"})
        assert app.get_session().send_message("hello").state == "finished"  # offline: no kernel
        assert REGISTRY.get_sample_value("weaver_rounds_total", {"outcome": "finished"}) == before
    finally:
        app.stop()
        metrics.configure(True)


def test_queued_spans_are_sent_at_shutdown_and_no_endpoint_means_no_tracing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Chainlit ends its process with ``os._exit``, so the SDK's exit hook never sends what is
    queued: ``shutdown_tracing`` (the server's shutdown calls it) does, at once, not after the batch
    delay. And ``tracing.enabled`` without an OTLP endpoint is one warning naming the variables,
    not spans sent to a default address nobody listens on."""
    from core import tracing

    tracing.shutdown_tracing(1.0)  # whatever an earlier test set up
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracing, "_WARNED", False)
    with caplog.at_level("WARNING", logger="weaver.tracing"):
        assert Tracing(True).enabled is False
        assert Tracing(True).enabled is False
    warned = [r.getMessage() for r in caplog.records if r.name == "weaver.tracing"]
    assert warned == [
        "tracing.enabled is set but neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT "
        "is: tracing stays off"
    ]

    receiver = OTLPReceiver().start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # ms: only a flush sends it within the test
        traced = Tracing(True)
        assert traced.enabled
        with traced.span("weaver.round", {"weaver.session": "s-1"}):
            pass
        assert receiver.spans == []  # queued, not sent
        tracing.shutdown_tracing(5.0)
        assert [s.name for s in receiver.spans] == ["weaver.round"]  # sent by the call itself
    finally:
        tracing.shutdown_tracing(1.0)
        receiver.stop()
