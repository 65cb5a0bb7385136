"""Project datasets: the files of ``<app_dir>/data/``, read-only in every session's kernel.

``data/datasets.yaml`` (optional) describes them; a file it does not describe is still listed,
named after its stem. The catalog is read once, at app start: a bad ``datasets.yaml`` stops the
app with one ``DatasetError`` naming the file and the entry. Kernels see the folder at
``kernel_dir`` (``/data`` in the sandbox, see ``core.execution.sandbox.data_mount``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError
from core.text import human_size

INDEX_FILE = "datasets.yaml"
MAX_FILES = 1000  # files listed from the folder; a data lake belongs in a database plugin
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class DatasetError(ConfigError):
    """``data/datasets.yaml`` is invalid; the message names the file and the entry."""


class DatasetEntry(BaseModel):
    """One entry of ``datasets.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a Python identifier: the variable it is loaded into, and its name in chat")
    file: str = Field(description="path of the file inside the data folder")
    description: str = ""
    columns: dict[str, str] = Field(default_factory=dict, description="column name → note")

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be a Python-style identifier (letters, digits, _; at most 64)")
        return value

    @field_validator("file")
    @classmethod
    def _inside(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not value or path.is_absolute() or ".." in path.parts:
            raise ValueError("must be a relative path inside the data folder")
        return str(path)

    @field_validator("columns", mode="before")
    @classmethod
    def _column_notes(cls, value: Any) -> Any:
        """``columns`` as a mapping, or a list of one-key mappings (YAML's natural ordered form)."""
        if isinstance(value, list):
            merged: dict[str, Any] = {}
            for item in value:
                if not isinstance(item, dict):
                    raise ValueError("must map column names to notes")
                merged.update(item)
            return {str(k): "" if v is None else str(v) for k, v in merged.items()}
        if isinstance(value, dict):
            return {str(k): "" if v is None else str(v) for k, v in value.items()}
        return value


class DatasetIndex(BaseModel):
    """The whole ``datasets.yaml``: ``datasets: [...]``."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[DatasetEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class Dataset:
    """A project dataset, as the prompts, the offline backend and the UI's welcome screen show it."""

    name: str
    file: str  # inside the data folder, e.g. "sales/2024.csv"
    path: str  # where code in a kernel reads it, e.g. "/data/sales/2024.csv"
    description: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    size: int = 0  # bytes

    def describe(self) -> str:
        """One line for the prompts."""
        text = f"- {self.name}: {self.path} ({human_size(self.size)})"
        if self.description:
            text += f" — {' '.join(self.description.split())}"
        if self.columns:
            notes = "; ".join(f"{c}: {n}" if n else c for c, n in self.columns.items())
            text += f". Columns: {' '.join(notes.split())}"
        return text


class DatasetCatalog:
    """The project's datasets; empty when the app has no data folder."""

    def __init__(self, datasets: list[Dataset] | None = None, kernel_dir: str = "") -> None:
        self.datasets = list(datasets or [])
        self.kernel_dir = kernel_dir

    @classmethod
    def load(cls, data_dir: Path | None, kernel_dir: str | None = None) -> DatasetCatalog:
        """Read ``data_dir`` (and its ``datasets.yaml``); ``kernel_dir`` is where kernels see it."""
        if data_dir is None or not data_dir.is_dir():
            return cls()
        root = data_dir.resolve()
        seen_dir = kernel_dir or str(root)
        entries = _read_index(root / INDEX_FILE)
        described: dict[str, DatasetEntry] = {}
        for entry in entries:
            target = root / entry.file
            if not target.is_file():
                raise DatasetError(f"{root / INDEX_FILE}: dataset {entry.name!r}: file {entry.file!r} is not in {root}")
            described[entry.file] = entry
        names = {entry.name for entry in entries}
        datasets = []
        for path in _data_files(root):
            rel = path.relative_to(root).as_posix()
            entry = described.get(rel) or DatasetEntry(name=_free_name(path.stem, names), file=rel)
            datasets.append(
                Dataset(
                    name=entry.name,
                    file=rel,
                    path=f"{seen_dir.rstrip('/')}/{rel}",
                    description=entry.description.strip(),
                    columns=dict(entry.columns),
                    size=path.stat().st_size,
                )
            )
        order = {entry.file: i for i, entry in enumerate(entries)}  # described first, in the file's order
        datasets.sort(key=lambda d: (order.get(d.file, len(order)), d.file))
        return cls(datasets, seen_dir)

    def __iter__(self) -> Any:
        return iter(self.datasets)

    def __len__(self) -> int:
        return len(self.datasets)

    def get(self, name: str) -> Dataset | None:
        return next((d for d in self.datasets if d.name == name), None)

    def prompt(self, max_chars: int) -> str:
        """The datasets as lines for a system prompt, within ``max_chars``; "and N more" when cut."""
        if not self.datasets or max_chars <= 0:
            return ""
        lines: list[str] = []
        used = 0
        total = len(self.datasets)
        for dataset in self.datasets:
            line = dataset.describe()
            after = total - len(lines) - 1  # datasets after this one
            tail = len(_more(after)) + 1 if after else 0
            if used + len(line) + 1 + tail <= max_chars:
                lines.append(line)
                used += len(line) + 1
                continue
            if not lines:  # the first one alone is too long: cut it, so at least one is named
                tail = len(_more(total - 1)) + 1 if total > 1 else 0
                lines.append(line[: max(0, max_chars - tail - 1)] + "…")
            if len(lines) < total:
                lines.append(_more(total - len(lines)))
            break
        return "\n".join(lines)


def _more(count: int) -> str:
    return f"- and {count} more (list the data folder to see them)"


def _read_index(path: Path) -> list[DatasetEntry]:
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read ({exc})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return []
    if isinstance(data, list):  # a bare list of entries is accepted too
        data = {"datasets": data}
    try:
        index = DatasetIndex.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'top'}: {err['msg']}" for err in exc.errors())
        raise DatasetError(f"{path}: {problems}") from None
    names = [entry.name for entry in index.datasets]
    files = [entry.file for entry in index.datasets]
    for label, values in (("name", names), ("file", files)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise DatasetError(f"{path}: the {label} {', '.join(map(repr, twice))} is used by more than one dataset")
    return index.datasets


def _data_files(root: Path) -> list[Path]:
    """The data folder's files (not hidden ones, not datasets.yaml), by path, at most ``MAX_FILES``."""
    found: list[Path] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() == INDEX_FILE:
            continue
        if path.is_file():
            found.append(path)
            if len(found) >= MAX_FILES:
                break
    return found


def _free_name(stem: str, taken: set[str]) -> str:
    """An identifier for a file the index does not name (``Sales 2024`` → ``sales_2024``)."""
    from core.llm.offline_profile import variable_name  # the name an offline profile loads it into

    return variable_name(stem + ".x", taken)
