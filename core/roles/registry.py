"""Which roles a session has, by alias, and how each is built for a session."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from core.config import AppConfig
from core.execution.kernel import KernelExecutor
from core.llm.base import LLMBackend
from core.plugins.selection import PluginSelector
from core.plugins.spec import PluginSpec
from core.roles.base import Role
from core.roles.code_interpreter import CodeInterpreter
from core.roles.planner import Planner
from core.roles.protocol import CODE_INTERPRETER, PLANNER


@dataclass
class RoleDeps:
    """What a role may need from its session."""

    llm: LLMBackend
    config: AppConfig
    executor: KernelExecutor
    plugins_prompt: Callable[[], str]
    workers: tuple[str, ...]
    role_llms: Mapping[str, LLMBackend] = field(default_factory=dict)  # a role's own model (its llm_alias)
    plugin_specs: Callable[[], list[PluginSpec]] = list  # the plugins the session can call now
    plugin_selector: PluginSelector | None = None  # the app's, for auto plugin selection


RoleFactory = Callable[[RoleDeps], Role]


class RoleRegistry:
    def __init__(self) -> None:
        self._factories: dict[str, RoleFactory] = {}

    def register(self, alias: str, factory: RoleFactory) -> None:
        self._factories[alias] = factory

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def create_roles(self, deps: RoleDeps) -> dict[str, Role]:
        """Each role gets its own model where ``deps.role_llms`` has one, else ``deps.llm``."""
        return {
            alias: factory(replace(deps, llm=deps.role_llms[alias]) if alias in deps.role_llms else deps)
            for alias, factory in self._factories.items()
        }


def default_role_registry() -> RoleRegistry:
    registry = RoleRegistry()
    registry.register(PLANNER, lambda d: Planner(d.llm, d.config, workers=d.workers, plugins_prompt=d.plugins_prompt))
    registry.register(
        CODE_INTERPRETER,
        lambda d: CodeInterpreter(
            d.llm,
            d.config,
            executor=d.executor,
            plugins_prompt=d.plugins_prompt,
            plugin_specs=d.plugin_specs,
            plugin_selector=d.plugin_selector,
        ),
    )
    return registry
