"""The answer to the user, followed from the engine's events (no Chainlit here, so it tests alone)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core import TaskWeaverEvent

USER = "User"


def event_value(enum_or_str: Any) -> str:
    """Event and attachment types are str enums in core; compare by value to stay loosely coupled."""
    return str(getattr(enum_or_str, "value", enum_or_str))


def is_cancel_error(msg: str) -> bool:
    """True for the post error core reports when a cancel stopped a post (not a real failure)."""
    return "cancelled" in msg.lower()


@dataclass
class AnswerDraft:
    """The answer to the user: the message of the one post currently addressed to User.

    Core may address a post to User while the model streams, then find the answer unusable: the
    post gets an error and is readdressed to its own role before a fresh post retries. Its text is
    then withdrawn (``withdrawn`` tells the renderer to take back what it already showed), so the
    answer never mixes two attempts. ``apply`` takes core's ``TaskWeaverEvent``s as they come.
    """

    post_id: str | None = None
    text: str = ""
    shown: int = 0
    withdrawn: bool = False
    _messages: dict[str, str] = field(default_factory=dict)

    def apply(self, event: TaskWeaverEvent) -> None:
        """Follow one post event (other events are ignored)."""
        t = event_value(event.t)
        post_id = event.post_id
        if not post_id or not t.startswith("post_"):
            return
        extra = event.extra if isinstance(event.extra, dict) else {}
        if t == "post_message_update" and extra.get("replace"):
            self._messages[post_id] = event.msg or ""
            if post_id == self.post_id:  # take back what was shown, then show the corrected text
                self._withdraw()
                self.post_id, self.text = post_id, event.msg or ""
        elif t == "post_message_update":
            self._messages[post_id] = self._messages.get(post_id, "") + (event.msg or "")
            if post_id == self.post_id:
                self.text += event.msg or ""
        elif t == "post_send_to_update":
            to_user = str(extra.get("role") or "") == USER
            if to_user and post_id != self.post_id:
                self._withdraw()
                self.post_id = post_id
                self.text = self._messages.get(post_id, "")
            elif not to_user and post_id == self.post_id:
                self._withdraw()
        elif t == "post_error" and post_id == self.post_id and not is_cancel_error(event.msg or ""):
            self._withdraw()

    def pending(self) -> str:
        """Answer text not shown yet."""
        return self.text[self.shown :]

    def mark_shown(self) -> None:
        self.shown = len(self.text)

    def _withdraw(self) -> None:
        if self.shown:
            self.withdrawn = True
        self.post_id = None
        self.text = ""
        self.shown = 0
