"""``weaver chat``: a session in the terminal, its events printed as they stream.

A message is one or more lines ended by an empty line (so code can be pasted). A line starting with
``/`` is a command, done at once: ``/file PATH`` adds files to the next message, ``/help`` and
``/quit``. Ctrl-C cancels a running round; Ctrl-D (or ``/quit``) says goodbye and quits.
"""

from __future__ import annotations

import argparse
import queue
import shlex
import sys
import threading
from pathlib import Path
from typing import Any, Literal, TextIO

from core import (
    AttachmentChunk,
    AttachmentType,
    EventPayload,
    ExecutionOutput,
    KernelQueued,
    MessageChunk,
    PostEventType,
    PostStarted,
    PostStatus,
    RoleName,
    RoundEnded,
    RoundEventType,
    SendToUpdated,
    Session,
    SessionEventHandler,
    TaskWeaverApp,
    TaskWeaverEvent,
    WeaverError,
)
from core.approval import Decision, edited_code
from core.errors import ConfigError
from core.events import ApprovalRequested
from core.startup_check import check_app_files
from core.workspace import default_app_dir
from ui.bridge import ThreadJob
from ui.view import queue_words, usage_summary

QUIET = {AttachmentType.reply_type, AttachmentType.revise_message}
OFFLINE_STATUS = "answering by Weaver's offline rules (no language model is configured)"
HELP = """\
Type a message and end it with an empty line; a ```python block runs as code in your kernel.
  /file PATH [PATH...]  add files to your next message (an empty message sends them alone)
  /again                run the last message again, from the variables before it (regenerate)
  /save                 save this chat as experience: a tip later chats with use_experience read
  /help                 this list
  /quit                 quit (so does Ctrl-D)
Ctrl-C stops a running round; your variables are kept.
With code approval on (code_interpreter.require_confirmation), code waits for [r]un, [e]dit or [c]ancel."""
FileEntry = dict[Literal["name", "path", "content"], Any]  # one of ``Session.send_message``'s files


class ConsoleEventHandler(SessionEventHandler):
    """Prints each post under its role and each streamed field under a label, as chunks arrive."""

    def __init__(self, out: TextIO = sys.stdout, color: bool | None = None, offline: bool = False) -> None:
        self.out = out
        self.color = out.isatty() if color is None else color
        self.offline = offline  # no language model: the status says what answers instead
        self._stream_key: tuple[str, str] | None = None
        self._send_to: dict[str, str] = {}
        self._has_output: set[str] = set()
        self.approvals: queue.Queue[tuple[str, ApprovalRequested]] = queue.Queue()  # for ``run_round`` to ask

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _stream(self, key: tuple[str, str], label: str, chunk: str, indent: str = "    ") -> None:
        """Print ``chunk`` under ``label``, opening the label when a new field starts."""
        if self._stream_key != key:
            self._stream_key = key
            self._write(f"\n{label}\n{indent}")
        self._write(chunk.replace("\n", "\n" + indent))

    def handle(self, event: TaskWeaverEvent) -> None:
        """Print one event; what it carries is read from its typed ``payload``."""
        if isinstance(event.t, RoundEventType):
            self._round(event.t, event.msg, event.payload)
        elif isinstance(event.t, PostEventType):
            self._post(event.t, event.msg, event.payload, event.post_id or "")

    def _round(self, type: RoundEventType, msg: str, payload: EventPayload | None) -> None:
        if type == RoundEventType.round_error:
            self._write("\n" + self._paint(f"error: {msg}", "31"))
        elif type == RoundEventType.round_end:
            self._stream_key = None
            state = payload.state if isinstance(payload, RoundEnded) else ""
            usage = payload.usage if isinstance(payload, RoundEnded) else None
            tokens = f" · {usage_summary(usage)}" if usage is not None and usage.reported else ""
            self._write("\n" + self._paint(f"[round {state}{tokens}]", "2") + "\n")

    def _post(self, type: PostEventType, msg: str, payload: EventPayload | None, post_id: str) -> None:
        if isinstance(payload, PostStarted):
            self._stream_key = None
            self._write("\n" + self._paint(f"── {payload.role}", "1;35"))
        elif isinstance(payload, SendToUpdated):
            self._send_to[post_id] = payload.role
        elif type == PostEventType.post_status_update:
            self._stream_key = None
            if self.offline and msg == PostStatus.calling_model:
                msg = OFFLINE_STATUS
            self._write("\n" + self._paint(f"  · {msg}", "2"))
        elif type == PostEventType.post_message_update:
            if not msg or post_id in self._has_output:  # a code post's message repeats its output
                return
            if isinstance(payload, MessageChunk) and payload.replace:  # the complete answer differs from what streamed
                self._stream_key = None
                key = (post_id, "corrected")
                self._stream(key, self._paint("  message (corrected):", "36"), msg)
            elif self._send_to.get(post_id) == RoleName.User:
                self._stream((post_id, "message"), self._paint("weaver>", "1;32"), msg, indent="")
            else:
                self._stream((post_id, "message"), self._paint("  message:", "36"), msg)
        elif isinstance(payload, KernelQueued):
            if payload.waiting:
                self._stream_key = None
                self._write("\n" + self._paint(f"  · waiting for a kernel: {queue_words(payload.position)}", "2"))
        elif isinstance(payload, ApprovalRequested):
            self._stream_key = None
            self.approvals.put((post_id, payload))
        elif isinstance(payload, ExecutionOutput):  # printed by the running code, as it comes
            text = f"[... {payload.skipped:,} characters not shown ...]\n{msg}" if payload.skipped else msg
            if payload.stream == "stderr":
                text = self._paint(text, "31")
            self._stream((post_id, "live"), self._paint("  printed:", "36"), text)
        elif isinstance(payload, AttachmentChunk):
            kind = payload.type
            if kind in QUIET or not msg:
                return
            if payload.replace:  # the user's edit of the code
                self._stream_key = None
                self._stream((post_id, f"{payload.id}-edited"), self._paint(f"  {kind.label} (your edit):", "36"), msg)
                return
            if kind == AttachmentType.execution_result:
                self._has_output.add(post_id)
            if kind == AttachmentType.table and isinstance(payload.data, dict):
                msg = table_text(payload.data)
            self._stream((post_id, payload.id), self._paint(f"  {kind.label}:", "36"), msg)
        elif type == PostEventType.post_error:
            self._write("\n" + self._paint(f"  error: {msg}", "31"))
        elif type == PostEventType.post_end:
            self._stream_key = None
            target = self._send_to.pop(post_id, "")
            if target and target != RoleName.User:
                self._write("\n" + self._paint(f"  → {target}", "2"))


def table_text(table: dict[str, Any], max_rows: int = 10) -> str:
    """A table payload as aligned plain text, its first rows and a line saying its shape."""
    columns = [str(c) for c in table.get("columns") or []]
    rows = [[str(v) for v in row] for row in (table.get("rows") or [])[:max_rows] if isinstance(row, list)]
    widths = [min(30, max([len(c)] + [len(r[i]) for r in rows if i < len(r)])) for i, c in enumerate(columns)]
    lines = ["  ".join(c[:30].ljust(w) for c, w in zip(columns, widths, strict=False))]
    lines += ["  ".join(v[:30].ljust(w) for v, w in zip(row, widths, strict=False)) for row in rows]
    shape = list(table.get("shape") or [len(rows), len(columns)]) + [0, 0]
    lines.append(f"({shape[0]} rows x {shape[1]} columns)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="weaver chat",
        description="Chat with Weaver in the terminal. In the chat, /help lists the commands (/file PATH adds files).",
    )
    parser.add_argument("--app-dir", help="project folder (plugins/, taskweaver_config.json, workspace/)")
    parser.add_argument("--file", action="append", default=[], help="add a file to the first message")
    args = parser.parse_args(argv)
    try:
        check_app_files(Path(args.app_dir) if args.app_dir else default_app_dir())
    except ConfigError as exc:
        print(f"weaver chat: {exc}", file=sys.stderr)
        return 1
    app = TaskWeaverApp(app_dir=args.app_dir)
    offline = app.config.llm.resolved_api_type == "offline"
    session = app.get_session()
    handler = ConsoleEventHandler(offline=offline)
    files: list[FileEntry] = []
    for path in args.file:
        _add_file(files, path)
    print(f"Weaver — session {session.session_id} (model: {app.config.llm.resolved_api_type}).")
    if offline:
        print("Offline mode: no language model. Fenced Python runs as written; files you add are profiled.")
    print("Type a message and end it with an empty line. /file PATH adds a file; /help lists the commands.")
    stdin = _StdinLines()
    try:
        while True:
            message = _read_message(stdin, files_waiting=bool(files))
            if message is None or message.strip() == "/quit":
                print("\nGoodbye.", flush=True)
                break
            if message.strip() == "/again":
                error = run_round(session, "", handler, [], stdin, again=True)
                if error is not None:
                    print(f"error: {error}", flush=True)
                continue
            if message.strip() == "/save":  # TaskWeaver's command
                _save_experience(app, session.session_id)
                continue
            if message.startswith("/"):
                _command(message, files)
                continue
            if not message.strip() and not files:
                continue
            error = run_round(session, message, handler, files, stdin)
            if error is not None:
                print(f"error: {error}", flush=True)
            files = []
    except KeyboardInterrupt:  # at the prompt, or a second Ctrl-C during a round
        print("\nGoodbye.", flush=True)
    finally:
        app.stop()
    return 0


def _save_experience(app: TaskWeaverApp, session_id: str) -> None:
    """``/save``: this chat summarised into an experience tip (core/experience.py)."""
    try:
        tip = app.save_experience(session_id)
    except WeaverError as exc:
        print(f"/save: {exc}", flush=True)
        return
    print(f"saved as experience: {tip.path}\n{tip.text}", flush=True)


def _command(line: str, files: list[FileEntry]) -> None:
    """Do one ``/`` command (all but ``/quit``)."""
    name, _, rest = line.strip().partition(" ")
    if name == "/help":
        print(HELP, flush=True)
    elif name == "/file":
        try:
            paths = shlex.split(rest)
        except ValueError as exc:
            print(f"/file: {exc}", flush=True)
            return
        if not paths:
            print("/file needs a path: /file data/sales.csv", flush=True)
        for path in paths:
            _add_file(files, path)
    else:
        print(f"unknown command {name}; /help lists them (a message cannot start with /)", flush=True)


def _add_file(files: list[FileEntry], path: str) -> None:
    """Queue ``path`` for the next message, or say why not (the session checks size and name again)."""
    file = Path(path).expanduser()
    if not file.is_file():
        print(f"no file {path!r}; nothing added", flush=True)
        return
    files.append({"name": file.name, "path": str(file)})
    print(f"{file.name} goes with your next message ({len(files)} file(s) waiting)", flush=True)


def run_round(
    session: Session,
    message: str,
    handler: SessionEventHandler,
    files: list[FileEntry],
    stdin: _StdinLines | None = None,
    again: bool = False,
) -> str | None:
    """Run one round through the bridge so Ctrl-C can cancel it; returns a refusal to print, if any.

    The first Ctrl-C cancels the round (its code is interrupted, variables are kept) and waits for
    it to end; a second one during the same round raises ``KeyboardInterrupt`` to quit. Code
    waiting for approval (``code_interpreter.require_confirmation``) is asked about on ``stdin``.
    ``again``: regenerate the last answer instead (``Session.rerun``), from the variables before it.
    """
    job = ThreadJob(
        (lambda: session.rerun(event_handler=handler))
        if again
        else (lambda: session.send_message(message, event_handler=handler, files=files or None)),
        "weaver-chat-round",
    )
    cancelled = False
    while not job.done():
        try:
            job.wait(0.2)  # a short timeout keeps the main thread responsive to SIGINT everywhere
            if stdin is not None and isinstance(handler, ConsoleEventHandler):
                _answer_approvals(session, handler, stdin)
        except KeyboardInterrupt:
            if cancelled:
                raise
            cancelled = True
            print("\n^C cancelling the round (Ctrl-C again quits)", flush=True)
            session.cancel()
    try:
        job.result()
    except WeaverError as exc:  # refused before it started: bad files, a busy or ended session
        return str(exc)
    return None


def _answer_approvals(session: Session, handler: ConsoleEventHandler, stdin: _StdinLines) -> None:
    """Ask about code that waits for approval (shown already under its step), and answer the engine."""
    while True:
        try:
            post_id, request = handler.approvals.get_nowait()
        except queue.Empty:
            return
        print(f"\n  The code above waits for your approval ({request.timeout_s:g} s).", flush=True)
        choice = (stdin.read("  [r]un, [e]dit or [c]ancel? ") or "c").strip().lower()[:1]
        if choice == "r":
            done = session.approve(post_id, Decision.RUN)
        elif choice == "e":
            print("  Type the code to run instead; end it with an empty line.", flush=True)
            edited = edited_code(_read_message(stdin) or "")
            decision = Decision.EDIT if edited.strip() else Decision.CANCEL  # nothing typed: nothing runs
            done = session.approve(post_id, decision, edited if edited.strip() else None)
        else:
            done = session.approve(post_id, Decision.CANCEL)
        if not done:
            print("  Too late: the code no longer waits (it timed out, or the round ended).", flush=True)


class _StdinLines:
    """Reads stdin on a daemon thread, so the main thread waits in Python code.

    A Ctrl-C that lands between ``input()`` printing its prompt and blocking in ``read()`` would be
    lost until the next line arrives; waiting on a queue in short slices always notices it.
    """

    def __init__(self) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False  # end of input was read: every later read is None too
        threading.Thread(target=self._pump, name="weaver-chat-stdin", daemon=True).start()

    def _pump(self) -> None:
        for line in iter(sys.stdin.readline, ""):
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def read(self, prompt: str) -> str | None:
        """The next line (None at end of input), after showing ``prompt``."""
        print(prompt, end="", flush=True)
        while not self._ended:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self._ended = line is None
            return line
        return None


def _read_message(stdin: _StdinLines, files_waiting: bool = False) -> str | None:
    """Lines until an empty line (so code blocks can be pasted), or one ``/`` command line at once;
    None at end of input. With files waiting, an empty line at once sends them alone."""
    lines: list[str] = []
    prompt = "\nyou> "
    while True:
        line = stdin.read(prompt)
        if line is None:
            return "\n".join(lines) if lines else None
        if not lines and (line.startswith("/") or (files_waiting and not line)):
            return line
        in_code = sum(text.strip().startswith("```") for text in lines) % 2 == 1
        if not line and lines and not in_code:
            return "\n".join(lines)
        lines.append(line)
        prompt = "...  "


if __name__ == "__main__":
    sys.exit(main())
