"""Code approval: generated code waits for the user's Run, Edit or Cancel before it runs.

Opt-in (``code_interpreter.require_confirmation``, TaskWeaver's key, or ``Session.set_code_approval``
for one chat). The CodeInterpreter asks the session's ``ApprovalGate`` after verification; the gate
emits nothing itself (the role emits ``post_approval_request`` with an ``ApprovalRequested``
payload) and waits on the engine's thread until the UI calls ``Session.approve`` from another
thread, the round is cancelled (Stop) or ``code_interpreter.confirmation_timeout`` passes.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from enum import Enum

from core.cancel import CancelToken, RoundCancelled

MAX_EDITED_CHARS = 200_000  # an edited cell longer than this is refused (the browser sends it)
_FENCED = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def edited_code(text: str) -> str:
    """The cell a user sent as their edit: the first fenced block if they fenced it, else all of it."""
    found = _FENCED.search(text)
    return (found.group(1) if found else text).strip("\n")


class Decision(Enum):
    RUN = "run"  # run the code as the model wrote it
    EDIT = "edit"  # run ``Approval.code`` instead (the user's edit)
    CANCEL = "cancel"  # run nothing; the round ends saying so
    TIMED_OUT = "timed_out"  # nobody answered within code_interpreter.confirmation_timeout


@dataclass(frozen=True)
class Approval:
    decision: Decision
    code: str | None = None  # with EDIT: the code to run


class ApprovalGate:
    """One pending question at a time per session (rounds never overlap), keyed by the post's id so
    that a late answer to an earlier question is not taken for the current one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: str | None = None
        self._answer: Approval | None = None

    @property
    def pending(self) -> str | None:
        """The post whose code waits for an answer, if any."""
        return self._pending

    def wait(self, post_id: str, timeout: float, cancel: CancelToken) -> Approval:
        """Block until ``answer(post_id, ...)``, Stop (``RoundCancelled``) or ``timeout`` seconds."""
        with self._cond:
            self._pending, self._answer = post_id, None
        forget = cancel.on_cancel(self._wake)
        deadline = time.monotonic() + timeout
        try:
            with self._cond:
                while self._answer is None:
                    if cancel.cancelled:
                        raise RoundCancelled("the round was cancelled while its code waited for approval")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return Approval(Decision.TIMED_OUT)
                    self._cond.wait(left)
                return self._answer
        finally:
            forget()
            with self._cond:
                self._pending, self._answer = None, None

    def answer(self, post_id: str, approval: Approval) -> bool:
        """The user's answer; False (nothing changes) when no code of that post is waiting."""
        code = approval.code
        if approval.decision is Decision.EDIT and (code is None or not code.strip() or len(code) > MAX_EDITED_CHARS):
            raise ValueError(f"an edited cell must be code of at most {MAX_EDITED_CHARS} characters")
        with self._cond:
            if self._pending != post_id or self._answer is not None:
                return False
            self._answer = approval
            self._cond.notify_all()
            return True

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
