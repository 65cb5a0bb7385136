"""Talking to a running kernel over its channels: silent bookkeeping calls and Weaver's runtime.

Bookkeeping code runs without history or output. The runtime (``core.plugins.runtime``, imported
inside the kernel) loads plugins, receives each execution's id and session variables, and reports
what plugins recorded.
"""

from __future__ import annotations

import ast
import json
import queue
import threading
import time
from typing import Any

from core.execution.handle import KernelHandle

POLL_SECONDS = 0.1  # one wait alone; with many waiting, up to MAX_POLL_SECONDS
MAX_POLL_SECONDS = 1.0
WAITS_PER_POLL_STEP = 20  # every 20 more waits in the process add 0.1 s to each one's poll
SILENT_TIMEOUT_SECONDS = 30.0
NO_REPLY_GRACE_SECONDS = 1.0
UNCLAIMED_KEPT = 8  # after the idle status, how long a missing reply is waited for


class _Waiting:
    """How many threads of this process wait on a kernel now (a user's run, a bookkeeping call).

    Each wait wakes up every poll to look at its deadline, its cancel and its kernel. When kernels
    fall behind (a crowd), more waits pile up, and at a fixed rate their wake-ups took the CPU the
    kernels needed to catch up, so more piled up still: the waits slow their polls as they grow."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> None:
        with self._lock:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1


WAITING = _Waiting()


def poll_seconds(waiting: int) -> float:
    """How long one wait listens before it looks again: ``POLL_SECONDS`` alone, longer with many
    waiting, so that their wake-ups together stay about as many as 20 waits make."""
    return min(MAX_POLL_SECONDS, POLL_SECONDS * max(1.0, waiting / WAITS_PER_POLL_STEP))


_RUNTIME = "__import__('core.plugins.runtime', fromlist=['bootstrap'])"
_COLLECT = "weaver_collect"
_COLLECT_CODE = f"{_RUNTIME}.collect()"
# The session folder goes on sys.path last, only after Weaver's runtime is imported: an uploaded
# pandas.py or core.py never shadows the real module, an uploaded mymodule.py still imports.
_CWD_LAST = (
    "(__import__('sys').path.remove('') if '' in __import__('sys').path else None, __import__('sys').path.append(''))"
)
# Threads alive before an execution, so the ones it started can be found when it times out.
_MARK_THREADS = (
    "__import__('sys').__dict__.__setitem__('_weaver_threads', {t.ident for t in __import__('threading').enumerate()})"
)
_NEW_THREADS = (
    "str(sum(t.is_alive() and t.ident not in __import__('sys').__dict__.get('_weaver_threads', ())"
    " for t in __import__('threading').enumerate()))"
)


class KernelDiedError(RuntimeError):
    """The kernel process exited while we were waiting for it."""


class KernelRPC:
    """Calls into the kernel ``process`` currently runs (it changes when the kernel is restarted)."""

    def __init__(self, process: KernelHandle) -> None:
        self.process = process
        # Replies read while waiting for another one, kept (a few) for ``replies`` to find.
        self._unclaimed: dict[str, dict[str, Any]] = {}

    def _keep(self, reply: dict[str, Any]) -> None:
        parent = reply.get("parent_header", {}).get("msg_id")
        if parent:
            self._unclaimed[parent] = reply["content"]
            while len(self._unclaimed) > UNCLAIMED_KEPT:
                del self._unclaimed[next(iter(self._unclaimed))]

    # ----- Weaver's runtime in the kernel ------------------------------------------------------

    def bootstrap(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Shell settings and plugins; returns the runtime's report (``loaded``, ``errors``)."""
        arg = json.dumps(payload, default=str)
        answer = self.silent_value(f"({_RUNTIME}, {_CWD_LAST}, {_RUNTIME}.bootstrap({arg!r}))[2]")
        report = json.loads(answer)
        return report if isinstance(report, dict) else {}

    def begin_execution(self, payload: dict[str, Any]) -> None:
        """Push the execution id and session vars (plugins read them) and mark the live threads."""
        self.silent(self._begin_code(payload))

    def send_begin_execution(self, payload: dict[str, Any]) -> str:
        """``begin_execution`` without waiting for its reply (the kernel runs requests in order, so
        the user code sent next sees it); returns the request's msg_id for ``replies``."""
        code = self._begin_code(payload)
        return str(self._client().execute(code, silent=True, store_history=False, allow_stdin=False))

    @staticmethod
    def _begin_code(payload: dict[str, Any]) -> str:
        return f"{_RUNTIME}.begin_execution({json.dumps(payload)!r})\n{_MARK_THREADS}"

    def collect(self) -> dict[str, Any]:
        """Artifacts and logs plugins recorded during this execution."""
        report = json.loads(self.silent_value(f"{_RUNTIME}.collect()"))
        return report if isinstance(report, dict) else {}

    def threads_started(self) -> int:
        """Threads the last execution started that still run (an interrupt stops only the main one)."""
        return int(self.silent_value(_NEW_THREADS))

    # ----- channels ----------------------------------------------------------------------------

    def execute(self, code: str) -> str:
        """Send user code (with history and output); returns the request's msg_id.

        What plugins recorded comes back in the same reply (``collected``): IPython evaluates
        ``user_expressions`` after a cell that succeeded, which saves a round trip per execution.
        """
        kc = self._client()
        return str(
            kc.execute(
                code, silent=False, store_history=True, allow_stdin=False, user_expressions={_COLLECT: _COLLECT_CODE}
            )
        )

    def replies(self, msg_ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        """The shell replies (content) to ``msg_ids`` already sent or arriving within ``timeout``."""
        kc = self._client()
        found = {m: self._unclaimed.pop(m) for m in msg_ids if m in self._unclaimed}
        deadline = time.monotonic() + timeout
        while len(found) < len(msg_ids):
            try:
                reply = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            parent = reply.get("parent_header", {}).get("msg_id")
            if parent in msg_ids:
                found[parent] = reply["content"]
            else:
                self._keep(reply)
        return found

    @staticmethod
    def collected(content: dict[str, Any]) -> dict[str, Any] | None:
        """What plugins recorded, from a user execution's reply; None when it was not evaluated."""
        value = content.get("user_expressions", {}).get(_COLLECT, {})
        if value.get("status") != "ok":
            return None
        report = json.loads(ast.literal_eval(value["data"]["text/plain"]))
        return report if isinstance(report, dict) else None

    def next_iopub(self, timeout: float = POLL_SECONDS) -> dict[str, Any] | None:
        try:
            return self._client().get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None

    def silent(self, code: str, user_expressions: dict[str, str] | None = None) -> dict[str, Any]:
        """Run bookkeeping code without history or output; returns the execute_reply content.

        A stray SIGINT can abort the kernel's handler so no reply ever comes; the idle status
        for our request still does, so it bounds the wait too.
        """
        kc = self.process.client
        if kc is None:
            raise KernelDiedError("no kernel is running")
        msg_id = kc.execute(
            code, silent=True, store_history=False, user_expressions=user_expressions or {}, allow_stdin=False
        )
        with WAITING:
            return self._silent_reply(kc, msg_id)

    def _silent_reply(self, kc: Any, msg_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + SILENT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                reply = kc.get_shell_msg(timeout=poll_seconds(WAITING.count))
            except queue.Empty:
                if not self.process.alive():
                    raise KernelDiedError("the kernel exited") from None
                if self._went_idle(msg_id):
                    deadline = min(deadline, time.monotonic() + NO_REPLY_GRACE_SECONDS)
                continue
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                self._keep(reply)
                continue
            content: dict[str, Any] = reply["content"]
            if content.get("status") != "ok":
                raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
            return content
        raise TimeoutError("the kernel did not answer a bookkeeping request")

    def silent_value(self, expression: str) -> str:
        """Evaluate an expression returning a str in the kernel, via user_expressions."""
        content = self.silent("pass", {"value": expression})
        value = content.get("user_expressions", {}).get("value", {})
        if value.get("status") != "ok":
            raise RuntimeError(f"{value.get('ename')}: {value.get('evalue')}")
        return str(ast.literal_eval(value["data"]["text/plain"]))

    def _went_idle(self, msg_id: str) -> bool:
        """Drain pending iopub messages; True if one says the kernel finished ``msg_id``."""
        while (msg := self.next_iopub(timeout=0)) is not None:
            if (
                msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["header"]["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                return True
        return False

    def _client(self) -> Any:
        kc = self.process.client
        assert kc is not None, "no kernel is running"
        return kc
