"""A code role waiting for the user's Run / Edit / Cancel (``core.approval``), the same for the
CodeInterpreter and the code-running roles shipped in ``core/roles/`` (``worker.py``)."""

from __future__ import annotations

from typing import Callable

from core.approval import ApprovalGate, Decision
from core.cancel import CancelToken
from core.events import PostEventProxy
from core.memory import PostStatus
from core.roles.protocol import USER


def approved_code(
    gate: ApprovalGate,
    proxy: PostEventProxy,
    code: str,
    timeout: float,
    cancel: CancelToken,
    on_edit: Callable[[str], None] | None = None,
) -> str | None:
    """Wait for the user's answer to ``code``: the code to run (``on_edit`` sees an edit first), or
    None, the post then saying why nothing ran and the round going back to the user. Stop raises
    ``RoundCancelled`` from the wait."""
    proxy.update_status(PostStatus.awaiting_approval)
    proxy.request_approval(code, timeout)
    answer = gate.wait(proxy.post.id, timeout, cancel)
    if answer.decision is Decision.RUN:
        return code
    if answer.decision is Decision.EDIT and answer.code is not None:
        if on_edit is not None:
            on_edit(answer.code)
        return answer.code
    if answer.decision is Decision.TIMED_OUT:
        said = (
            f"Nobody approved the code within {timeout:g} s (code_interpreter.confirmation_timeout), so it was not run."
        )
    else:
        said = "You cancelled the code, so nothing was run."
    proxy.update_message(said, is_end=True)
    proxy.update_send_to(USER)
    return None
