"""The plugin author's API, importable as ``taskweaver.plugin`` inside a session's kernel.

Kept free of pandas/matplotlib imports so loading it costs nothing; values are recognised by shape.
"""

from __future__ import annotations

import abc
import contextlib
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, TypeVar

ArtifactType = Literal["chart", "image", "df", "file", "txt", "svg", "html"]
LogErrorLevel = Literal["info", "warning", "error"]

_DEFAULT_SUFFIX = {"chart": ".png", "image": ".png", "df": ".csv", "txt": ".txt", "svg": ".svg", "html": ".html"}


class PluginEnvError(KeyError):
    """A plugin asked for an environment variable that is not set."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SessionVarError(ValueError):
    """``set_session_var`` was given a bad name or value, or the session holds too many variables."""


MAX_SESSION_VAR_NAME = 128  # characters of a session variable's name


class PluginContext:
    """What a plugin may see and do in its session; the runtime updates it before each execution."""

    def __init__(self, env_id: str, session_id: str, cwd: Path) -> None:
        self.env_id = env_id
        self.session_id = session_id
        self.cwd = Path(cwd).resolve()
        self.execution_id = ""
        self.session_vars: dict[str, str] = {}
        self.artifacts: list[dict[str, str]] = []
        self.logs: list[str] = []
        # Variables set during this execution, reported back to the session; the bounds are
        # session.max_session_vars and session.max_session_var_chars (set by the runtime).
        self.changed_session_vars: dict[str, str] = {}
        self.max_session_vars = 100
        self.max_session_var_chars = 4000

    def begin_execution(self, execution_id: str, session_vars: dict[str, str]) -> None:
        """Reset the per-execution lists so artifacts and logs belong to exactly one execution."""
        self.execution_id = execution_id
        self.session_vars = dict(session_vars)
        self.artifacts = []
        self.logs = []
        self.changed_session_vars = {}

    def get_session_var(self, variable_name: str, default: str | None = None) -> str | None:
        return self.session_vars.get(variable_name, default)

    def set_session_var(self, variable_name: str, value: str) -> None:
        """Set one of the session's variables (a Weaver extension; TaskWeaver's plugins only read
        them). Later code and plugins of the session read it, and so does the app
        (``Session.session_var``). Raises ``SessionVarError`` for a name or value that is not a
        str, a value over ``session.max_session_var_chars``, or a new variable past
        ``session.max_session_vars``."""
        if not isinstance(variable_name, str) or not variable_name or len(variable_name) > MAX_SESSION_VAR_NAME:
            raise SessionVarError(
                f"set_session_var needs a name that is a non-empty str of at most {MAX_SESSION_VAR_NAME} "
                f"characters, not {variable_name!r:.60}"
            )
        if not isinstance(value, str):
            raise SessionVarError(
                f"set_session_var({variable_name!r}, ...) needs a str value, not {type(value).__name__}; "
                "convert it (str(), json.dumps()) first"
            )
        if len(value) > self.max_session_var_chars:
            raise SessionVarError(
                f"set_session_var({variable_name!r}, ...): the value has {len(value)} characters, more than the "
                f"{self.max_session_var_chars} allowed (session.max_session_var_chars)"
            )
        if variable_name not in self.session_vars and len(self.session_vars) >= self.max_session_vars:
            raise SessionVarError(
                f"set_session_var({variable_name!r}, ...): the session already holds {len(self.session_vars)} "
                f"variables, the most allowed (session.max_session_vars)"
            )
        self.session_vars[variable_name] = value
        self.changed_session_vars[variable_name] = value

    def log(self, level: str, tag: str, message: str) -> None:
        self.logs.append(f"{str(level).upper()} [{tag}] {message}")

    def get_env(self, plugin_name: str, variable_name: str) -> str:
        """Read ``PLUGIN_<plugin>_<var>``; namespacing stops two plugins clashing on one name."""
        key = f"PLUGIN_{plugin_name}_{variable_name}"
        if key not in os.environ:
            raise PluginEnvError(f"Set the environment variable {key} to use the {plugin_name} plugin.")
        return os.environ[key]

    def create_artifact_path(self, name: str, file_name: str, type: ArtifactType, desc: str = "") -> tuple[str, str]:
        """Reserve a fresh file in cwd and record it; the plugin writes the file itself."""
        artifact_id = f"atf-{secrets.token_hex(4)}"
        path = unique_path(self.cwd, file_name, _DEFAULT_SUFFIX.get(type, ""))
        path.touch()
        self.artifacts.append({"id": artifact_id, "name": name, "path": str(path), "type": type, "description": desc})
        return artifact_id, str(path)

    def add_artifact(self, name: str, file_name: str, type: ArtifactType, val: Any, desc: str = "") -> str:
        """Save ``val`` (DataFrame → CSV, figure/image → PNG, str/bytes as-is) in cwd; returns its id."""
        artifact_id, path = self.create_artifact_path(name, file_name, type, desc)
        try:
            _write_value(Path(path), val)
        except Exception:
            self.artifacts.pop()
            Path(path).unlink(missing_ok=True)
            raise
        return artifact_id


def _write_value(path: Path, val: Any) -> None:
    if hasattr(val, "to_csv"):
        val.to_csv(path, index=False)
    elif hasattr(val, "savefig"):
        val.savefig(path, format=_image_format(path))
    elif hasattr(val, "save") and hasattr(val, "mode"):
        val.save(path)
    elif isinstance(val, str):
        path.write_text(val, encoding="utf-8")
    elif isinstance(val, (bytes, bytearray)):
        path.write_bytes(bytes(val))
    else:
        raise TypeError(
            f"add_artifact cannot save a {type(val).__name__}; "
            "pass a DataFrame, a matplotlib figure, a PIL image, str or bytes"
        )


def _image_format(path: Path) -> str:
    return path.suffix.lstrip(".").lower() or "png"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def unique_path(folder: Path, file_name: str, default_suffix: str = "") -> Path:
    """A new readable file name inside ``folder``: no directories, no clobbering an existing file."""
    base = _UNSAFE.sub("_", Path(str(file_name)).name).strip("._") or "artifact"
    stem, suffix = os.path.splitext(base)
    suffix = suffix or default_suffix
    candidate = folder / f"{stem}{suffix}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    return candidate


class Plugin(abc.ABC):
    """Base class of a plugin: configured once per kernel, called from generated code by its name."""

    def __init__(self, name: str, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.name = name
        self.ctx = ctx
        self.config = config

    @abc.abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def log(self, level: LogErrorLevel, message: str) -> None:
        self.ctx.log(level, f"Plugin-{self.name}", message)

    def get_env(self, variable_name: str) -> str:
        return self.ctx.get_env(self.name, variable_name)


class TestPluginContext(PluginContext):
    """TaskWeaver's context for a plugin's own test block: ids are "test", files go to ``temp_dir``,
    ``env`` and ``session_vars`` are plain dicts the test may fill (``get_env`` falls back to the
    ``PLUGIN_<plugin>_<var>`` environment variable)."""

    __test__ = False  # not a pytest test class

    def __init__(self, temp_dir: str | Path) -> None:
        super().__init__("test", "test", Path(temp_dir))
        self.execution_id = "test"
        self.env: dict[str, str] = {}

    def get_env(self, plugin_name: str, variable_name: str) -> str:
        key = f"{plugin_name}_{variable_name}"
        return self.env[key] if key in self.env else super().get_env(plugin_name, variable_name)


@contextlib.contextmanager
def temp_context(workspace_dir: str | Path | None = None) -> Iterator[TestPluginContext]:
    """A ``TestPluginContext`` in a new temporary folder (inside ``workspace_dir`` if given),
    removed afterwards: ``with temp_context() as ctx: MyPlugin("name", ctx, {})(...)``."""
    if workspace_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="plugin-test-"))
    else:
        folder = Path(workspace_dir) / f"plugin-test-{secrets.token_hex(4)}"
        folder.mkdir(parents=True)
    try:
        yield TestPluginContext(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Classes registered while a plugin file is being loaded; the runtime takes the new entries.
REGISTRY: list[type[Plugin]] = []

T = TypeVar("T")


def register_plugin(target: T) -> T:
    """Mark a ``Plugin`` subclass (or a plain function, wrapped into one) as the file's plugin."""
    if isinstance(target, type):
        if not issubclass(target, Plugin):
            raise TypeError(f"@register_plugin needs a Plugin subclass, got {target.__name__}")
        REGISTRY.append(target)
        return target
    if callable(target):
        REGISTRY.append(_wrap_function(target))
        return target
    raise TypeError("@register_plugin needs a Plugin subclass or a function")


def _wrap_function(func: Callable[..., Any]) -> type[Plugin]:
    def __call__(self: Plugin, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return type(func.__name__, (Plugin,), {"__call__": __call__, "__doc__": func.__doc__})


def test_plugin(name: str | None = None, description: str | None = None) -> Callable[[T], T]:
    """TaskWeaver's plugin self-test marker; accepted so such files load, and otherwise unused."""

    def decorate(func: T) -> T:
        return func

    return decorate


test_plugin.__test__ = False  # type: ignore[attr-defined]  # not a pytest test

__all__ = [
    "ArtifactType",
    "LogErrorLevel",
    "Plugin",
    "PluginContext",
    "PluginEnvError",
    "SessionVarError",
    "TestPluginContext",
    "register_plugin",
    "temp_context",
    "test_plugin",
]
