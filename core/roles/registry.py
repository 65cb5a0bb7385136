"""Which roles a session has, by alias, and how each is built for a session.

The Planner is always there; ``session.roles`` names the workers: ``code_interpreter`` (built in)
and any role folder shipped in ``core/roles/<name>/`` or found in ``<app_dir>/roles/<name>/``
(``core/roles/ext.py``). What is registered is what the Planner is told about and may address.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from core.config import AppConfig
from core.errors import ConfigError
from core.roles.base import Role
from core.roles.code_interpreter import CodeInterpreter
from core.roles.deps import RoleDeps
from core.roles.ext import RoleEntry, load_role_entry, role_files
from core.roles.planner import Planner
from core.roles.protocol import CODE_INTERPRETER, PLANNER, USER

__all__ = ["RoleDeps", "RoleRegistry", "build_role_registry", "default_role_registry", "SHIPPED_ROLES"]

RoleFactory = Callable[[RoleDeps], Role]
SHIPPED_ROLES = Path(__file__).parent  # core/roles/<name>/<name>.role.yaml
BUILT_IN = {"planner": PLANNER, "code_interpreter": CODE_INTERPRETER}


class RoleRegistry:
    def __init__(self) -> None:
        self._factories: dict[str, RoleFactory] = {}
        self._intros: dict[str, str] = {}

    def register(self, alias: str, factory: RoleFactory, intro: str = "") -> None:
        if alias in self._factories or alias == USER:
            raise ConfigError(f"two roles are called {alias!r}")
        self._factories[alias] = factory
        self._intros[alias] = intro

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._factories)

    @property
    def intros(self) -> dict[str, str]:
        """How the Planner is told what each role does (a role file's ``intro``)."""
        return dict(self._intros)

    def create_roles(self, deps: RoleDeps) -> dict[str, Role]:
        """Each role gets its own model where ``deps.role_llms`` has one, else ``deps.llm``."""
        deps = replace(deps, intros={**self._intros, **deps.intros})
        return {
            alias: factory(replace(deps, llm=deps.role_llms[alias]) if alias in deps.role_llms else deps)
            for alias, factory in self._factories.items()
        }


def _planner(d: RoleDeps) -> Role:
    return Planner(d.llm, d.config, workers=d.workers, plugins_prompt=d.plugins_prompt, intros=d.intros)


def _code_interpreter(d: RoleDeps) -> Role:
    return CodeInterpreter(
        d.llm,
        d.config,
        executor=d.executor,
        plugins_prompt=d.plugins_prompt,
        plugin_specs=d.plugin_specs,
        plugin_selector=d.plugin_selector,
    )


def default_role_registry() -> RoleRegistry:
    """The Planner and the CodeInterpreter (``session.roles``' default)."""
    registry = RoleRegistry()
    registry.register(PLANNER, _planner)
    registry.register(CODE_INTERPRETER, _code_interpreter)
    return registry


def available_roles(app_dir: Path | None) -> dict[str, RoleEntry]:
    """Every role folder, shipped then the app's, read and checked now: a broken file stops
    start-up naming it. An app role may not take a shipped role's name."""
    entries: dict[str, RoleEntry] = {}
    for path in role_files(SHIPPED_ROLES):
        entries[path.parent.name] = load_role_entry(path)
    for path in role_files(app_dir / "roles") if app_dir is not None else []:
        name = path.parent.name
        if name in entries or name in BUILT_IN:
            raise ConfigError(f"role file {path}: a role named {name!r} is built in; name the folder differently")
        entries[name] = load_role_entry(path)
    return entries


def build_role_registry(config: AppConfig, app_dir: Path | None) -> RoleRegistry:
    """The Planner plus the workers ``session.roles`` lists, in its order; an unknown name stops
    start-up with the names that are available."""
    entries = available_roles(app_dir)
    registry = RoleRegistry()
    registry.register(PLANNER, _planner)
    for name in dict.fromkeys(config.session.roles):
        if name == "planner":
            continue
        if name == "code_interpreter":
            registry.register(CODE_INTERPRETER, _code_interpreter)
        elif name in entries:
            entry = entries[name]
            if entry.alias in registry.aliases or entry.alias == USER:
                raise ConfigError(f"role file {entry.file}: the alias {entry.alias!r} is taken by another role")
            entry.cls.check_settings(dict(config.role_settings.get(name, {})))
            registry.register(entry.alias, entry.create, entry.intro)
        else:
            known = ", ".join(["planner", "code_interpreter", *sorted(entries)])
            raise ConfigError(f"session.roles: no role named {name!r} (available: {known})")
    return registry
