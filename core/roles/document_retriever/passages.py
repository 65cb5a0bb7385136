"""Text files cut into passages (a few lines each, about ``target_words`` words) that keep their
file's name and line numbers, so an answer can say where it was found.

Files are read only through ``core.safe_files`` (open handles, no link followed, size checked on
the open file): the session folder is written by user code while it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.safe_files import Refusal, UnsafeFile, open_file, walk
from core.text import human_size

# What is cut into passages; anything else is listed as not supported.
TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".py", ".log"})
UNREADABLE_SUFFIXES = frozenset({".pdf", ".docx", ".doc", ".pptx", ".xlsx"})  # no light reader installed


@dataclass(frozen=True)
class Passage:
    """A run of lines of one file: where it is (``source`` as the user knows it) and its text."""

    source: str  # "notes.md" (an upload) or "data/handbook.md" (the app's data folder)
    first_line: int
    last_line: int
    text: str

    @property
    def place(self) -> str:
        lines = f"line {self.first_line}" if self.first_line == self.last_line else "lines"
        if self.first_line != self.last_line:
            lines += f" {self.first_line}-{self.last_line}"
        return f"{self.source}, {lines}"


@dataclass(frozen=True)
class Folder:
    """A folder searched: its path and how its files are named in answers (``""`` or ``"data/"``)."""

    root: Path
    label: str


@dataclass
class Collected:
    """What one pass over the folders gave: passages, and each file left out with the reason."""

    passages: list[Passage] = field(default_factory=list)
    files: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason for the user)
    full: bool = False  # max_passages was reached; later files were not read


def signature(folders: list[Folder]) -> tuple[tuple[str, str, int, int], ...]:
    """Each file's (folder, path, size, mtime): the index is rebuilt when this changes."""
    found: list[tuple[str, str, int, int]] = []
    for folder in folders:
        if folder.root.is_dir():
            found.extend(
                (folder.label, f.path, f.size, f.modified_ns) for f in walk(folder.root).files if not _hidden(f.path)
            )
    return tuple(sorted(found))


def collect(folders: list[Folder], max_file_bytes: int, max_passages: int, target_words: int) -> Collected:
    """Read each supported file of ``folders`` (in name order) into passages, up to the limits."""
    out = Collected()
    for folder in folders:
        if not folder.root.is_dir():
            continue
        for found in sorted(walk(folder.root).files, key=lambda f: f.path):
            if _hidden(found.path):
                continue
            source = folder.label + found.path
            suffix = Path(found.path).suffix.lower()
            if suffix not in TEXT_SUFFIXES:
                if suffix in UNREADABLE_SUFFIXES:
                    out.skipped.append((source, f"{suffix} files are not supported (text files only)"))
                continue
            if out.full:
                out.skipped.append((source, "not read: the document_retriever.max_passages limit was reached"))
                continue
            try:
                with open_file(folder.root, found.path, max_file_bytes) as opened:
                    data = opened.read_all()
            except UnsafeFile as exc:
                if exc.reason is Refusal.TOO_BIG:
                    limit = human_size(max_file_bytes)
                    said = f"{human_size(found.size)}, over the document_retriever.max_file_mb limit ({limit})"
                else:
                    said = exc.said
                out.skipped.append((source, said))
                continue
            except OSError as exc:
                out.skipped.append((source, f"could not be read ({exc.strerror or exc})"))
                continue
            passages = split_passages(source, data.decode("utf-8", errors="replace"), target_words)
            room = max_passages - len(out.passages)
            if len(passages) > room:
                out.full = True
                out.skipped.append(
                    (source, f"only its first {room} passage(s) indexed: the document_retriever.max_passages limit")
                )
                passages = passages[:room]
            out.passages.extend(passages)
            out.files += 1
    return out


def split_passages(source: str, text: str, target_words: int) -> list[Passage]:
    """Lines gathered until about ``target_words`` words, a blank line closing a passage early
    once it has half of them; a line longer than the target is a passage of its own."""
    passages: list[Passage] = []
    lines: list[str] = []
    first = 1
    count = 0

    def close(last: int) -> None:
        nonlocal lines, count
        body = "\n".join(lines).strip()
        if body:
            passages.append(Passage(source, first, last, body))
        lines, count = [], 0

    for number, line in enumerate(text.splitlines(), start=1):
        if not lines and not line.strip():
            continue
        if not lines:
            first = number
        words = len(line.split())
        if not line.strip() and count >= target_words // 2:
            close(number - 1)
            continue
        if lines and count + words > target_words:
            close(number - 1)
            first = number
        lines.append(line)
        count += words
    close(first + len(lines) - 1)
    return passages


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))
