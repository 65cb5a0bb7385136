"""The round's usage step as a user sees it in Chromium: folded, its header the round's tokens and
cost, and inside one line per role and model. A real server talks to the scripted model server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.llm_server import Answer, ScriptedLLMServer
from tests.test_ui_browser import ARTIFACTS, CHROMIUM, _browser_page, _chat_started
from tests.ui_harness import start_server, stop_server

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


def test_the_usage_step_shows_the_rounds_tokens_and_cost(tmp_path: Path) -> None:
    expect = playwright_sync.expect
    llm = ScriptedLLMServer().start()
    env = {
        "WEAVER_LLM__API_TYPE": "openai",
        "WEAVER_LLM__API_BASE": llm.base_url,
        "WEAVER_LLM__API_KEY": "test-key",
        "WEAVER_LLM__MAX_RETRIES": "0",
        "WEAVER_LLM__PRICE_PER_1K_PROMPT_TOKENS": "1.0",
        "WEAVER_LLM__PRICE_PER_1K_COMPLETION_TOKENS": "2.0",
        "WEAVER_EXECUTION__POOL_SIZE": "0",
    }
    server = start_server(tmp_path / "app", tmp_path / "server.log", extra_env=env)
    try:
        answer = {"thought": "t", "plan": ["greet"], "current_plan_step": "greet", "send_to": "User", "message": "Hi!"}
        llm.push(Answer(json.dumps(answer)))
        with _browser_page() as page:
            with page.expect_websocket() as ws_info:
                page.goto(server.base_url)
            ws_info.value.wait_for_event("framereceived", predicate=_chat_started, timeout=60_000)
            chat_input = page.locator("#chat-input")
            chat_input.fill("Hello")
            submit = page.locator("#chat-submit")
            expect(submit).to_be_enabled()
            submit.click()
            expect(page.get_by_text("Hi!").first).to_be_visible(timeout=90_000)
            header = page.get_by_text("Usage · 11 tokens in · 7 out · $0.0250", exact=False).first
            expect(header).to_be_visible()
            expect(page.get_by_text("1 call · 11 in · 7 out", exact=False)).to_have_count(0)  # folded
            header.click()
            expect(page.get_by_text("1 call · 11 in · 7 out · $0.0250", exact=False).first).to_be_visible()
            expect(page.get_by_text("scripted-model").first).to_be_visible()
            ARTIFACTS.mkdir(exist_ok=True)
            page.get_by_text("scripted-model").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "ui_usage_step.png"), full_page=True)
    finally:
        stop_server(server)
        llm.stop()
