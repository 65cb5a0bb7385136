"""What one code execution produced, and how it is told to the model and the user."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.memory import ExecutionStatus

FIGURE_DESCRIPTION = "figure displayed by the code"  # an image the cell displayed (not a file it saved)
ARTIFACT_TYPES = ("image", "chart", "df", "file", "txt", "svg", "html")


@dataclass
class Artifact:
    """A file the execution left in the session's cwd (a saved figure, a plugin's CSV, ...)."""

    name: str
    path: Path
    type: str
    description: str = ""


@dataclass
class Table:
    """A DataFrame result kept as data, so the UI can render it without parsing text."""

    columns: list[str]
    rows: list[list[str]]
    shape: tuple[int, int]

    def clipped(self, max_rows: int, max_columns: int) -> "Table":
        """The first rows and columns only; ``shape`` still tells the whole table's size."""
        return Table(self.columns[:max_columns], [row[:max_columns] for row in self.rows[:max_rows]], self.shape)

    def as_payload(self) -> dict[str, object]:
        return {"columns": self.columns, "rows": self.rows, "shape": list(self.shape)}


@dataclass
class ExecutionResult:
    execution_id: str
    code: str
    is_success: bool
    result: str = ""
    result_html: str = ""  # the result's text/html, when it has one (a DataFrame): for exports
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    timed_out: bool = False
    cancelled: bool = False
    kernel_died: bool = False

    @property
    def status(self) -> ExecutionStatus:
        """How it ended, as the one value the model, the UI and the logs all read."""
        if self.cancelled:
            return ExecutionStatus.cancelled
        if self.timed_out:
            return ExecutionStatus.timeout
        return ExecutionStatus.success if self.is_success else ExecutionStatus.failure

    def status_line(self) -> str:
        """One sentence: did it work, and if not, what kind of failure it was."""
        status = self.status
        if status is ExecutionStatus.success:
            return "The execution succeeded."
        reason = {
            ExecutionStatus.timeout: "it timed out and was interrupted",
            ExecutionStatus.cancelled: "it was cancelled",
        }.get(status, "the Python kernel died" if self.kernel_died else "an error was raised")
        return f"The execution failed ({reason})."

    def outputs(self, max_chars: int) -> dict[str, object]:
        """What the cell showed, part by part, each bounded like the summary: a round keeps it (the
        ``execution_result`` attachment's ``extra``) so an exported notebook has the real outputs."""
        figures = [a.name for a in self.artifacts if a.description == FIGURE_DESCRIPTION]
        parts: dict[str, object] = {
            "stdout": clip(self.stdout, max_chars),
            "stderr": clip(self.stderr, max_chars),
            "result": clip(self.result, max_chars),
            "result_html": self.result_html if len(self.result_html) <= max_chars * 4 else "",
            "error": clip(self.error or "", max_chars),
            "figures": figures,
        }
        return {key: value for key, value in parts.items() if value}

    def summary(self, max_chars: int = 1500, max_artifacts: int = 20) -> str:
        """Text for the model and the user; long parts and long file lists are cut so a prompt stays bounded."""
        parts = [self.status_line()]
        for title, text in (
            ("Result", self.result),
            ("Stdout", self.stdout),
            ("Stderr", self.stderr),
            ("Error", self.error or ""),
        ):
            if text.strip():
                parts.append(f"{title}:\n{clip(text.rstrip(), max_chars)}")
        if self.logs:
            parts.append("Plugin logs:\n" + clip("\n".join(self.logs), max_chars))
        if self.artifacts:
            lines = [_artifact_line(a) for a in self.artifacts[:max_artifacts]]
            if len(self.artifacts) > max_artifacts:
                lines.append(
                    f"- ... showing {max_artifacts} of {len(self.artifacts):,} files; "
                    "the rest are in the working folder too"
                )
            parts.append("Artifacts:\n" + "\n".join(lines))
        if len(parts) == 1 and self.is_success:
            parts.append("(no output)")
        return "\n".join(parts)


def _artifact_line(artifact: Artifact) -> str:
    desc = f" — {artifact.description}" if artifact.description else ""
    return f"- {artifact.path.name} ({artifact.type}, in the working folder){desc}"


def clip(text: str, max_chars: int) -> str:
    """Keep the head and the tail (a traceback's last line matters most) and say how much was cut."""
    if len(text) <= max_chars:
        return text
    cut = len(text) - max_chars
    head = max_chars * 2 // 3
    tail = max_chars - head
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[len(text) - tail :] if tail else ''}"
