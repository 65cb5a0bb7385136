"""TaskWeaver-format example conversations: read, checked and turned into rounds a role's prompt shows.

A role with ``<role>.use_example`` reads every ``*.yaml`` in its example folder
(``<role>.example_base_path``; with ``dynamic_example_sub_path``, the sub-folder the chat names).
Each file is one conversation: ``enabled``, then ``rounds`` of ``user_query``, ``state`` and
``post_list`` (``message``, ``send_from``, ``send_to``, ``attachment_list`` of ``type`` and
``content``). A file is parsed with a real YAML parser and checked with pydantic; a problem is one
``ConfigError`` naming the file and, where YAML knows it, the line. The rounds become
``core.memory`` rounds, so a role renders them exactly as it renders its own history.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError
from core.memory import Attachment, AttachmentType, ExecutionStatus, Post, Round
from core.sub_paths import named_sub_path as shared_sub_path
from core.sub_paths import sub_folder

log = logging.getLogger("weaver.examples")

# Every role alias TaskWeaver ships, with Weaver's: an example may name any of them (it is skipped when
# that role is not in the session), and a name outside these and the registered roles is a mistake.
KNOWN_ROLES = frozenset(
    {
        "User",
        "Planner",
        "CodeInterpreter",
        "Echo",
        "CLIAgent",
        "PluginOrchestrator",
        "DocumentRetriever",
        "ImageReader",
        "Recepta",
        "WebExplorer",
        "WebSearch",
    }
)
# TaskWeaver's attachment types Weaver's replies have a field for, and the type each becomes here.
# ``python`` is TaskWeaver's older name for code (``reply_type`` python, ``reply_content`` the code).
MAPPED: Mapping[str, AttachmentType] = {
    "plan": AttachmentType.plan,
    "current_plan_step": AttachmentType.current_plan_step,
    "thought": AttachmentType.thought,
    "plan_reasoning": AttachmentType.thought,  # TaskWeaver's newer Planner reasons here; ours in ``thought``
    "reply_type": AttachmentType.reply_type,
    "reply_content": AttachmentType.reply_content,
    "python": AttachmentType.reply_content,
    "verification": AttachmentType.verification,
    "code_error": AttachmentType.code_error,
    "execution_status": AttachmentType.execution_status,
    "execution_result": AttachmentType.execution_result,
    "artifact_paths": AttachmentType.artifact_paths,
    "revise_message": AttachmentType.revise_message,
}
_STATUSES = {"SUCCESS": ExecutionStatus.success, "FAILURE": ExecutionStatus.failure}
ROLE_NAME = "{ROLE_NAME}"  # TaskWeaver's placeholder in example text, filled with the role's alias


class ExampleAttachment(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    content: Any = ""


class ExamplePost(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: str = ""
    send_from: str
    send_to: str
    attachment_list: list[ExampleAttachment] | None = None

    @field_validator("message", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value


class ExampleRound(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    user_query: str = Field(validation_alias=AliasChoices("user_query", "User_query"))
    state: str = "finished"
    post_list: list[ExamplePost] | None = None

    @field_validator("user_query", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) else value


class ExampleFile(BaseModel):
    """One file as TaskWeaver writes it; ``plugins``, ``plugin_only`` and other keys are not read."""

    model_config = ConfigDict(extra="ignore")

    enabled: bool = True
    rounds: list[ExampleRound] = Field(min_length=1)


@dataclass(frozen=True)
class Example:
    """One enabled example conversation: its file, its rounds (Weaver's), the roles it names."""

    name: str  # the file, as people name it: relative to the app folder where it is inside it
    rounds: list[Round]
    roles: frozenset[str]
    ignored_types: tuple[str, ...] = ()


@dataclass
class _Lines:
    """Where each part of a YAML document starts, by its path of keys and indexes (1-based lines)."""

    by_path: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def find(self, loc: Sequence[Any]) -> int | None:
        path = tuple(loc)
        while path:
            if path in self.by_path:
                return self.by_path[path]
            path = path[:-1]
        return None


def _line_map(text: str) -> _Lines:
    lines = _Lines()

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, key.value)
                lines.by_path[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                sub = (*path, index)
                lines.by_path[sub] = item.start_mark.line + 1
                walk(item, sub)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def display_name(path: Path, app_dir: Path | None) -> str:
    """A file as errors and records name it: ``planner_examples/example-1.yaml``, from ``app_dir``
    (the example folder's parent) on."""
    if app_dir is not None:
        try:
            return str(path.resolve().relative_to(app_dir.resolve()))
        except (ValueError, OSError):
            pass
    return str(path)


def read_example(path: Path, known_roles: Iterable[str] = (), app_dir: Path | None = None) -> ExampleFile:
    """Parse and check one file; ``ConfigError`` names the file and the line of the first problem."""
    name = display_name(path, app_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    except ValueError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
        lines = _line_map(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{name}{where}: not valid YAML ({exc.problem or exc.context})") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{name}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected an example conversation (enabled, rounds), not {type(data).__name__}")
    try:
        example = ExampleFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        line = lines.find(first["loc"])
        where = f" line {line}" if line else ""
        field_name = ".".join(map(str, first["loc"])) or "file"
        raise ConfigError(f"{name}{where}: {field_name}: {first['msg']}") from None
    roles = KNOWN_ROLES | set(known_roles)
    for r, rnd in enumerate(example.rounds):
        for p, post in enumerate(rnd.post_list or []):
            for key in ("send_from", "send_to"):
                value = getattr(post, key)
                if value not in roles:
                    line = lines.find(("rounds", r, "post_list", p, key))
                    where = f" line {line}" if line else ""
                    raise ConfigError(f"{name}{where}: {key} {value!r} is not a role ({', '.join(sorted(roles))})")
    return example


def _attachments(items: list[ExampleAttachment] | None, alias: str, ignored: list[str]) -> list[Attachment]:
    out: list[Attachment] = []
    for item in items or []:
        kind = MAPPED.get(item.type)
        if kind is None:
            ignored.append(item.type)
            continue
        content: Any = item.content if item.content is not None else ""
        if isinstance(content, str):
            content = content.replace(ROLE_NAME, alias)
        if kind is AttachmentType.execution_status:
            status = _STATUSES.get(str(content).strip().upper())
            if status is None:  # NONE: the code did not run, as if there were no status
                continue
            content = status
        if item.type == "python":
            out.append(Attachment(AttachmentType.reply_type, "python"))
        out.append(Attachment(kind, content))
    return out


def to_rounds(example: ExampleFile, alias: str, ignored: list[str]) -> list[Round]:
    """The file's rounds as Weaver's, ``{ROLE_NAME}`` filled in; unmapped attachment types go to ``ignored``."""
    rounds = []
    for rnd in example.rounds:
        posts = [
            Post(
                send_from=p.send_from,
                send_to=p.send_to,
                message=p.message.replace(ROLE_NAME, alias),
                attachment_list=_attachments(p.attachment_list, alias, ignored),
            )
            for p in rnd.post_list or []
        ]
        rounds.append(Round(user_query=rnd.user_query, state="finished", post_list=posts))
    return rounds


def example_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The ``*.yaml`` files of a folder, in name order (TaskWeaver reads the folder, not below it)."""
    found = folder.rglob("*.yaml") if recursive else folder.glob("*.yaml")
    return sorted(p for p in found if p.is_file())


def load_examples(
    folder: Path,
    alias: str,
    role_set: Iterable[str],
    app_dir: Path | None = None,
) -> list[Example]:
    """Every enabled example in ``folder`` whose roles are all in ``role_set`` (TaskWeaver's filter)."""
    roles = set(role_set)
    examples = []
    for path in example_files(folder):
        parsed = read_example(path, roles, app_dir)
        name = display_name(path, app_dir)
        if not parsed.enabled:
            log.info("%s: skipped for %s (enabled: false)", name, alias)
            continue
        named = {n for r in parsed.rounds for p in r.post_list or [] for n in (p.send_from, p.send_to)}
        if not named <= roles:
            log.info(
                "%s: skipped for %s (names %s, not in this session)", name, alias, ", ".join(sorted(named - roles))
            )
            continue
        ignored: list[str] = []
        rounds = to_rounds(parsed, alias, ignored)
        kinds = tuple(dict.fromkeys(ignored))
        if kinds:
            log.info(
                "%s: attachment types %s are ignored (Weaver's replies have no such field)", name, ", ".join(kinds)
            )
        examples.append(Example(name=name, rounds=rounds, roles=frozenset(named), ignored_types=kinds))
    return examples


def check_example_folder(folder: Path, recursive: bool = False, known_roles: Iterable[str] = ()) -> int:
    """Read every example file in ``folder`` (and below it, for sub-paths a chat names later); the count
    read. Files are named from the folder's parent on, as a role names the examples it used."""
    if not folder.is_dir():
        return 0
    files = example_files(folder, recursive=recursive)
    for path in files:
        read_example(path, known_roles, folder.parent)
    return len(files)


SUB_PATH_KEY = "example_sub_path"  # TaskWeaver's shared-memory entry type, and Weaver's session variable


def named_sub_path(posts: Iterable[Post], session_vars: Mapping[str, str]) -> str:
    """The example sub-folder a chat names (``example_sub_path``: a role's shared-memory entry, else
    the session variable)."""
    return shared_sub_path(posts, session_vars, SUB_PATH_KEY)


_CACHE_KEPT = 64
_cache: dict[tuple[Path, str, frozenset[str]], tuple[tuple[Any, ...], list[Example]]] = {}
_cache_lock = threading.Lock()  # sessions build and run their roles on threads of their own


class ExampleShelf:
    """One role's examples from its settings; a folder is read again only when its files change
    (every new session builds its roles, and most share the app's folder)."""

    def __init__(self, alias: str, use: bool, base: Path | None, dynamic: bool, role_set: Iterable[str]) -> None:
        self.alias = alias
        self.use = use
        self.base = base
        self.dynamic = dynamic
        self.role_set = frozenset(role_set)

    def select(self, sub_path: str = "") -> list[Example]:
        """The examples for this turn; with a dynamic sub-path, those of the folder it names."""
        if not self.use or self.base is None:
            return []
        folder: Path | None = self.base
        if self.dynamic:
            folder = sub_folder(self.base, sub_path) if sub_path else None
            if folder is None:
                if sub_path:
                    log.warning("%s: example sub-path %r leaves %s; no examples used", self.alias, sub_path, self.base)
                return []
        assert folder is not None
        if not folder.is_dir():
            return []
        files = example_files(folder)
        signature = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        key = (folder, self.alias, self.role_set)
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        examples = load_examples(folder, self.alias, self.role_set, self.base.parent)
        with _cache_lock:
            if len(_cache) >= _CACHE_KEPT:
                _cache.pop(next(iter(_cache)))
            _cache[key] = (signature, examples)
        return examples
