"""A TaskWeaver plugin file's own ``if __name__ == "__main__":`` block runs with plain
``python plugin.py`` once Weaver is installed (TaskWeaver's FAQ way), through the
``weaver_taskweaver_plugins.pth`` that ``pip install -e .`` puts in site-packages.

The install is real: a throwaway virtual environment (seeing this Python's packages, so nothing is
downloaded) and ``pip install --no-deps --no-build-isolation --no-index -e <this checkout>``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.test_compat import PLUGIN_FILE

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    try:
        import setuptools
        from setuptools.command import editable_wheel  # noqa: F401  (PEP 660, setuptools >= 64)
    except ImportError:
        pytest.skip("setuptools >= 64 is needed to install this checkout without the network")
    assert setuptools.__version__
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(REPO)],
        capture_output=True,
        text=True,
        timeout=240,
        env=_clean_env(),
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield python


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH: the installed copy alone must serve the imports."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def run(python: Path, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=100, env=_clean_env(**env), cwd=cwd
    )


def test_a_plugin_files_own_test_block_runs_with_plain_python(venv_python: Path, tmp_path: Path) -> None:
    site = run(venv_python, ["-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip()
    assert (Path(site) / "weaver_taskweaver_plugins.pth").is_file()
    plugin = tmp_path / "shout.py"
    plugin.write_text(PLUGIN_FILE)
    done = run(venv_python, [str(plugin)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["HELLO!", "test", "True"]
    # The served package is this checkout's, not another copy of Weaver on the machine.
    where = run(venv_python, ["-c", "import taskweaver.plugin, core; print(core.__file__)"], tmp_path)
    assert where.stdout.strip() == str(REPO / "core" / "__init__.py"), where.stderr


def test_the_hook_loads_nothing_until_taskweaver_is_imported_and_serves_only_the_plugin_api(
    venv_python: Path, tmp_path: Path
) -> None:
    # A project's own package named "core" is not shadowed by Weaver's at start-up.
    done = run(venv_python, ["-c", "import sys; print('core' in sys.modules)"], tmp_path)
    assert done.stdout.strip() == "False", done.stderr
    # The application API stays opt-in (import core.compat.taskweaver), and opting in still works.
    done = run(venv_python, ["-c", "import taskweaver.app.app"], tmp_path)
    assert done.returncode != 0 and "No module named 'taskweaver.app'" in done.stderr
    opt_in = (
        "import core.compat.taskweaver\nfrom taskweaver.app.app import TaskWeaverApp\nprint(TaskWeaverApp.__module__)"
    )
    done = run(venv_python, ["-c", opt_in], tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "core.app", done.stderr


def test_the_hook_can_be_turned_off_and_never_shadows_a_real_taskweaver(venv_python: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "shout.py"
    plugin.write_text(PLUGIN_FILE)
    done = run(venv_python, [str(plugin)], tmp_path, WEAVER_TASKWEAVER_PLUGINS="0")
    assert done.returncode != 0 and "No module named 'taskweaver'" in done.stderr
    real = tmp_path / "site" / "taskweaver"
    (real / "plugin").mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    (real / "plugin" / "__init__.py").write_text("REAL_PLUGIN = True\n")
    done = run(
        venv_python,
        ["-c", "import taskweaver.plugin as p; print(p.REAL_PLUGIN)"],
        tmp_path,
        PYTHONPATH=str(tmp_path / "site"),
    )
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    assert not re.search(r"weaver", done.stderr, re.IGNORECASE)
