"""Prompts of our own for the Planner and the CodeInterpreter, and the chat history each one sees."""

from __future__ import annotations

import json
import re

from core.memory import AttachmentType, Post, Round
from core.roles.protocol import CODE_FORMAT, CODE_INTERPRETER, PLANNER, PLANNER_FORMAT

HISTORY_ROUNDS = 8
_NUMBERING = re.compile(r"^\d+\.\s*")

PLANNER_SYSTEM = """You are the Planner of Weaver, a code-first data agent.
You talk with the User and with the CodeInterpreter, a worker that writes Python and runs it in a \
stateful Jupyter kernel whose working folder holds the user's files (variables persist between turns).
- Break the user's request into a short plan of steps.
- Send the CodeInterpreter one clear instruction at a time for anything that needs code, data or files.
- Answer the User when the work is done or when the request needs no code.
- Never invent results: report only what the CodeInterpreter returned, including errors.
Files in the working folder: {files}
Plugins the CodeInterpreter can call: {plugins}
Answer with only one JSON object, with the fields in this order:
{format}"""

CODE_SYSTEM = """You are the CodeInterpreter of Weaver. The Planner sends you instructions; you answer \
with Python code that runs in a stateful Jupyter kernel.
- The working folder holds the user's files: use relative paths. Variables persist between executions.
- Show results by printing them or leaving an expression on the last line; a matplotlib figure is \
captured as an image.
- Do not install packages and do not read or write outside the working folder.
- Use reply_type "text" only when no code is needed.
Files in the working folder: {files}
Plugins already loaded as callables in the kernel:
{plugins}
Answer with only one JSON object, with the fields in this order:
{format}"""


def _planner_turn(post: Post) -> str:
    """A Planner post as the JSON it would have written."""
    return json.dumps(
        {
            "thought": post.first(AttachmentType.thought, ""),
            "plan": [_NUMBERING.sub("", line) for line in str(post.first(AttachmentType.plan, "")).splitlines() if line],
            "current_plan_step": post.first(AttachmentType.current_plan_step, ""),
            "send_to": post.send_to,
            "message": post.message,
        },
        ensure_ascii=False,
    )


def _code_turn(post: Post) -> str:
    code = post.first(AttachmentType.reply_content, "")
    kind = "python" if post.get_attachment(AttachmentType.execution_status) else "text"
    return json.dumps(
        {"thought": post.first(AttachmentType.thought, ""), "reply_type": kind, "reply_content": code or post.message},
        ensure_ascii=False,
    )


def _recent_posts(history: list[Round], current: Round) -> list[Post]:
    # A failed or cancelled round may end in a post cut short: keep only what the user asked.
    posts = [p for r in history[-HISTORY_ROUNDS:] for p in (r.post_list if r.state == "finished" else r.post_list[:1])]
    return posts + current.post_list


def _system(template: str, files: list[str], plugins: str, reply_format: str) -> dict[str, str]:
    text = template.format(files=", ".join(files) or "(none)", plugins=plugins or "(none)", format=reply_format)
    return {"role": "system", "content": text}


def planner_messages(history: list[Round], current: Round, files: list[str], plugins: str) -> list[dict[str, str]]:
    messages = [_system(PLANNER_SYSTEM, files, plugins, PLANNER_FORMAT)]
    for post in _recent_posts(history, current):
        if post.get_attachment(AttachmentType.invalid_response):
            continue
        if post.send_from == PLANNER:
            messages.append({"role": "assistant", "content": _planner_turn(post)})
        elif post.send_to == PLANNER:
            messages.append({"role": "user", "content": f"From {post.send_from}: {post.message}"})
    return messages


def code_messages(history: list[Round], current: Round, files: list[str], plugins: str) -> list[dict[str, str]]:
    messages = [_system(CODE_SYSTEM, files, plugins, CODE_FORMAT)]
    for post in _recent_posts(history, current):
        if post.get_attachment(AttachmentType.invalid_response):
            continue
        if post.send_from == PLANNER and post.send_to == CODE_INTERPRETER:
            messages.append({"role": "user", "content": f"From Planner: {post.message}"})
        elif post.send_from == CODE_INTERPRETER:
            messages.append({"role": "assistant", "content": _code_turn(post)})
            if post.get_attachment(AttachmentType.execution_status):
                note = post.message
                if post.send_to == CODE_INTERPRETER:
                    note += "\nThe code failed. Fix it and answer again with corrected code."
                messages.append({"role": "user", "content": f"Execution result:\n{note}"})
    return messages

