"""The offline default backend: deterministic, no network, same JSON protocol as a real model.

It acts only on what it can act on honestly: a fenced Python block is run as is, added files are
profiled by generated code, and anything else gets a reply saying what offline mode can do.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from core.cancel import CancelToken
from core.llm.base import ChatRequest, LLMBackend
from core.llm.offline_profile import profile_code
from core.text import fence

CHUNK_CHARS = 24

OFFLINE_HELP = """I'm running in **offline mode**: no language model is configured, so I can't understand \
free-form requests. Here is what works right now:

- **Run Python**: send a message with a fenced code block (three backticks and `python`). It runs in \
your own kernel, and variables persist between messages.
- **Profile files**: drop CSV, TSV, Excel, JSON, Parquet, image or text files into the chat and I'll \
load and describe them.

To chat in plain language, configure a model: set `WEAVER_LLM__API_KEY` (and `WEAVER_LLM__API_BASE` / \
`WEAVER_LLM__MODEL` for other servers), or put `llm.api_key` in `taskweaver_config.json`. See the README."""


class OfflineBackend(LLMBackend):
    name = "offline"

    def stream_chat(self, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        answer = self.planner_answer(request.hints) if request.role == "Planner" else self.code_answer(request.hints)
        text = json.dumps(answer, ensure_ascii=False)
        assert request.record is not None
        request.record.model = "offline"
        for start in range(0, len(text), CHUNK_CHARS):
            cancel.raise_if_cancelled()
            yield text[start : start + CHUNK_CHARS]

    @staticmethod
    def planner_answer(hints: dict[str, Any]) -> dict[str, Any]:
        if hints.get("stage") == "worker_reply":
            return _report(hints)
        code_blocks: list[str] = hints.get("code_blocks") or []
        files: list[str] = hints.get("files_added") or []
        if code_blocks:
            code = "\n\n".join(code_blocks)
            return {
                "thought": "The message contains Python code, so the CodeInterpreter runs it exactly as written.",
                "plan": ["Run the code block as written", "Report its output"],
                "current_plan_step": "Run the code block as written",
                "send_to": "CodeInterpreter",
                "message": f"Please run this code exactly as written:\n{fence(code, 'python')}",
            }
        if files:
            listed = ", ".join(files)
            return {
                "thought": "Files were added without code, so the CodeInterpreter profiles them.",
                "plan": [f"Load and profile {listed}", "Report what the files contain"],
                "current_plan_step": f"Load and profile {listed}",
                "send_to": "CodeInterpreter",
                "message": f"Please load and profile the files just added: {listed}",
            }
        return {
            "thought": "Offline mode cannot interpret free-form text; tell the user what works.",
            "plan": ["Explain what offline mode can do"],
            "current_plan_step": "Explain what offline mode can do",
            "send_to": "User",
            "message": OFFLINE_HELP,
        }

    @staticmethod
    def code_answer(hints: dict[str, Any]) -> dict[str, Any]:
        if hints.get("previous_error"):
            return {
                "thought": "Offline mode runs code as written and cannot revise it.",
                "reply_type": "text",
                "reply_content": f"{hints['previous_error']}\n\nOffline mode runs code as written and cannot "
                "fix it: edit the code and send it again.",
            }
        code_blocks: list[str] = hints.get("code_blocks") or []
        if code_blocks:
            return {
                "thought": "Run the user's code as written.",
                "reply_type": "python",
                "reply_content": "\n\n".join(code_blocks),
            }
        files: list[str] = hints.get("files") or []
        if files:
            return {
                "thought": "Profile each file by its type: tables, images, text.",
                "reply_type": "python",
                "reply_content": profile_code(files),
            }
        return {
            "thought": "Nothing to run.",
            "reply_type": "text",
            "reply_content": "There was no code or file to work on.",
        }


def _report(hints: dict[str, Any]) -> dict[str, Any]:
    status = hints.get("execution_status")
    output = str(hints.get("worker_message", "")).strip()
    if status == "success":
        lead = "Done. Here is what the code produced:"
    elif status == "timeout":
        lead = "The code ran too long and was interrupted. Your earlier variables are still there:"
    elif status is None:
        lead = "The code did not succeed:"
    else:
        lead = "The code did not succeed. Here is what happened:"
    if status is not None:  # an execution's report: its first line is the status, said above
        first_line, _, details = output.partition("\n")
        output = fence(details.strip() or first_line, "text")
    return {
        "thought": "Report the CodeInterpreter's result to the user as it is.",
        "plan": ["Run the work", "Report the result"],
        "current_plan_step": "Report the result",
        "send_to": "User",
        "message": f"{lead}\n\n{output}" if output else lead,
    }
