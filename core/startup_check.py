"""Every file the app reads at start, read once before anything is served.

``TaskWeaverApp`` reads its files as it builds itself, and a web server builds it only after it
has started serving: a bad file then left a server that answered but could not work. A command that
serves (``weaver ui``) or chats (``weaver chat``) calls ``check_app_files`` first, so such a file
stops it at once with one ``ConfigError`` naming the file and the problem. Only files are read
here: no kernel, no model client, no process.

What is read: ``taskweaver_config.json`` with the ``WEAVER_*`` environment and ``.env``, the
roles' prompt files (``planner.prompt_file_path``...), the roles' example conversations
(``planner_examples/``...), ``data/datasets.yaml`` and the plugins' YAML specs. A plugin the app
would skip with a warning stops the command here: whoever starts it is the one who can fix the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.config import AppConfig, load_config
from core.datasets import DatasetCatalog
from core.errors import ConfigError
from core.plugins.catalog import PluginCatalog
from core.roles.examples import check_example_folder
from core.roles.registry import build_role_registry
from core.workspace import Workspace


def data_folder(config: AppConfig, app_dir: Path) -> Path:
    """The project's datasets folder: ``execution.data_dir``, relative to the app folder, default ``data``."""
    folder = config.execution.data_dir or Path("data")
    return folder if folder.is_absolute() else app_dir / folder


def plugin_folder(config: AppConfig, app_dir: Path) -> Path:
    """The plugins folder: ``plugin_dir``, default ``<app_dir>/plugins``."""
    return config.plugin_dir or Workspace(app_dir).plugin_dir


def check_app_files(app_dir: Path, env_file: Path | None = None) -> AppConfig:
    """Read the app's files as ``TaskWeaverApp(app_dir)`` would; returns the config. Raises
    ``ConfigError`` (one line: the file, or the key, and what is wrong) at the first bad file.
    ``env_file``: the ``.env`` to read instead of the working directory's."""
    with _reading(f"{app_dir / 'taskweaver_config.json'} (or a prompt file it names)"):
        config = load_config(app_dir, env_file=env_file)  # the JSON file, the environment, the prompt files
    for section in (config.planner, config.code_interpreter):
        folder = section.example_base_path
        if section.use_example and folder is not None:
            with _reading(f"{folder} (an example file)"):  # ConfigError names the file and the line
                check_example_folder(folder, recursive=section.dynamic_example_sub_path)
    with _reading(f"{app_dir / 'roles'} (a role file)"):  # ConfigError names the role file
        build_role_registry(config, app_dir)
    with _reading(str(data_folder(config, app_dir) / "datasets.yaml")):
        DatasetCatalog.load(data_folder(config, app_dir))  # DatasetError names datasets.yaml and the entry
    plugins = plugin_folder(config, app_dir)
    with _reading(f"{plugins} (a plugin file)"):
        problems = PluginCatalog.load(plugins).errors
    if problems:
        raise ConfigError(f"{plugins}: {' '.join(problems)}")
    return config


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """A failure no reader foresaw still ends in one ``ConfigError`` naming the file being read, so
    the commands that call this print one line instead of a traceback."""
    try:
        yield
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"{what}: cannot be read (nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001 - any reader's surprise becomes the line that names the file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{what}: cannot be read ({type(exc).__name__}: {reason})") from None
