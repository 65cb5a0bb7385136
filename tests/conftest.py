"""Shared fixtures: an app on the offline backend, in a temporary copy of the fixture project."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from core import TaskWeaverApp
from tests.llm_server import llm_server  # noqa: F401  (fixture)

FIXTURE_APP = Path(__file__).parent / "app_fixture"

# A developer's own OpenAI key would switch the default backend (and the servers the tests start)
# from offline to the real service.
os.environ.pop("OPENAI_API_KEY", None)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def cgroups_of(pid: int) -> dict[str, str]:
    """The process's cgroup (v1) path in each hierarchy, by controller (``cpu``, ``memory``, ...)."""
    found = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in filter(None, names.split(",")):
            found[name] = path
    return found


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("app")
    shutil.copytree(FIXTURE_APP, target, dirs_exist_ok=True)
    return target


@pytest.fixture(scope="module")
def app(app_dir: Path) -> Iterator[TaskWeaverApp]:
    application = TaskWeaverApp(app_dir=app_dir)
    yield application
    application.stop()
