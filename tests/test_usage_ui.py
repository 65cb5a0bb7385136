"""Token usage as users and admins see it, against a real ``weaver ui`` and the scripted model server.

Every answer of the scripted server reports 11 prompt and 7 completion tokens (its ``usage`` chunk,
sent because Weaver asks for ``stream_options.include_usage``). The round's usage step, ``/metrics``
and each user's totals in the history (read by ``weaver usage``, a real subprocess) must agree, and
the totals must survive a restart of the server. Users sign in through a trusted proxy header, as
behind a company proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.llm_server import Answer, ScriptedLLMServer
from tests.ui_harness import REPO_ROOT, UIServer, answers, login_cookie, start_server, stop_server
from ui.history.usage import read_usage

pytestmark = pytest.mark.timeout(240)

HEADER = "X-Test-User"


def _planner(send_to: str, message: str) -> str:
    return json.dumps(
        {"thought": "t", "plan": ["work"], "current_plan_step": "work", "send_to": send_to, "message": message}
    )


def _code(code: str) -> str:
    return json.dumps({"thought": "run it", "reply_type": "python", "reply_content": code})


def _env(llm: ScriptedLLMServer) -> dict[str, str]:
    return {
        "WEAVER_LLM__API_TYPE": "openai",
        "WEAVER_LLM__API_BASE": llm.base_url,
        "WEAVER_LLM__API_KEY": "test-key",
        "WEAVER_LLM__MODEL": "priced-model",
        "WEAVER_LLM__MAX_RETRIES": "0",
        "WEAVER_LLM__PRICE_PER_1K_PROMPT_TOKENS": "1.0",
        "WEAVER_LLM__PRICE_PER_1K_COMPLETION_TOKENS": "2.0",
        "WEAVER_EXECUTION__POOL_SIZE": "0",
        "WEAVER_UI_USER_HEADER": HEADER,
        "WEAVER_UI_ADMINS": "carol",
        "CHAINLIT_AUTH_SECRET": secrets.token_urlsafe(32),
    }


def _ask(server: UIServer, user: str, text: str) -> list[dict[str, Any]]:
    chat = server.client()
    assert chat.login_with_header(HEADER, user).status_code == 200
    chat.connect()
    try:
        return chat.ask(text)
    finally:
        chat.disconnect()


def _usage_steps(turn: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in turn if str(m.get("name") or "").startswith("Usage · ")]


def _tokens(server: UIServer) -> dict[tuple[str, str, str], float]:
    response = httpx.get(f"{server.base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (s.labels["direction"], s.labels["provider"], s.labels["model"]): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name == "weaver_llm_tokens_total"
    }


def _weaver_usage(app_dir: Path) -> str:
    """``weaver usage`` as an admin runs it on the server's machine."""
    env = {k: v for k, v in os.environ.items() if k != "WEAVER_DATABASE_URL"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "ui.cli", "usage", "--app-dir", str(app_dir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _admin_usage_rows(server: UIServer, admin: str) -> dict[str, list[str]]:
    """The admin page's "Model usage" table, cell texts by user."""
    page = httpx.get(f"{server.base_url}/admin", headers=login_cookie(server.base_url, {HEADER: admin}), timeout=30)
    assert page.status_code == 200, page.text
    table = page.text.split('<table id="usage">', 1)[1].split("</table>", 1)[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in table.split("<tr")[2:]]
    return {row[0]: row for row in rows}


def test_usage_is_shown_per_round_counted_in_metrics_and_kept_per_user(tmp_path: Path) -> None:
    llm = ScriptedLLMServer().start()
    app_dir = tmp_path / "app"
    server = start_server(app_dir, tmp_path / "server.log", extra_env=_env(llm))
    try:
        assert _weaver_usage(app_dir).strip() == "no model usage recorded yet"
        before = _tokens(server)
        # The configured model's series exist from the start, at zero (no user in any label).
        assert before[("prompt", "openai", "priced-model")] == 0
        # Round 1 (alice): Planner, CodeInterpreter, Planner: 3 calls, 33 tokens in, 21 out.
        llm.push(
            Answer(_planner("CodeInterpreter", "Print 6*7.")),
            Answer(_code("print(6 * 7)")),
            Answer(_planner("User", "It is 42.")),
        )
        turn = _ask(server, "alice", "What is 6*7?")
        assert any("It is 42." in text for text in answers(turn)), answers(turn)
        [step] = _usage_steps(turn)
        # 33 * 1.0 / 1000 + 21 * 2.0 / 1000 = 0.075 in the prices' currency
        assert step["name"] == "Usage · 33 tokens in · 21 out · $0.0750"
        output = str(step.get("output") or "")
        assert "Planner · `scripted-model` · 2 calls · 22 in · 14 out · $0.0500" in output, output
        assert "CodeInterpreter · `scripted-model` · 1 call · 11 in · 7 out · $0.0250" in output, output
        # Round 2 (alice) and round 3 (bob): one Planner call each.
        llm.push(Answer(_planner("User", "Hello again.")))
        [step] = _usage_steps(_ask(server, "alice", "Hi"))
        assert step["name"] == "Usage · 11 tokens in · 7 out · $0.0250"
        llm.push(Answer(_planner("User", "Hello Bob.")))
        [step] = _usage_steps(_ask(server, "bob", "Hi"))
        assert step["name"] == "Usage · 11 tokens in · 7 out · $0.0250"

        after = _tokens(server)
        assert after[("prompt", "openai", "priced-model")] - before[("prompt", "openai", "priced-model")] == 55
        assert after[("completion", "openai", "priced-model")] - before[("completion", "openai", "priced-model")] == 35
        assert not any(key[2] in ("alice", "bob") for key in after)
    finally:
        stop_server(server)

    # The totals are in the history database: read by the function the admin page calls, and by the CLI.
    users = {u.user: u for u in asyncio.run(read_usage(app_dir, None))}
    assert set(users) == {"alice", "bob"}
    alice, bob = users["alice"], users["bob"]
    assert (alice.prompt_tokens, alice.completion_tokens, alice.rounds) == (44, 28, 2)
    assert alice.cost == pytest.approx(0.1)
    assert (bob.prompt_tokens, bob.completion_tokens, bob.rounds) == (11, 7, 1)
    assert [m.model for m in alice.models] == ["scripted-model"]
    listing = _weaver_usage(app_dir)
    assert [line.split()[:5] for line in listing.splitlines()[1:] if not line.startswith(" ")] == [
        ["alice", "44", "28", "$0.1000", "2"],
        ["bob", "11", "7", "$0.0250", "1"],
    ], listing

    # A restarted server keeps adding to the same totals, and shows them to an admin on /admin.
    server = start_server(app_dir, tmp_path / "server2.log", extra_env=_env(llm))
    try:
        llm.push(Answer(_planner("User", "Back again.")))
        [step] = _usage_steps(_ask(server, "bob", "Hi"))
        assert step["name"] == "Usage · 11 tokens in · 7 out · $0.0250"
        rows = _admin_usage_rows(server, "carol")
        assert rows["alice"][:4] == ["alice", "44", "28", "$0.1000"], rows
        assert rows["bob"][:4] == ["bob", "22", "14", "$0.0500"], rows
        bob_page = httpx.get(f"{server.base_url}/admin", headers=login_cookie(server.base_url, {HEADER: "bob"}))
        assert bob_page.status_code == 403 and "44" not in bob_page.text
    finally:
        stop_server(server)
        llm.stop()
    users = {u.user: u for u in asyncio.run(read_usage(app_dir, None))}
    assert (users["bob"].prompt_tokens, users["bob"].completion_tokens, users["bob"].rounds) == (22, 14, 2)
    assert (users["alice"].prompt_tokens, users["alice"].rounds) == (44, 2)
