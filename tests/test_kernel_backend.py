"""One kernel backend, chosen once from the config: a third one is one class and one name.

``RecordingBackend`` below is a whole backend: registered under a name, selected by
``execution.backend``, and every kernel the app starts (pool, new session, resumed session) is
made by it. The other tests pin today's choice (config -> class) and that no module outside the
backends asks for the gateway's address.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest

from core import TaskWeaverApp
from core.config import ExecutionSettings, load_config
from core.errors import ConfigError
from core.execution.backend import KernelBackend, backend_for, register_backend
from core.execution.gateway_backend import GatewayBackend
from core.execution.handle import KernelHandle
from core.execution.kernel_process import KernelProcess
from core.execution.local_backend import LocalBackend
from tests.conftest import FIXTURE_APP

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


@register_backend("recording")
class RecordingBackend(KernelBackend):
    """Local kernels whose every start is recorded: all a backend must say is how to make a kernel."""

    made: ClassVar[list[str]] = []

    def new_kernel(
        self,
        session_id: str,
        cwd: Path,
        extra_env: dict[str, str],
        start_timeout: float,
        read_only: list[Path],
        attach_to: str | None = None,
    ) -> KernelHandle:
        self.made.append(session_id)
        return KernelProcess(session_id, cwd, self.settings, extra_env, start_timeout, read_only)


def code(source: str) -> str:
    return f"Please run:\n```python\n{source}\n```"


def app_folder(tmp_path: Path, **config: Any) -> Path:
    shutil.copytree(FIXTURE_APP, tmp_path, dirs_exist_ok=True)
    (tmp_path / "taskweaver_config.json").write_text(json.dumps({"llm.api_type": "offline", **config}))
    return tmp_path


def test_a_registered_backend_selected_by_config_runs_every_kernel_of_the_app(tmp_path: Path) -> None:
    RecordingBackend.made.clear()
    folder = app_folder(tmp_path, **{"execution.backend": "recording", "execution.pool_size": 1})
    application = TaskWeaverApp(app_dir=folder)
    try:
        assert isinstance(application.kernel_backend, RecordingBackend)
        assert application.pool.wait_ready(1, 60)
        warm = RecordingBackend.made[0]
        session = application.get_session()
        assert session.session_id == warm, "the new session took the pool's kernel, made by the backend"
        assert session.executor.backend is application.kernel_backend
        rnd = session.send_message(code("print('through', 6 * 7)"))
        assert rnd.state == "finished" and "through 42" in rnd.reply_text, rnd.reply_text
        session.stop()

        resumed = application.open_session(warm)  # a new kernel for the same chat, made the same way
        rnd = resumed.send_message(code("print('again', 6 * 7)"))
        assert "again 42" in rnd.reply_text, rnd.reply_text
        assert RecordingBackend.made.count(warm) == 2
    finally:
        application.stop()


def test_weaver_check_reports_the_chosen_backends_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ui.cli import main

    folder = app_folder(tmp_path, **{"execution.backend": "recording"})
    assert main(["check", "--app-dir", str(folder)]) == 0
    assert "ok    kernels (recording): kernels can start" in capsys.readouterr().out
    (folder / "taskweaver_config.json").write_text(json.dumps({"execution.backend": "nope"}))
    assert main(["check", "--app-dir", str(folder)]) == 1
    assert "FAIL  kernels: execution.backend: no kernel backend 'nope'" in capsys.readouterr().out


def test_the_config_chooses_local_or_gateway_as_before(tmp_path: Path) -> None:
    assert type(backend_for(ExecutionSettings())) is LocalBackend
    remote = ExecutionSettings(gateway_url="http://127.0.0.1:1/")  # nothing is asked at construction
    assert type(backend_for(remote)) is GatewayBackend and backend_for(remote).kernels_outlive_server
    assert type(backend_for(remote.model_copy(update={"backend": "local"}))) is LocalBackend  # named wins
    named = load_config(tmp_path, {"execution.backend": " Gateway ", "execution.gateway_url": "http://h:1"})
    assert named.execution.backend_name == "gateway"
    with pytest.raises(ConfigError, match="execution.gateway_url is not set"):
        backend_for(ExecutionSettings(backend="gateway"))
    with pytest.raises(ConfigError, match=r"execution.backend: no kernel backend 'k8s'; known: .*gateway, local"):
        backend_for(ExecutionSettings(backend="k8s"))


ALLOWED = {  # the gateway's own modules, and the config field itself
    "core/config.py",
    "core/execution/gateway_backend.py",
    "core/execution/gateway_client.py",
    "core/execution/gateway_kernel.py",
}
CONCRETE = {  # a concrete kernel class: its own module and the one backend that makes it
    "KernelProcess": {"core/execution/kernel_process.py", "core/execution/local_backend.py"},
    "GatewayKernel": {"core/execution/gateway_kernel.py", "core/execution/gateway_backend.py"},
}


def gateway_questions(rel: str, source: str) -> list[str]:
    """Where module ``rel`` reads ``gateway_url`` (attribute, keyword, or its name as a string), or
    names a concrete kernel class outside the backend that makes it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if rel not in ALLOWED and (
            (isinstance(node, ast.Attribute) and node.attr == "gateway_url")
            or (isinstance(node, ast.keyword) and node.arg == "gateway_url")
            or (isinstance(node, ast.Constant) and node.value in ("gateway_url", "execution.gateway_url"))
        ):
            found.append(f"{rel}:{getattr(node, 'lineno', '?')} gateway_url")
        name = node.id if isinstance(node, ast.Name) else node.name if isinstance(node, ast.alias) else ""
        if name in CONCRETE and rel not in CONCRETE[name]:
            found.append(f"{rel}:{getattr(node, 'lineno', '?')} {name}")
    return found


def test_nothing_outside_the_backends_asks_local_or_gateway() -> None:
    sources = sorted([*REPO.joinpath("core").rglob("*.py"), *REPO.joinpath("ui").rglob("*.py")])
    assert len(sources) > 50
    hits = [hit for p in sources for hit in gateway_questions(p.relative_to(REPO).as_posix(), p.read_text())]
    assert hits == []
    # The check can fail: what core/app.py did before, and a concrete kernel class named in the UI.
    before = "if self.config.execution.gateway_url:\n    check_gateway(self.config.execution)\n"
    assert gateway_questions("core/app.py", before) == ["core/app.py:1 gateway_url"]
    assert gateway_questions("ui/server.py", "from core.execution.gateway_kernel import GatewayKernel\n")
    assert gateway_questions("core/execution/gateway_backend.py", before) == []


def test_weaver_ui_refuses_kernels_the_chosen_backend_cannot_run(tmp_path: Path) -> None:
    """Before serving anyone, ``weaver ui`` asks the backend's start-up check: a local backend told to
    sandbox without bubblewrap, or a backend name nobody registered, stops it with one sentence."""
    import os
    import subprocess

    from tests.ui_harness import REPO_ROOT, free_port, server_command

    no_tools = tmp_path / "bin"
    no_tools.mkdir()  # a PATH where bubblewrap cannot be found
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WEAVER_", "CHAINLIT_"))}
    base.update({"PATH": str(no_tools), "WEAVER_APP_DIR": str(tmp_path / "app"), "WEAVER_LLM__API_TYPE": "offline"})
    cases = {
        "execution.sandbox is 'bwrap' but bubblewrap (bwrap) is not installed": {"WEAVER_EXECUTION__SANDBOX": "bwrap"},
        "execution.backend: no kernel backend 'k8s'": {"WEAVER_EXECUTION__BACKEND": "k8s"},
    }
    for said_first, env in cases.items():
        cmd = server_command(free_port())
        done = subprocess.run(cmd, cwd=REPO_ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0, done.stderr
        refusal = [line for line in done.stderr.splitlines() if line.startswith("Weaver UI: ")]
        assert len(refusal) == 1 and said_first in refusal[0], done.stderr
        assert "Traceback" not in done.stderr, done.stderr
