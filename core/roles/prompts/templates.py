"""A role's prompt templates: YAML beside the roles (package data), or an app's own file.

Each key is a Jinja2 template with a fixed set of variables. A file is checked when it is loaded:
an unknown key, a syntax error or a variable the key does not have is one ``ConfigError`` naming
the config key and the file, so a typo stops the app instead of reaching the model.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml
from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from core.errors import ConfigError

# Every key a role's file may hold, with the variables its template may use.
_KEYS: dict[str, dict[str, frozenset[str]]] = {
    "planner": {
        "system": frozenset({"workers", "recipients", "files", "plugins", "datasets", "reply_format"}),
        "reask": frozenset({"problem", "reply_format"}),
        "incoming": frozenset({"sender", "message"}),
        "new_conversation": frozenset(),
        "experience": frozenset({"tips"}),
    },
    "code_interpreter": {
        "description": frozenset(),
        "system": frozenset({"files", "plugins", "datasets", "reply_format"}),
        "reask": frozenset({"problem", "reply_format"}),
        "incoming": frozenset({"sender", "message"}),
        "execution_result": frozenset({"result", "retry"}),
        "new_conversation": frozenset(),
        "experience": frozenset({"tips"}),
    },
    # core/compression.py: the summary call, and how the summary appears in a role's prompt.
    "round_compressor": {
        "system": frozenset({"role", "previous_summary"}),
        "summary": frozenset({"summary"}),
    },
    # core/experience.py: a saved chat distilled into a tip (no role of its own, only a model).
    "experience": {"summarise": frozenset()},
}

# Autoescape off: prompts are plain text. Sandboxed: a template cannot reach Python internals.
_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


@functools.lru_cache(maxsize=256)
def _compiled(text: str) -> Template:
    """A template compiled once per text: every new session builds its roles' prompts, and
    compiling them took ~12 ms, nearly all of a session's creation. A template renders safely
    from many threads."""
    return _ENV.from_string(text)


@functools.lru_cache(maxsize=256)
def section_of(alias: str) -> str:
    """A role alias as its YAML file and config section name: ``CodeInterpreter`` → ``code_interpreter``
    (asked at every turn; a few aliases, so each is worked out once)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", alias).lower()


class PromptTemplates:
    """The compiled templates of one role; ``render(key, ...)`` fills one in."""

    def __init__(self, section: str, sources: Mapping[str, str], origin: str) -> None:
        self.section = section
        self.origin = origin
        self._templates = {key: _compiled(text) for key, text in sources.items()}

    def has(self, key: str) -> bool:
        return key in self._templates

    def render(self, key: str, **values: Any) -> str:
        return self._templates[key].render(**values)


def has_builtin(section: str) -> bool:
    return section in _KEYS


@functools.lru_cache(maxsize=None)
def _builtin_sources(section: str) -> dict[str, str]:
    name = f"{section}.yaml"
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return _checked(section, yaml.safe_load(text), f"built-in prompt file {name}")


def load_templates(section: str, override: Path | None = None) -> PromptTemplates:
    """The package's templates for ``section``, with any keys ``override`` sets replacing them."""
    sources = dict(_builtin_sources(section))
    origin = f"core/roles/prompts/{section}.yaml"
    if override is not None:
        where = f"{section}.prompt_file_path: {override}"
        try:
            data = yaml.safe_load(Path(override).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{where}: the file cannot be read ({exc.strerror or exc})") from None
        except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: not UTF-8
            raise ConfigError(f"{where}: not valid YAML ({_one_line(exc)})") from None
        sources.update(_checked(section, data, where))
        origin = str(override)
    return PromptTemplates(section, sources, origin)


def _checked(section: str, data: Any, where: str) -> dict[str, str]:
    """The file's templates, after checking keys, types, syntax and variables."""
    allowed = _KEYS[section]
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a mapping of prompt keys ({', '.join(allowed)})")
    sources: dict[str, str] = {}
    for key, text in data.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; the keys are {', '.join(allowed)}")
        if not isinstance(text, str):
            raise ConfigError(f"{where}: {key!r} must be text, not {type(text).__name__}")
        try:
            used = meta.find_undeclared_variables(_ENV.parse(text))
        except TemplateError as exc:
            raise ConfigError(f"{where}: {key!r} is not a valid template ({_one_line(exc)})") from None
        unknown = sorted(used - allowed[key])
        if unknown:
            offered = ", ".join(sorted(allowed[key])) or "none"
            raise ConfigError(f"{where}: {key!r} uses {', '.join(unknown)}, not among its variables ({offered})")
        sources[key] = text
    return sources


def _one_line(exc: Exception) -> str:
    line = getattr(exc, "lineno", None)
    text = " ".join(str(exc).split())
    return f"line {line}: {text}" if isinstance(line, int) else text
