"""The app's plugins, loaded once from the plugin folder and shared by every session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.plugins.spec import PluginSpec, load_plugin_specs


@dataclass
class PluginCatalog:
    specs: list[PluginSpec] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, plugin_dir: Path | None) -> "PluginCatalog":
        """No folder means no plugins, which is not an error."""
        if plugin_dir is None or not plugin_dir.is_dir():
            return cls()
        specs, errors = load_plugin_specs(plugin_dir)
        return cls(specs, errors)

    def prompt(self) -> str:
        return describe_plugins(self.specs)


def describe_plugins(specs: list[PluginSpec]) -> str:
    """Plugins as the prompts describe them to the model."""
    return "\n\n".join(spec.format_prompt() for spec in specs)
