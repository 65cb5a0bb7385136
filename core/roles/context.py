"""What a role sees of the round it is working in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from core.approval import ApprovalGate
from core.cancel import CancelToken
from core.events import EventEmitter
from core.memory import Post, Round
from core.tracing import Tracing


class RoundFailed(Exception):
    """The round cannot go on; the message is shown to the user as the reason."""


@dataclass
class RoundContext:
    session_id: str
    round: Round
    history: list[Round]
    emitter: EventEmitter
    cancel: CancelToken
    cwd: Path
    session_vars: dict[str, str]
    files_added: list[str] = field(default_factory=list)
    code_failures: int = 0
    tracing: Tracing = field(default_factory=Tracing)  # the app's; by default no spans
    approvals: ApprovalGate | None = None  # set when code waits for the user's approval before it runs

    def trace_attributes(self) -> dict[str, str | None]:
        """What the round's span names (its children share its trace): the chat (its Weaver session),
        the round, the user."""
        return {
            "weaver.session.id": self.session_id,
            "weaver.round.id": self.round.id,
            "enduser.id": self.session_vars.get("user_name"),
        }

    @property
    def last_post(self) -> Post:
        return self.round.post_list[-1]

    def cwd_files(self, limit: int = 50) -> list[str]:
        """Names of the files in the working folder, for the prompts."""
        try:
            with os.scandir(self.cwd) as entries:  # a link is not followed (nor named): user code makes them
                names = sorted(
                    e.name for e in entries if e.is_file(follow_symlinks=False) and not e.name.startswith(".")
                )
        except OSError:
            return []
        return names[:limit]
