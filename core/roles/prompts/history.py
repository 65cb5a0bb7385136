"""The chat history each role's model sees: recent rounds and the current one, as chat messages."""

from __future__ import annotations

import json
import re

from core.memory import AttachmentType, Post, Round

HISTORY_ROUNDS = 8
_NUMBERING = re.compile(r"^\d+\.\s*")
# Every request re-sends the recent turns; ``json.dumps`` with an option builds an encoder each call.
_TURN_JSON = json.JSONEncoder(ensure_ascii=False)


def planner_turn(post: Post) -> str:
    """A Planner post as the JSON it would have written."""
    return _TURN_JSON.encode(
        {
            "thought": post.first(AttachmentType.thought, ""),
            "plan": [
                _NUMBERING.sub("", line) for line in str(post.first(AttachmentType.plan, "")).splitlines() if line
            ],
            "current_plan_step": post.first(AttachmentType.current_plan_step, ""),
            "send_to": post.send_to,
            "message": post.message,
        }
    )


def code_turn(post: Post) -> str:
    """A CodeInterpreter post as the JSON it would have written."""
    code = post.first(AttachmentType.reply_content, "")
    kind = "python" if post.get_attachment(AttachmentType.execution_status) else "text"
    return _TURN_JSON.encode(
        {"thought": post.first(AttachmentType.thought, ""), "reply_type": kind, "reply_content": code or post.message}
    )


def recent_posts(history: list[Round], current: Round) -> list[Post]:
    """Posts of the last rounds and the current one, without answers the model could not use."""
    # A failed or cancelled round may end in a post cut short: keep only what the user asked.
    posts = [p for r in history[-HISTORY_ROUNDS:] for p in (r.post_list if r.state == "finished" else r.post_list[:1])]
    return usable_posts(posts + current.post_list)


def usable_posts(posts: list[Post]) -> list[Post]:
    """``posts`` without answers the model could not use."""
    return [p for p in posts if not p.get_attachment(AttachmentType.invalid_response)]
