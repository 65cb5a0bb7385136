"""What pyproject.toml cannot say: put ``weaver_taskweaver_plugins.pth`` at the top of the installed
tree (site-packages, where Python reads ``.pth`` files at start-up), in wheels and in editable
installs (``pip install -e .``) alike. Its one line runs ``weaver_taskweaver_plugins.install()``:
see that module for why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "weaver_taskweaver_plugins.pth"
HERE = Path(__file__).resolve().parent


class BuildPyWithPth(build_py):
    """A wheel: the .pth beside the packages, so it lands in site-packages."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_file(str(HERE / PTH), str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode: Any = 1) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


class EditableWheelWithPth(editable_wheel):
    """An editable install: the same file at the top of the editable wheel, which pip unpacks
    into site-packages (setuptools leaves build_py's output and data_files out of it)."""

    def _run_build_commands(self, dist_name: str, unpacked_wheel: Any, build_lib: Any, tmp_dir: Any) -> Any:
        found = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        (Path(unpacked_wheel) / PTH).write_bytes((HERE / PTH).read_bytes())
        return found


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
