"""A role that is a folder: ``<name>/<name>.role.yaml`` (alias, module, intro) beside its module.

As TaskWeaver's ``RoleEntry``: the folder's name is the role's name (what ``session.roles`` lists
and its config section, e.g. ``echo.decorator``), the alias is how it appears in the chat (the
Planner's ``send_to`` value), the intro is how the Planner is told what it does. Its class is an
``ExtRole``, built once per session from the session's ``RoleDeps``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError
from core.roles.base import Role
from core.roles.deps import RoleDeps
from core.roles.prompts.templates import PromptTemplates

ROLE_FILE_SUFFIX = ".role.yaml"
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")


class ExtRole(Role):
    """A registered role beyond the two built-in ones. ``settings``: its config section's keys."""

    def __init__(self, deps: RoleDeps, entry: RoleEntry) -> None:
        super().__init__(deps.llm, deps.config)
        self.alias = entry.alias
        self.entry = entry
        self.deps = deps
        self.settings: dict[str, Any] = dict(deps.config.role_settings.get(entry.name, {}))

    def setting(self, key: str, default: Any) -> Any:
        """A key of this role's config section (``<name>.<key>``), checked against the default's type."""
        return section_setting(self.entry.name, self.settings, key, default)

    @classmethod
    def check_startup(cls, name: str, settings: dict[str, Any]) -> None:
        """Called once at start for a role ``session.roles`` lists, with its config section
        (``<name>.<key>``): a role that must be allowed, or a bad value, raises ``ConfigError`` naming
        the key here, so the app does not start rather than failing at each new chat. By default
        nothing is checked."""


def section_setting(name: str, settings: dict[str, Any], key: str, default: Any) -> Any:
    """``<name>.<key>`` from a role's section, checked against the default's type (an int is taken
    where a float is expected)."""
    value = settings.get(key, default)
    expected = (int, float) if isinstance(default, float) else type(default)
    if not isinstance(value, expected) or (isinstance(value, bool) and not isinstance(default, bool)):
        raise ConfigError(f"{name}.{key}: expected {type(default).__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class RoleEntry:
    """One role folder, read and checked: its name, alias, intro, class and where it came from."""

    name: str
    alias: str
    intro: str
    cls: type[ExtRole]
    file: Path

    def create(self, deps: RoleDeps) -> Role:
        return self.cls(deps, self)


def role_files(folder: Path) -> list[Path]:
    """Each ``<folder>/<name>/<name>.role.yaml``, by name."""
    if not folder.is_dir():
        return []
    found = [d / f"{d.name}{ROLE_FILE_SUFFIX}" for d in sorted(folder.iterdir()) if d.is_dir()]
    return [f for f in found if f.is_file()]


def load_role_entry(path: Path) -> RoleEntry:
    """Read and check one role file; anything wrong is one ``ConfigError`` naming the file."""
    name = path.name.removesuffix(ROLE_FILE_SUFFIX)
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"role file {where}: cannot be read ({exc.strerror or exc})") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"role file {where}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"role file {where}: expected a mapping with alias, module and intro")
    missing = [key for key in ("alias", "module", "intro") if not isinstance(data.get(key), str)]
    if missing:
        raise ConfigError(f"role file {where}: {', '.join(missing)} missing or not text")
    alias, module = str(data["alias"]), str(data["module"])
    # TaskWeaver's intros are bullet lines; the Planner's prompt puts one line after the alias.
    intro = " ".join(line.strip().lstrip("-").strip() for line in str(data["intro"]).splitlines() if line.strip())
    if not _ALIAS.match(alias):
        raise ConfigError(f"role file {where}: alias {alias!r} must be a word (letters, digits, _)")
    if not _MODULE.match(module):
        raise ConfigError(f"role file {where}: module {module!r} must be a dotted path ending in the class name")
    cls = _role_class(path.parent, name, module, where)
    return RoleEntry(name=name, alias=alias, intro=intro, cls=cls, file=path)


def _role_class(folder: Path, name: str, module: str, where: str) -> type[ExtRole]:
    """The class ``module`` names: from the file of its module's last part in the role's folder
    when there is one (an app's roles are not a package), else imported by its dotted path."""
    module_path, class_name = module.rsplit(".", 1)
    source = folder / f"{module_path.rsplit('.', 1)[-1]}.py"
    try:
        if source.is_file() and not module_path.startswith("core.roles."):
            unique = f"weaver_roles.{name}.{source.stem}"
            spec = importlib.util.spec_from_file_location(unique, source)
            assert spec is not None and spec.loader is not None
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[unique] = loaded
            spec.loader.exec_module(loaded)
        else:
            loaded = importlib.import_module(module_path)
    except Exception as exc:  # the app's code: any error there stops start-up, named
        problem = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        raise ConfigError(f"role file {where}: module {module_path} failed to load ({problem})") from None
    cls = getattr(loaded, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ExtRole)):
        raise ConfigError(f"role file {where}: {module} is not a class derived from core.roles.ext.ExtRole")
    return cls


def role_prompt(role_file: Path, keys: tuple[str, ...]) -> PromptTemplates:
    """The role's ``prompt.yaml`` beside its role file, with the text ``keys`` it must hold; a
    missing or broken one stops start-up naming the file."""
    path = role_file.parent / "prompt.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"role prompt {path}: cannot be read ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or any(not isinstance(data.get(k), str) for k in keys):
        raise ConfigError(f"role prompt {path}: needs the text keys {', '.join(keys)}")
    return PromptTemplates(role_file.parent.name, {k: data[k] for k in keys}, str(path))
