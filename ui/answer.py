"""The answer to the user, followed from the engine's events (no Chainlit here, so it tests alone)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core import MessageChunk, PostEventType, RoleName, SendToUpdated, TaskWeaverEvent


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
        t = event.t
        post_id = event.post_id
        if not post_id or not isinstance(t, PostEventType):
            return
        payload = event.payload
        if t == PostEventType.post_message_update and isinstance(payload, MessageChunk) and payload.replace:
            self._messages[post_id] = event.msg or ""
            if post_id == self.post_id:  # take back what was shown, then show the corrected text
                self._withdraw()
                self.post_id, self.text = post_id, event.msg or ""
        elif t == PostEventType.post_message_update:
            self._messages[post_id] = self._messages.get(post_id, "") + (event.msg or "")
            if post_id == self.post_id:
                self.text += event.msg or ""
        elif t == PostEventType.post_send_to_update:
            to_user = isinstance(payload, SendToUpdated) and payload.role == RoleName.User
            if to_user and post_id != self.post_id:
                self._withdraw()
                self.post_id = post_id
                self.text = self._messages.get(post_id, "")
            elif not to_user and post_id == self.post_id:
                self._withdraw()
        elif t == PostEventType.post_error and post_id == self.post_id:
            self._withdraw()  # core reports no error for a cancel: an error means the answer is unusable

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
