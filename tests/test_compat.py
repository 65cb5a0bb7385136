"""TaskWeaver code on Weaver: an application script using TaskWeaver's import paths, the refusal
when a real TaskWeaver is present, and a plugin file's own test block. Each runs in a fresh Python
so the stand-in modules never leak into this test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path(__file__).parent / "plugin_fixtures"
REPO = Path(__file__).resolve().parent.parent

# Written the way TaskWeaver's docs and playground use the API.
APP_SCRIPT = """
import core.compat.taskweaver  # Weaver stands in for TaskWeaver's import paths

import json
import os
import sys

from taskweaver.app.app import TaskWeaverApp
from taskweaver.memory import Attachment, Post, Round
from taskweaver.memory.attachment import AttachmentType
from taskweaver.memory.type_vars import RoleName
from taskweaver.module.event_emitter import PostEventType, RoundEventType, SessionEventHandlerBase, TaskWeaverEvent
from taskweaver.session.session import Session


class Handler(SessionEventHandlerBase):
    def __init__(self) -> None:
        self.new_posts: list = []
        self.artifacts: list = []
        self.ended = False

    def handle_round(self, type: RoundEventType, msg: str, extra, round_id: str, **kwargs) -> None:
        if type == RoundEventType.round_new_post:
            self.new_posts.append(msg)
        elif type == RoundEventType.round_end:
            self.ended = True

    def handle_post(self, type: PostEventType, msg: str, extra, post_id: str, round_id: str, **kwargs) -> None:
        if type == PostEventType.post_attachment_update and extra["type"] == AttachmentType.artifact_paths:
            self.artifacts.append(extra["id"])


app_dir, plugins, data = sys.argv[1:4]
config = {"plugin.base_path": plugins, "llm.api_type": "offline"}
app = TaskWeaverApp(app_dir=app_dir, use_local_uri=True, config=config)
session: Session = app.get_session()
session.update_session_var({"user_name": "alice"})
handler = Handler()
code = "import pandas as pd\\nrows = len(pd.read_csv('numbers.csv'))\\ndf, note = save_table(rows)\\nprint(note)"
rnd: Round = session.send_message(
    f"```python\\n{code}\\n```", event_handler=handler, files=[{"name": "numbers.csv", "path": data}]
)
paths = []
for post in rnd.post_list:
    assert isinstance(post, Post)
    for attachment in post.attachment_list:
        assert isinstance(attachment, Attachment)
        if attachment.type == AttachmentType.artifact_paths:
            paths.extend(attachment.content)
sender: RoleName = rnd.post_list[-1].send_from
print(json.dumps({
    "state": rnd.state,
    "reply": rnd.reply_text,
    "paths": paths,
    "files": [os.path.isfile(p) for p in paths],
    "download_names": [os.path.basename(p) for p in paths],
    "new_posts": len(handler.new_posts),
    "posts": len(rnd.post_list),
    "artifact_events": len(handler.artifacts),
    "ended": handler.ended,
    "last_sender": str(sender),
}))
session.stop()
app.stop()
"""

PLUGIN_FILE = """
from taskweaver.plugin import Plugin, register_plugin


@register_plugin
class Shout(Plugin):
    def __call__(self, text: str):
        self.ctx.add_artifact("shout", "shout.txt", "txt", text.upper())
        return text.upper() + self.ctx.get_session_var("suffix", "!")


if __name__ == "__main__":
    from taskweaver.plugin.context import temp_context
    from taskweaver.plugin.utils import make_api_call

    with temp_context() as temp_ctx:
        shout = Shout(name="shout", ctx=temp_ctx, config={})
        print(shout(text="hello"), temp_ctx.execution_id, callable(make_api_call))
"""


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """A fresh Python on this checkout (first on the path, whatever the installed copy points at)."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=100, env=env, cwd=cwd)


def test_a_taskweaver_application_script_runs_a_round(tmp_path: Path) -> None:
    script = tmp_path / "tw_app.py"
    script.write_text(APP_SCRIPT)
    data = tmp_path / "numbers.csv"
    data.write_text("x\n" + "\n".join(str(i) for i in range(1, 6)) + "\n")
    done = run([str(script), str(tmp_path / "project"), str(FIXTURES), str(data)])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["state"] == "finished" and result["ended"]
    assert "saved 5 rows" in result["reply"]
    assert result["last_sender"] == "Planner"
    [path] = result["paths"]  # TaskWeaver's shape: path strings, absolute with use_local_uri
    assert Path(path).is_absolute() and result["files"] == [True]
    assert result["download_names"] == ["sales.csv"]
    assert result["artifact_events"] == 1
    assert result["new_posts"] == result["posts"] - 1  # every post but the user's own arrives as round_new_post


def test_the_layer_refuses_to_stand_in_for_a_real_taskweaver(tmp_path: Path) -> None:
    real = tmp_path / "site" / "taskweaver"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    done = run(["-c", "import core.compat.taskweaver"], env={"PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode != 0
    assert "a real TaskWeaver is installed" in done.stderr and str(real) in done.stderr
    # Nor does the plugin finder shadow it: the real package is the one imported.
    check = "import core.compat.autoload as a; a.install(); import taskweaver; print(taskweaver.REAL)"
    done = run(["-c", check], env={"PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


def test_a_plugin_files_own_test_block_runs(tmp_path: Path) -> None:
    plugin = tmp_path / "shout.py"
    plugin.write_text(PLUGIN_FILE)
    # No install step: python -m core.compat FILE runs the file with TaskWeaver's plugin imports served.
    done = run(["-m", "core.compat", str(plugin)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["HELLO!", "test", "True"]


def test_fixture_plugins_run_standalone_with_temp_context(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import runpy, core.compat.autoload as a
        a.install()
        from taskweaver.plugin.context import temp_context
        ns = runpy.run_path({str(FIXTURES / "save_table.py")!r})
        with temp_context() as ctx:
            df, note = ns["SaveTable"]("save_table", ctx, {{}})(2)
            print(note, len(ctx.artifacts))
        """
    )
    done = run(["-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "saved 2 rows 1"
