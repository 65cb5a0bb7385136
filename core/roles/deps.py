"""What a role may need from its session: the one bundle every role factory is given."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from core.config import AppConfig
from core.execution.kernel import KernelExecutor
from core.llm.base import LLMBackend
from core.plugins.selection import PluginSelector
from core.plugins.spec import PluginSpec


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
    intros: Mapping[str, str] = field(default_factory=dict)  # worker alias -> its intro, for the Planner
