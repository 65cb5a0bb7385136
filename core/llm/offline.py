"""The offline default backend: deterministic, no network, same JSON protocol as a real model.

It acts only on what it can act on honestly: a fenced Python block is run as is, added files are
profiled by generated code, and anything else gets a reply saying what offline mode can do.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Iterator

from core.cancel import CancelToken
from core.llm.base import ChatRequest, LLMBackend
from core.llm.content import text_of
from core.llm.offline_profile import profile_code
from core.text import fence

if TYPE_CHECKING:
    from core.datasets import Dataset

CHUNK_CHARS = 24

OFFLINE_HELP = """I'm running in **offline mode**: no language model is configured, so I can't understand \
free-form requests. Here is what works right now:

- **Run Python**: send a message with a fenced code block (three backticks and `python`). It runs in \
your own kernel, and variables persist between messages.
- **Profile files**: add CSV, TSV, Excel, JSON, Parquet, image or text files (drop them on the web chat, or \
`/file PATH` in `weaver chat`) and I'll load and describe them.

To chat in plain language, configure a model: set `WEAVER_LLM__API_KEY` (and `WEAVER_LLM__API_BASE` / \
`WEAVER_LLM__MODEL` for other servers), or put `llm.api_key` in `taskweaver_config.json`. See the README."""


FIND_HELP = "- **Search your documents**: send `find <words> in my documents` or `search my documents for <words>`."

OFFLINE_CANNOT_FIX = "Offline mode runs code as written and cannot fix it: edit the code and send it again."

# "profile sales_2024" as the whole of the user's message (a command, like a fenced code block).
ECHO_COMMAND = re.compile(r"^\s*echo\b[\s:]*(.+)$", re.IGNORECASE | re.DOTALL)
# "search the web for X" / "web search: X" with the WebSearch role registered.
SEARCH_COMMAND = re.compile(r"^\s*(?:search\s+the\s+web\s+for|web\s+search)\b[\s:]*(.+)$", re.IGNORECASE | re.DOTALL)
# "read <url>" / "open <url>" with the WebExplorer role registered.
EXPLORE_COMMAND = re.compile(r"^\s*(?:read|open|explore)\s+(\S+://\S+)\s*$", re.IGNORECASE)
CODE_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n(.*?)```", re.DOTALL)
# "find the refund policy in my documents", "search my files for refunds": to DocumentRetriever.
FIND_IN_DOCUMENTS = re.compile(
    r"^\s*(?:please\s+)?(?:find|search(?:\s+for)?|look\s+(?:up|for)|retrieve)\s+(?P<query>.+?)\s+"
    r"(?:in|from|across|within)\s+(?:my|the|our)\s+(?:documents|docs|files|uploads|notes|data)\s*[.?!]?\s*$"
    r"|^\s*(?:please\s+)?search\s+(?:my|the|our)\s+(?:documents|docs|files|uploads|notes|data)\s+for\s+"
    r"(?P<query2>.+?)\s*[.?!]?\s*$",
    re.IGNORECASE | re.DOTALL,
)
IMAGE_NAME = re.compile(r"(?<![\w./-])[\w./-]{1,255}\.(?:png|jpe?g|gif|webp)\b", re.IGNORECASE)
PROFILE_COMMAND = re.compile(r"^\s*profile\s+([A-Za-z_][A-Za-z0-9_]*)\s*[.!]?\s*$", re.IGNORECASE)


class OfflineBackend(LLMBackend):
    name = "offline"

    def revises_code(self) -> bool:
        """It runs code as written: a failure goes back to the user, never to a revision."""
        return False

    def __init__(self, datasets: list[Dataset] | None = None) -> None:
        self.datasets = {d.name.lower(): d for d in datasets or []}

    def stream_chat(self, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        if request.hints.get("stage") == "compress":  # prompt compression's summary call: plain text
            yield from self._chunks(compress_answer(request.hints), request, cancel)
            return
        if request.role == "experience":  # a saved chat's tip (core/experience.py): plain text, not JSON
            yield from self._chunks(experience_tip(request.hints), request, cancel)
            return
        if request.role == "Planner":
            answer = self.dataset_answer(request) or self.planner_answer(request.hints)
        elif "command" in request.hints:  # a role answering with a shell command line
            answer = self.command_answer(request.hints)
        else:
            answer = self.code_answer(request.hints)
        if answer.get("send_to") == "User" and self.datasets and answer.get("message") == OFFLINE_HELP:
            answer = {**answer, "message": f"{OFFLINE_HELP}\n\n{self._datasets_help()}"}
        if answer.get("send_to") == "User" and "DocumentRetriever" in (request.hints.get("workers") or []):
            if str(answer.get("message", "")).startswith(OFFLINE_HELP):
                answer = {**answer, "message": f"{answer['message']}\n\n{FIND_HELP}"}
        examples = hints_examples(request.hints)
        if examples:  # a model would learn from them; offline, the thought at least says which it was shown
            answer = {**answer, "thought": f"{answer.get('thought', '')} (Examples in my prompt: {examples}.)".strip()}
        tips = ", ".join(str(t) for t in request.hints.get("experience") or [])
        if tips:  # likewise the experience tips it was given
            thought = f"{answer.get('thought', '')} (Experience tips in my prompt: {tips}.)"
            answer = {**answer, "thought": thought.strip()}
        yield from self._chunks(json.dumps(answer, ensure_ascii=False), request, cancel)

    @staticmethod
    def _chunks(text: str, request: ChatRequest, cancel: CancelToken) -> Iterator[str]:
        assert request.record is not None
        request.record.model = "offline"
        for start in range(0, len(text), CHUNK_CHARS):
            cancel.raise_if_cancelled()
            yield text[start : start + CHUNK_CHARS]

    def dataset_answer(self, request: ChatRequest) -> dict[str, Any] | None:
        """A user's "profile <dataset name>": the CodeInterpreter profiles that project dataset like
        an upload. The command is the user's whole message, the last turn of the request."""
        hints = request.hints
        if hints.get("stage") != "request" or hints.get("code_blocks") or hints.get("files_added"):
            return None
        if not self.datasets or not request.messages or request.messages[-1].get("role") != "user":
            return None
        text = text_of(request.messages[-1].get("content"))
        message = text.split(":", 1)[1] if text.startswith("From User:") else text
        match = PROFILE_COMMAND.match(message)
        dataset = self.datasets.get(match.group(1).lower()) if match else None
        if dataset is None:
            return None
        code = profile_code([dataset.path], {dataset.path: dataset.name})
        return {
            "thought": f"The user asked to profile the project dataset {dataset.name}; the CodeInterpreter runs "
            "the profiling code.",
            "plan": [f"Load and profile the dataset {dataset.name}", "Report what it contains"],
            "current_plan_step": f"Load and profile the dataset {dataset.name}",
            "send_to": "CodeInterpreter",
            "message": f"Please profile the dataset {dataset.name} by running this code exactly as written:\n"
            f"{fence(code, 'python')}",
        }

    def _datasets_help(self) -> str:
        names = list(self.datasets.values())
        shown = ", ".join(f"`{d.name}`" for d in names[:10])
        if len(names) > 10:
            shown += f" and {len(names) - 10} more"
        return f"- **Profile a project dataset**: send `profile <name>`, e.g. `profile {names[0].name}` ({shown})."

    @staticmethod
    def command_answer(hints: dict[str, Any]) -> dict[str, Any]:
        """The command the Planner's message holds (a fenced block, else its text), run as written."""
        text = str(hints.get("command") or "")
        blocks = CODE_FENCE.findall(text)
        command = blocks[0].strip() if blocks else text.strip()
        return {"thought": "Run the command as written.", "command": command}

    @staticmethod
    def planner_answer(hints: dict[str, Any]) -> dict[str, Any]:
        if hints.get("stage") == "worker_reply":
            if hints.get("execution_status") is None and hints.get("worker") != "CodeInterpreter":
                return _relay(hints)
            return _report(hints)
        echoed = _echo_request(hints) or _retrieval_request(hints) or _search_request(hints) or _explore_request(hints)
        if echoed is not None:
            return echoed
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
        image = _image_request(hints, files)
        if image is not None:
            return image
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
                "reply_content": str(hints["previous_error"]),
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


def compress_answer(hints: dict[str, Any]) -> str:
    """A summary with no model: the previous one, then each folded round's request and outcome."""
    lines = [str(hints.get("previous_summary") or "").strip()]
    for rnd in hints.get("rounds") or []:
        query = " ".join(str(rnd.get("user_query", "")).split())
        outcome = {"failed": "it failed", "cancelled": "it was cancelled"}.get(str(rnd.get("state")))
        reply = " ".join(str(rnd.get("reply", "")).split())
        if outcome is None:
            outcome = f"answered: {_clip(reply)}" if reply else "no answer"
        lines.append(f"- The user asked: {_clip(query)} ({outcome})")
    return "\n".join(line for line in lines if line)


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def experience_tip(hints: dict[str, Any]) -> str:
    """A saved chat's tip with no model: its requests, and the code that ran without error."""
    queries = [str(q) for q in hints.get("queries") or []]
    code = [str(c) for c in hints.get("code") or []]
    lines = ["Requests of this chat: " + "; ".join(queries) if queries else "This chat had no request in words."]
    if code:
        lines.append("Code that ran without error:")
        lines.append(fence("\n\n".join(code[-3:]), "python"))
    else:
        lines.append("No code ran without error in this chat.")
    return "\n".join(lines)


def hints_examples(hints: dict[str, Any]) -> str:
    """The example conversations a role's prompt held (``hints["examples"]``, file names), listed."""
    names = hints.get("examples") or []
    return ", ".join(str(n) for n in names)


def _echo_request(hints: dict[str, Any]) -> dict[str, Any] | None:
    """ "echo <text>" with the Echo role registered: Echo is sent the text."""
    match = ECHO_COMMAND.match(str(hints.get("request") or ""))
    if match is None or "Echo" not in (hints.get("workers") or []):
        return None
    return {
        "thought": "The user asked for an echo; the Echo role repeats the text.",
        "plan": ["Have Echo repeat the text", "Tell the user what it said"],
        "current_plan_step": "Have Echo repeat the text",
        "send_to": "Echo",
        "message": match.group(1).strip(),
    }


def _retrieval_request(hints: dict[str, Any]) -> dict[str, Any] | None:
    """ "find <words> in my documents" with DocumentRetriever registered: it is sent the words."""
    request = str(hints.get("request") or "")
    head, newline, rest = request.partition("\n")
    if newline and head.startswith("files added: "):  # core/files.py's note before the user's words
        request = rest
    match = FIND_IN_DOCUMENTS.match(request)
    if match is None or "DocumentRetriever" not in (hints.get("workers") or []):
        return None
    query = (match.group("query") or match.group("query2") or "").strip()
    return {
        "thought": "The user asked to find something in their documents; DocumentRetriever searches them.",
        "plan": ["Have DocumentRetriever find the passages", "Tell the user what it found"],
        "current_plan_step": "Have DocumentRetriever find the passages",
        "send_to": "DocumentRetriever",
        "message": query,
    }


def _search_request(hints: dict[str, Any]) -> dict[str, Any] | None:
    """ "search the web for <query>" with the WebSearch role registered: WebSearch is sent the query."""
    match = SEARCH_COMMAND.match(str(hints.get("request") or ""))
    if match is None or "WebSearch" not in (hints.get("workers") or []):
        return None
    return {
        "thought": "The user asked for a web search; the WebSearch role asks the search engine.",
        "plan": ["Have WebSearch search the web", "Tell the user what it found"],
        "current_plan_step": "Have WebSearch search the web",
        "send_to": "WebSearch",
        "message": match.group(1).strip(),
    }


def _explore_request(hints: dict[str, Any]) -> dict[str, Any] | None:
    """ "read <url>" with the WebExplorer role registered: WebExplorer is sent the URL."""
    match = EXPLORE_COMMAND.match(str(hints.get("request") or ""))
    if match is None or "WebExplorer" not in (hints.get("workers") or []):
        return None
    return {
        "thought": "The user asked for a page to be read; the WebExplorer role fetches it.",
        "plan": ["Have WebExplorer read the page", "Tell the user what it says"],
        "current_plan_step": "Have WebExplorer read the page",
        "send_to": "WebExplorer",
        "message": f"Read {match.group(1)}",
    }


def _image_request(hints: dict[str, Any], files: list[str]) -> dict[str, Any] | None:
    """With ImageReader registered: an image the request names, else one just added, goes to it."""
    if "ImageReader" not in (hints.get("workers") or []):
        return None
    named = IMAGE_NAME.search(str(hints.get("request") or ""))
    added = [f for f in files if IMAGE_NAME.fullmatch(f)]
    name = named.group(0) if named is not None else (added[0] if added else None)
    if name is None:
        return None
    return {
        "thought": "The request is about an image; ImageReader reads it.",
        "plan": [f"Have ImageReader read {name}", "Tell the user what it said"],
        "current_plan_step": f"Have ImageReader read {name}",
        "send_to": "ImageReader",
        "message": f"What does the image {name} show?",
    }


def _relay(hints: dict[str, Any]) -> dict[str, Any]:
    """A worker that ran no code (Echo, or one that refused): its words go to the user as they are."""
    worker = hints.get("worker") or "the worker"
    return {
        "thought": f"Report what {worker} said to the user.",
        "plan": ["Ask the worker", "Report its answer"],
        "current_plan_step": "Report its answer",
        "send_to": "User",
        "message": f"{worker} answered:\n\n{fence(str(hints.get('worker_message', '')), 'text')}",
    }


def _report(hints: dict[str, Any]) -> dict[str, Any]:
    """The CodeInterpreter's report, told to the user. Its text is program output (tables, a
    traceback's rows of dashes): it always goes in a fenced block, never into live Markdown."""
    status = hints.get("execution_status")
    output = str(hints.get("worker_message", "")).strip()
    note = ""
    if status == "success":
        lead = "Done. Here is what the code produced:"
    elif status == "timeout":
        lead = "The code ran too long and was interrupted. Your earlier variables are still there:"
    else:  # a failure, or the CodeInterpreter's words about one (status None)
        lead = "The code did not succeed. Here is what happened:"
        note = OFFLINE_CANNOT_FIX
    if status is not None:  # an execution's report: its first line is the status, said above
        first_line, _, details = output.partition("\n")
        output = details.strip() or first_line
    message = f"{lead}\n\n{fence(output, 'text')}" if output else lead
    return {
        "thought": "Report the CodeInterpreter's result to the user as it is.",
        "plan": ["Run the work", "Report the result"],
        "current_plan_step": "Report the result",
        "send_to": "User",
        "message": f"{message}\n\n{note}" if note else message,
    }
