"""Plugin descriptions in TaskWeaver's YAML format, and their rendering for the LLM prompt."""

from __future__ import annotations

import keyword
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class PluginParameter(BaseModel):
    """One argument or return value, as the YAML describes it."""

    model_config = ConfigDict(extra="ignore")

    name: str
    type: str
    required: bool = False
    description: str = ""

    @field_validator("type", "description", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return "" if value is None else str(value)


class PluginSpec(BaseModel):
    """A plugin's YAML plus where its code lives (``code_path``), ready to load into a kernel."""

    model_config = ConfigDict(extra="ignore")

    name: str
    enabled: bool = True
    required: bool = False
    plugin_only: bool = False
    description: str = ""
    examples: str = ""
    parameters: list[PluginParameter]
    returns: list[PluginParameter]
    configurations: dict[str, Any] = Field(default_factory=dict)
    code: str | None = None
    yaml_path: Path | None = None
    code_path: Path | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        # Generated code calls the plugin by this name, so it must be a usable Python name.
        if not value.isidentifier() or keyword.iskeyword(value):
            raise ValueError(f"{value!r} is not a valid Python name")
        return value

    @field_validator("description", "examples", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return "" if value is None else str(value)

    @field_validator("configurations", mode="before")
    @classmethod
    def _configs(cls, value: Any) -> Any:
        return {} if value is None else value

    def format_prompt(self) -> str:
        """A Python-signature-like description the LLM can call from generated code."""
        params = sorted(self.parameters, key=lambda p: not p.required)
        args = ", ".join(f"{p.name}: {p.type}" + ("" if p.required else " = None") for p in params)
        lines = [f"def {self.name}({args}) -> {self._returns_annotation()}:", '    """']
        lines += _indent(self.description.strip() or "(no description)")
        if params:
            lines += ["", "    Args:"]
            lines += [_param_line(p, show_required=True) for p in params]
        if self.returns:
            lines += ["", "    Returns:"]
            lines += [_param_line(p, show_required=False) for p in self.returns]
        if self.examples.strip():
            lines += ["", "    Examples:"]
            lines += _indent(self.examples.strip(), "        ")
        lines.append('    """')
        return "\n".join(lines)

    def _returns_annotation(self) -> str:
        if not self.returns:
            return "None"
        if len(self.returns) == 1:
            return self.returns[0].type
        return "tuple[" + ", ".join(r.type for r in self.returns) + "]"


def _param_line(p: PluginParameter, show_required: bool) -> str:
    flag = ", required" if show_required and p.required else (", optional" if show_required else "")
    desc = " ".join(p.description.split())
    return f"        {p.name} ({p.type}{flag}): {desc}".rstrip()


def _indent(text: str, prefix: str = "    ") -> list[str]:
    return [f"{prefix}{line}".rstrip() for line in text.splitlines()]


class PluginSpecError(ValueError):
    """One plugin's YAML or code file is unusable; the message is a sentence for the user."""


def parse_plugin_yaml(yaml_path: Path) -> PluginSpec:
    """Read one YAML file into a spec whose code file exists; raise ``PluginSpecError`` otherwise."""
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as exc:  # ValueError: not UTF-8
        raise PluginSpecError(f"Plugin file {yaml_path.name} is not readable YAML: {_one_line(exc)}.") from exc
    if not isinstance(data, dict):
        raise PluginSpecError(f"Plugin file {yaml_path.name} must hold a mapping of plugin fields.")
    try:
        spec = PluginSpec.model_validate({**data, "yaml_path": yaml_path, "code_path": None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'plugin'}: {err['msg']}" for err in exc.errors()
        )
        raise PluginSpecError(f"Plugin file {yaml_path.name} is invalid ({problems}).") from None
    code_path = yaml_path.parent / f"{spec.code or spec.name}.py"
    if spec.enabled and not code_path.is_file():
        raise PluginSpecError(
            f"Plugin '{spec.name}' ({yaml_path.name}) has no code file: {code_path.name} was not found."
        )
    return spec.model_copy(update={"code_path": code_path.resolve(), "yaml_path": yaml_path.resolve()})


def load_plugin_specs(plugin_dir: Path | None) -> tuple[list[PluginSpec], list[str]]:
    """All enabled plugins of a folder plus one sentence per unusable plugin; never raises for one."""
    if plugin_dir is None:
        return [], []
    plugin_dir = Path(plugin_dir)
    if not plugin_dir.is_dir():
        return [], [f"The plugin folder {plugin_dir} does not exist."]
    specs: dict[str, PluginSpec] = {}
    errors: list[str] = []
    files = sorted([*plugin_dir.glob("*.yaml"), *plugin_dir.glob("*.yml")])
    for yaml_path in files:
        try:
            spec = parse_plugin_yaml(yaml_path)
        except PluginSpecError as exc:
            errors.append(str(exc))
            continue
        if not spec.enabled:
            continue
        if spec.name in specs:
            errors.append(
                f"Plugin '{spec.name}' is defined twice ({Path(str(specs[spec.name].yaml_path)).name} and "
                f"{yaml_path.name}); only the first is used."
            )
            continue
        specs[spec.name] = spec
    return list(specs.values()), errors


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
