"""Turns one execution's iopub messages into result text, streams, saved images and tables."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.execution.live_output import LiveOutput
from core.execution.result import FIGURE_DESCRIPTION, Artifact, Table
from core.plugins.runtime import TABLE_MIME
from core.safe_files import UnsafeFile, numbered, write_new

MAX_STREAM_CHARS = 1_000_000  # a runaway print loop must not eat the server's memory
# Hard bounds on what one execution may hand the server, whatever the settings ask for later:
# user code can display any payload under our table type, or thousands of tables and figures.
MAX_TABLES_KEPT = 100
MAX_TABLE_ROWS_KEPT = 1000
MAX_TABLE_COLUMNS_KEPT = 200
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_IMAGE_MIMES = (("image/png", ".png", "image"), ("image/jpeg", ".jpg", "image"), ("image/svg+xml", ".svg", "svg"))


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass
class OutputCollector:
    """Accumulates the outputs whose parent is one execute request, until the kernel goes idle."""

    cwd: Path
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    result: str = ""
    result_html: str = ""
    error: str | None = None
    error_name: str | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    _sizes: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    _figures: int = 0  # figures saved: the next one is looked for from there, not from figure.png
    live: LiveOutput | None = None  # passes stream text on while the cell runs

    def handle(self, msg: dict[str, Any]) -> bool:
        """Record one message; True once the kernel reports idle (the execution is over)."""
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "status":
            return content.get("execution_state") == "idle"
        if kind == "stream":
            self._stream(content.get("name", "stdout"), content.get("text", ""))
        elif kind == "execute_result":
            self._rich(content.get("data", {}), is_result=True)
        elif kind == "display_data":
            self._rich(content.get("data", {}), is_result=False)
        elif kind == "error":
            self.error_name = content.get("ename")
            trace = content.get("traceback") or [f"{content.get('ename')}: {content.get('evalue')}"]
            self.error = strip_ansi("\n".join(trace))
        return False

    def _stream(self, name: str, text: str) -> None:
        name = "stderr" if name == "stderr" else "stdout"
        parts = self.stderr if name == "stderr" else self.stdout
        if self.live is not None:  # before the cap: the live view is bounded on its own and must not freeze
            self.live.write(name, text)
        room = MAX_STREAM_CHARS - self._sizes[name]
        if room <= 0:
            return
        if len(text) > room:
            text = text[:room] + f"\n[{name} truncated after {MAX_STREAM_CHARS} characters]\n"
        self._sizes[name] += len(text)
        parts.append(text)

    def _rich(self, data: dict[str, Any], is_result: bool) -> None:
        saved = self._save_image(data)
        table = data.get(TABLE_MIME)
        if isinstance(table, dict) and len(self.tables) < MAX_TABLES_KEPT:
            try:
                self.tables.append(_table(table))
            except (TypeError, ValueError, IndexError):
                pass  # not one of ours: user code displayed raw data under our type
        text = strip_ansi(str(data.get("text/plain", "")))
        if is_result:
            self.result = text
            html = data.get("text/html")
            self.result_html = html[:MAX_STREAM_CHARS] if isinstance(html, str) else ""
        elif text and not saved:
            # display(obj) shows inline in a notebook; in a chat it reads like printed output.
            self._stream("stdout", text if text.endswith("\n") else text + "\n")

    def _save_image(self, data: dict[str, Any]) -> bool:
        """Save the best image representation as a file in cwd; True if one was saved."""
        for mime, suffix, kind in _IMAGE_MIMES:
            payload = data.get(mime)
            if not payload:
                continue
            try:  # user code can display any payload under an image type: skip what isn't one
                content = (
                    (payload if isinstance(payload, str) else "".join(payload)).encode("utf-8")
                    if mime == "image/svg+xml"
                    else base64.b64decode(payload, validate=True)
                )
            except (ValueError, TypeError):
                continue
            try:  # a new name in the opened folder: a link user code planted as figure.png is not followed
                name = write_new(self.cwd, numbered("figure", suffix, start=self._figures + 1), content)
            except (OSError, UnsafeFile):
                return False
            self._figures += 1
            path = self.cwd / name
            self.artifacts.append(Artifact(path.name, path, kind, FIGURE_DESCRIPTION))
            return True
        return False

    @property
    def stdout_text(self) -> str:
        return "".join(self.stdout)

    @property
    def stderr_text(self) -> str:
        return "".join(self.stderr)


def _table(raw: dict[str, Any]) -> Table:
    """A table payload, bounded: only the rows and columns the UI could ever show are kept."""
    columns = list(raw.get("columns", []))
    rows = list(raw.get("rows", []))
    shape = raw.get("shape") or [len(rows), len(columns)]
    return Table(
        columns=[str(c)[:1000] for c in columns[:MAX_TABLE_COLUMNS_KEPT]],
        rows=[[str(c)[:1000] for c in row[:MAX_TABLE_COLUMNS_KEPT]] for row in rows[:MAX_TABLE_ROWS_KEPT]],
        shape=(int(shape[0]), int(shape[1])),
    )
