"""Runs INSIDE a session's kernel: shell setup, plugin loading and per-execution bookkeeping.

The executor calls these functions through silent executes; results travel back as JSON strings
in ``user_expressions`` so nothing reaches the user's stdout. Importing this module changes
nothing: ``bootstrap`` does the work.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import traceback
import types
from pathlib import Path
from typing import Any

from core.compat.autoload import MARKER
from core.compat.autoload import install as install_finder
from core.plugins import api

TABLE_MIME = "application/vnd.weaver.table+json"
TABLE_MAX_ROWS = 20  # the server clips again to execution.max_table_rows / max_table_columns
TABLE_MAX_COLUMNS = 200
_ALIASES = ("taskweaver.plugin.base", "taskweaver.plugin.context", "taskweaver.plugin.register")

_ctx: api.PluginContext | None = None
_plugin_dir: Path | None = None  # plugin sources sent by the server (remote kernels only)


def bootstrap(payload_json: str) -> str:
    """Prepare the shell and load the plugins; returns ``{"loaded": [...], "errors": [...]}``."""
    global _ctx
    payload = json.loads(payload_json)
    _enter_workdir(payload.get("workdir"))
    shell = _shell()
    install_aliases()
    if shell is not None:
        configure_shell(shell)
    _ctx = api.PluginContext(payload.get("env_id", "local"), payload.get("session_id", ""), Path.cwd())
    limits = payload.get("session_var_limits")
    if isinstance(limits, list) and len(limits) == 2:
        _ctx.max_session_vars, _ctx.max_session_var_chars = int(limits[0]), int(limits[1])
    namespace = shell.user_ns if shell is not None else {}
    loaded, errors = load_plugins(payload.get("plugins", []), _ctx, namespace)
    return json.dumps({"loaded": loaded, "errors": errors})


def _enter_workdir(name: object) -> None:
    """A remote kernel works in a folder of its session's own (one plain name), made private."""
    if not name:
        return
    if not isinstance(name, str) or "/" in name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"refused working folder {name!r}")
    if os.path.basename(os.getcwd()) == name:  # bootstrapped again (a server adopted this kernel)
        return
    os.makedirs(name, mode=0o700, exist_ok=True)
    os.chdir(name)
    os.environ["HOME"] = os.getcwd()


def _plugin_path(entry: dict[str, Any]) -> Path:
    """The plugin's file: where it is, or (a remote kernel) its source written to a private folder."""
    source = entry.get("source")
    if not isinstance(source, str):
        return Path(entry["path"])
    global _plugin_dir
    if _plugin_dir is None:
        _plugin_dir = Path(tempfile.mkdtemp(prefix="weaver-plugins-"))
    path = _plugin_dir / f"{entry['name']}.py"
    path.write_text(source, encoding="utf-8")
    return path


def begin_execution(payload_json: str) -> None:
    """Before user code: new execution id and the session's current variables."""
    payload = json.loads(payload_json)
    if _ctx is not None:
        _ctx.begin_execution(payload.get("execution_id", ""), payload.get("session_vars") or {})


def collect() -> str:
    """After user code: the artifacts, logs and session variables plugins recorded during this execution."""
    if _ctx is None:
        return json.dumps({"artifacts": [], "logs": [], "session_vars": {}})
    return json.dumps({"artifacts": _ctx.artifacts, "logs": _ctx.logs, "session_vars": _ctx.changed_session_vars})


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - the kernel always has IPython
        return None
    return get_ipython()


def install_aliases() -> None:
    """Make ``from taskweaver.plugin import ...`` resolve to our API without any package on disk."""
    root = sys.modules.get("taskweaver")
    if root is None:
        root = types.ModuleType("taskweaver", "Alias of core.plugins.api for TaskWeaver plugin files.")
        root.__path__ = []  # a package, so submodule imports resolve through sys.modules
        sys.modules["taskweaver"] = root
    setattr(root, MARKER, True)
    # taskweaver.plugin is a package (its .utils is a submodule) holding the API's names.
    package = types.ModuleType("taskweaver.plugin", api.__doc__)
    package.__dict__.update({name: getattr(api, name) for name in api.__all__})
    package.__path__ = []
    setattr(package, MARKER, True)
    sys.modules["taskweaver.plugin"] = package
    root.plugin = package  # type: ignore[attr-defined]
    for alias in _ALIASES:
        sys.modules[alias] = api
    install_finder()  # taskweaver.plugin.utils and the rest, imported only when a plugin asks


def configure_shell(shell: Any) -> None:
    """Show a trailing assignment like TaskWeaver and keep DataFrame results as tables."""
    shell.ast_node_interactivity = "last_expr_or_assign"
    formatters = shell.display_formatter.formatters
    if TABLE_MIME not in formatters:
        formatters[TABLE_MIME] = _table_formatter_class()(parent=shell.display_formatter)
    formatter = formatters[TABLE_MIME]
    formatter.enabled = True
    # By name, so pandas is not imported until the user imports it; pandas 3 reports the
    # public module ("pandas"), older versions the defining one.
    for module in ("pandas", "pandas.core.frame"):
        formatter.for_type_by_name(module, "DataFrame", table_json)
    for module in ("pandas", "pandas.core.series"):
        formatter.for_type_by_name(module, "Series", series_table_json)


def _table_formatter_class() -> type:
    from IPython.core.formatters import JSONFormatter
    from traitlets import Unicode

    class TableFormatter(JSONFormatter):
        format_type = Unicode(TABLE_MIME)
        print_method = "_repr_weaver_table_"

    return TableFormatter


def table_json(df: Any) -> dict[str, Any]:
    """The first rows of a DataFrame as strings; a meaningful index becomes the first column."""
    import pandas as pd

    frame = df.iloc[:TABLE_MAX_ROWS, :TABLE_MAX_COLUMNS]
    has_index = not (isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1)
    if has_index:
        frame = frame.reset_index()
    columns = [str(c) for c in frame.columns]
    rows = [[_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    return {"columns": columns, "rows": rows, "shape": list(df.shape)}


def series_table_json(series: Any) -> dict[str, Any]:
    return table_json(series.to_frame())


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def load_plugins(
    plugins: list[dict[str, Any]], ctx: api.PluginContext, namespace: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """Load each plugin file, instantiate its class and bind it under its name; collect errors."""
    loaded: list[str] = []
    errors: list[str] = []
    for entry in plugins:
        name = entry["name"]
        try:
            cls = _load_plugin_class(name, _plugin_path(entry))
            namespace[name] = cls(name, ctx, dict(entry.get("configurations") or {}))
        except _PluginLoadError as exc:
            errors.append(str(exc))
            continue
        except BaseException as exc:  # noqa: BLE001 - a plugin must never break the kernel
            errors.append(f"Plugin '{name}' could not be started: {_describe(exc)}.")
            continue
        loaded.append(name)
    return loaded, errors


class _PluginLoadError(Exception):
    pass


def _load_plugin_class(name: str, path: Path) -> type[api.Plugin]:
    module_name = f"_weaver_plugin_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise _PluginLoadError(f"Plugin '{name}' could not be loaded: {path} is not a Python file.")
    module = importlib.util.module_from_spec(spec)
    before = len(api.REGISTRY)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - syntax errors, import errors, SystemExit...
        sys.modules.pop(module_name, None)
        del api.REGISTRY[before:]
        raise _PluginLoadError(f"Plugin '{name}' could not be loaded from {path.name}: {_describe(exc)}.") from exc
    registered = api.REGISTRY[before:]
    if len(registered) != 1:
        found = "no class" if not registered else f"{len(registered)} classes"
        raise _PluginLoadError(
            f"Plugin '{name}' could not be loaded from {path.name}: it registers {found} "
            "with @register_plugin, exactly one is needed."
        )
    return registered[0]


def _describe(exc: BaseException) -> str:
    """One line naming the exception, e.g. ``SyntaxError: invalid syntax (line 3)``."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})"
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__
