"""A chat as a Jupyter notebook or as Markdown, made from its rounds (``rounds.jsonl``).

The rounds are the record a chat keeps on disk beside its files (``core.resume``), so a chat
reopened after a restart exports as completely as a live one. Each round becomes: the user's
message, the plan, one code cell per piece of code with the outputs it showed (stream text,
the result's ``text/plain`` and ``text/html``, displayed figures as ``image/png``), the answer,
the ratings people gave it, and the names of the files it made. Code that failed keeps its error
and the tag ``raises-exception`` (so Jupyter and ``nbclient`` run on past it); code that was never
run (refused by verification) or stopped (timeout, cancel) is shown as text, not as a cell.

The outputs come from the ``execution_result`` attachment's ``extra`` (``ExecutionResult.outputs``);
a round written before it existed shows the summary the model read, as one stream.
"""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from core.files import list_files
from core.memory import AttachmentType, ExecutionStatus, Post, RoleName, Round
from core.safe_files import UnsafeFile, open_file

# Defaults of the UI's settings WEAVER_UI_EXPORT_MAX_IMAGE_MB and WEAVER_UI_EXPORT_MAX_FILES.
MAX_IMAGE_BYTES = 20 * 2**20  # a figure bigger than this is named, not embedded
MAX_FILES_NAMED = 200  # the chat's files listed at the end of an export
_IMAGE_MIMES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class ExportFormat(str, enum.Enum):
    """The formats a chat exports to."""

    ipynb = "ipynb"
    md = "md"

    @property
    def media_type(self) -> str:
        return "application/x-ipynb+json" if self is ExportFormat.ipynb else "text/markdown; charset=utf-8"


@dataclass(frozen=True)
class Rating:
    """A thumbs up (1) or down (0) someone gave a message of the chat, and their comment."""

    value: int
    comment: str = ""
    on: str = "answer"  # what was rated, in a few words ("answer", or the start of another message)

    @property
    def thumbs(self) -> str:
        return "👍" if self.value > 0 else "👎"

    def line(self) -> str:
        comment = f" — {self.comment.strip()}" if self.comment and self.comment.strip() else ""
        return f"{self.thumbs} on the {self.on}{comment}"


@dataclass(frozen=True)
class ChatRecord:
    """What an export is made of. ``ratings``: by round index; ``other_ratings``: ratings on
    messages that belong to no round (a notice). ``cwd``: the chat's working folder, where the
    figures are (None: figures are named only)."""

    chat_id: str
    title: str
    rounds: Sequence[Round]
    ratings: Mapping[int, Sequence[Rating]] = field(default_factory=dict)
    other_ratings: Sequence[Rating] = ()
    cwd: Path | None = None
    files: Sequence[str] = ()  # the chat's files when exported (``chat_files``)
    more_files: int = 0  # files not named, past the limit ``chat_files`` was given
    max_image_bytes: int = MAX_IMAGE_BYTES  # a bigger figure is named with a note, not embedded
    exported_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


# -- the walk both formats share ---------------------------------------------------------------


@dataclass(frozen=True)
class _Text:
    heading: str
    text: str


@dataclass(frozen=True)
class _Code:
    code: str
    status: ExecutionStatus
    outputs: Mapping[str, Any]  # ExecutionResult.outputs; {"summary": ...} for an older round
    ran: bool  # False: refused before it ran, or stopped: shown as text


_Block = Union[_Text, _Code]


def _plan_text(post: Post) -> str:
    plan = post.first(AttachmentType.plan) or post.first(AttachmentType.init_plan)
    return str(plan or "").strip()


def _code_block(post: Post) -> _Code | None:
    code = str(post.first(AttachmentType.reply_content, "") or "")
    status = post.first(AttachmentType.execution_status)
    if not code.strip() or status is None:
        return None
    try:
        status = ExecutionStatus(status)
    except ValueError:
        status = ExecutionStatus.failure
    results = [a for a in post.attachment_list if a.type == AttachmentType.execution_result]
    outputs: Mapping[str, Any]
    if not results:  # refused by verification: never ran
        error = str(post.first(AttachmentType.code_error, "") or "")
        return _Code(code, status, {"error": error} if error else {}, ran=False)
    extra = results[-1].extra
    outputs = extra if isinstance(extra, dict) else {"summary": str(results[-1].content or "")}
    ran = status in (ExecutionStatus.success, ExecutionStatus.failure)
    return _Code(code, status, outputs, ran=ran)


def _blocks(rnd: Round) -> list[_Block]:
    """A round's pieces in the order they happened; the answer last."""
    blocks: list[_Block] = []
    last_plan = ""
    for post in rnd.post_list:
        if post.send_from == RoleName.Planner:
            plan = _plan_text(post)
            if plan and plan != last_plan:
                blocks.append(_Text("Plan", plan))
                last_plan = plan
        elif post.send_from == RoleName.CodeInterpreter or post.first(AttachmentType.reply_content):
            code = _code_block(post)
            if code is not None:
                blocks.append(code)
    answer = rnd.reply_text.strip()
    if answer:
        blocks.append(_Text("Answer", answer))
    if rnd.state in ("failed", "cancelled"):
        why = f": {rnd.error}" if rnd.error else ""
        blocks.append(_Text("Note", f"This round {'was cancelled' if rnd.state == 'cancelled' else 'failed'}{why}."))
    return blocks


def files_made(rnd: Round) -> list[str]:
    """The names of the files the round's code made, in order, each once."""
    names: list[str] = []
    for post in rnd.post_list:
        for attachment in post.attachment_list:
            if attachment.type != AttachmentType.artifact_paths:
                continue
            details = attachment.extra if isinstance(attachment.extra, list) else []
            found = [str(d.get("name")) for d in details if isinstance(d, dict) and d.get("name")]
            if not found and isinstance(attachment.content, list):
                found = [Path(str(p)).name for p in attachment.content]
            names += [n for n in found if n not in names]
    return names


def chat_files(cwd: Path, limit: int = MAX_FILES_NAMED) -> tuple[list[str], int]:
    """The names (paths within the folder) of a chat's files, sorted, at most ``limit``, and how
    many more there are."""
    listing = list_files(cwd, 10**9)
    names = sorted(entry.path for entry in listing.entries)
    return names[:limit], max(0, len(names) - limit)


def _files_section(record: ChatRecord) -> str:
    if not record.files:
        return ""
    more = f"\n- … and {record.more_files} more (past the export's limit of files named)" if record.more_files else ""
    return "## Files of this chat\n\n" + "\n".join(f"- `{name}`" for name in record.files) + more


# -- notebook ------------------------------------------------------------------------------------


def _read_figure(cwd: Path | None, name: str, max_bytes: int) -> tuple[str, str] | str:
    """(mime, base64) of a figure in the chat's folder, or why it is not embedded."""
    mime = _IMAGE_MIMES.get(Path(name).suffix.lower())
    if cwd is None or mime is None or "/" in name:
        return "it is among the chat's files"
    try:
        opened = open_file(cwd, name, max_bytes)
    except UnsafeFile as refused:
        return f"it {refused.said}"
    except OSError:
        return "it could not be read"
    try:
        return mime, base64.b64encode(opened.file.read(max_bytes)).decode("ascii")
    finally:
        opened.close()


def _error_output(text: str) -> NotebookNode:
    lines = text.rstrip().splitlines() or ["Error"]
    match = re.match(r"^(\w[\w.]*)(?::\s*(.*))?$", lines[-1].strip())
    ename, evalue = (match.group(1), match.group(2) or "") if match else ("Error", lines[-1])
    return new_output("error", ename=ename, evalue=evalue, traceback=lines)


def _code_outputs(block: _Code, count: int, record: ChatRecord) -> list[NotebookNode]:
    out = block.outputs
    outputs: list[NotebookNode] = []
    if "summary" in out:
        return [new_output("stream", name="stdout", text=str(out["summary"]))]
    for name in ("stdout", "stderr"):
        if out.get(name):
            outputs.append(new_output("stream", name=name, text=str(out[name])))
    for figure in out.get("figures") or []:
        image = _read_figure(record.cwd, str(figure), record.max_image_bytes)
        if isinstance(image, tuple):
            mime, encoded = image
            outputs.append(new_output("display_data", data={mime: encoded, "text/plain": f"<{figure}>"}))
        else:
            note = f"[figure {figure} not embedded: {image}]\n"
            outputs.append(new_output("stream", name="stdout", text=note))
    if out.get("result"):
        data: dict[str, str] = {"text/plain": str(out["result"])}
        if out.get("result_html"):
            data["text/html"] = str(out["result_html"])
        outputs.append(new_output("execute_result", data=data, execution_count=count))
    if block.status is ExecutionStatus.failure and out.get("error"):
        outputs.append(_error_output(str(out["error"])))
    return outputs


def _not_run_markdown(block: _Code) -> str:
    why = {
        ExecutionStatus.timeout: "it timed out and was interrupted",
        ExecutionStatus.cancelled: "it was cancelled",
    }.get(block.status, "it was not run (code verification refused it)")
    text = f"**Code not run to the end** ({why}):\n\n```python\n{block.code.rstrip()}\n```"
    error = str(block.outputs.get("error") or "")
    return text + (f"\n\n```text\n{error.rstrip()}\n```" if error else "")


def _ratings_text(ratings: Sequence[Rating]) -> str:
    return "**Feedback:**\n\n" + "\n".join(f"- {r.line()}" for r in ratings)


def _files_text(names: Sequence[str]) -> str:
    return "**Files made:** " + ", ".join(f"`{n}`" for n in names) + " (in the chat's files)"


def to_notebook(record: ChatRecord) -> NotebookNode:
    """The chat as an nbformat v4 notebook (validated) that re-runs in Jupyter's python3 kernel."""
    cells: list[NotebookNode] = [new_markdown_cell(_header(record))]
    count = 0
    for index, rnd in enumerate(record.rounds):
        cells.append(new_markdown_cell(f"## {index + 1}. User\n\n{_quote(rnd.user_query)}"))
        for block in _blocks(rnd):
            if isinstance(block, _Text):
                cells.append(new_markdown_cell(f"**{block.heading}:**\n\n{block.text}"))
            elif block.ran:
                count += 1
                cell = new_code_cell(block.code, execution_count=count, outputs=_code_outputs(block, count, record))
                if block.status is ExecutionStatus.failure:
                    cell.metadata["tags"] = ["raises-exception"]
                cells.append(cell)
            else:
                cells.append(new_markdown_cell(_not_run_markdown(block)))
        extras = _round_extras(record, index, rnd)
        if extras:
            cells.append(new_markdown_cell(extras))
    if record.other_ratings:
        cells.append(new_markdown_cell("## Other feedback\n\n" + _ratings_text(record.other_ratings)))
    if record.files:
        cells.append(new_markdown_cell(_files_section(record)))
    notebook = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "weaver": {"chat_id": record.chat_id, "title": record.title},
        },
    )
    nbformat.validate(notebook)
    return notebook


def _round_extras(record: ChatRecord, index: int, rnd: Round) -> str:
    parts = []
    ratings = record.ratings.get(index) or ()
    if ratings:
        parts.append(_ratings_text(ratings))
    files = files_made(rnd)
    if files:
        parts.append(_files_text(files))
    return "\n\n".join(parts)


def _header(record: ChatRecord) -> str:
    when = record.exported_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = record.title.strip() or "Chat"
    return f"# {title}\n\n_Exported from Weaver on {when} (chat `{record.chat_id}`)._"


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in (text.strip() or "(empty message)").splitlines())


# -- Markdown ------------------------------------------------------------------------------------


def _fence(text: str, info: str = "") -> str:
    """``text`` in a code fence longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}"


def _outputs_markdown(block: _Code) -> list[str]:
    out = block.outputs
    parts: list[str] = []
    if "summary" in out:
        return [_fence(str(out["summary"]), "text")]
    for name, label in (("stdout", "Output"), ("stderr", "Errors and warnings"), ("result", "Result")):
        if out.get(name):
            parts.append(f"{label}:\n\n{_fence(str(out[name]), 'text')}")
    for figure in out.get("figures") or []:
        parts.append(f"![{figure}]({figure})")
    if block.status is ExecutionStatus.failure and out.get("error"):
        parts.append(f"Error:\n\n{_fence(str(out['error']), 'text')}")
    return parts


def to_markdown(record: ChatRecord) -> str:
    """The chat as one Markdown document: code fenced, outputs as text blocks, figures by their
    file name (relative: put the chat's files beside the document to see them)."""
    parts: list[str] = [_header(record)]
    for index, rnd in enumerate(record.rounds):
        parts.append(f"## {index + 1}. User\n\n{_quote(rnd.user_query)}")
        for block in _blocks(rnd):
            if isinstance(block, _Text):
                parts.append(f"**{block.heading}:**\n\n{block.text}")
            elif block.ran:
                failed = " (it raised an error)" if block.status is ExecutionStatus.failure else ""
                parts.append(f"**Code{failed}:**\n\n{_fence(block.code, 'python')}")
                parts += _outputs_markdown(block)
            else:
                parts.append(_not_run_markdown(block))
        extras = _round_extras(record, index, rnd)
        if extras:
            parts.append(extras)
    if any(_has_figures(rnd) for rnd in record.rounds):
        parts.append("_Figures are linked by file name: they are among the chat's files._")
    if record.other_ratings:
        parts.append("## Other feedback\n\n" + _ratings_text(record.other_ratings))
    if record.files:
        parts.append(_files_section(record))
    return "\n\n".join(parts) + "\n"


def _has_figures(rnd: Round) -> bool:
    return any(isinstance(b, _Code) and b.outputs.get("figures") for b in _blocks(rnd))


def export_chat(record: ChatRecord, fmt: ExportFormat) -> bytes:
    """The export's bytes in ``fmt``."""
    if fmt is ExportFormat.ipynb:
        return nbformat.writes(to_notebook(record)).encode("utf-8")
    return to_markdown(record).encode("utf-8")
