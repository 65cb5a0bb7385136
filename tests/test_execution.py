"""The execution layer against real kernels: what a user of a session would see."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.cancel import CancelToken
from core.execution.kernel import KernelExecutor
from core.execution.kernel_rpc import MAX_POLL_SECONDS, POLL_SECONDS, WAITING, WAITS_PER_POLL_STEP, poll_seconds
from core.execution.result import Artifact, ExecutionResult
from tests.conftest import pid_alive

pytestmark = pytest.mark.timeout(120)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelExecutor]:
    """One kernel shared by the tests whose state does not matter to each other."""
    ex = KernelExecutor("exec-tests", tmp_path_factory.mktemp("cwd"))
    yield ex
    ex.stop()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[KernelExecutor]:
    """A kernel of its own, for tests that kill or stop it."""
    ex = KernelExecutor("fresh", tmp_path / "cwd")
    yield ex
    ex.stop()


def test_last_expression_is_the_result(executor: KernelExecutor) -> None:
    res = executor.execute("6 * 7")
    assert res.is_success and res.error is None
    assert res.result == "42"
    assert "succeeded" in res.summary().splitlines()[0]


def test_trailing_assignment_is_shown(executor: KernelExecutor) -> None:
    assert executor.execute("answer = 40 + 2").result == "42"


def test_stdout_and_stderr_are_separate(executor: KernelExecutor) -> None:
    res = executor.execute("import sys\nprint('to out')\nprint('to err', file=sys.stderr)")
    assert res.stdout == "to out\n"
    assert res.stderr == "to err\n"
    assert res.result == ""


def test_state_persists_across_executes(executor: KernelExecutor) -> None:
    executor.execute("counter = 1")
    executor.execute("counter += 1")
    assert executor.execute("counter").result == "2"


def test_ipython_in_out_and_underscore_work(executor: KernelExecutor) -> None:
    """The kernel keeps no history database, but IPython's ``In``, ``Out`` and ``_`` still work."""
    assert executor.execute("6 * 7").result == "42"
    res = executor.execute("print(_, Out[max(Out)], In[-2])")
    assert res.is_success and res.stdout.strip() == "42 42 6 * 7", res.stdout


def test_kernel_runs_in_cwd_with_session_env(executor: KernelExecutor) -> None:
    res = executor.execute("import os\nprint(os.getcwd()); print(os.environ['WEAVER_SESSION_ID'])")
    assert res.stdout.split() == [str(executor.cwd), "exec-tests"]


def test_raising_cell_reports_the_exception(executor: KernelExecutor) -> None:
    res = executor.execute("def f():\n    return {}['missing']\nf()")
    assert not res.is_success
    assert res.error is not None and "KeyError" in res.error and "missing" in res.error
    assert "\x1b[" not in res.error, "ANSI colour codes must be stripped"
    assert "failed" in res.summary().splitlines()[0]
    assert "KeyError" in res.summary()


def test_syntax_error_is_reported(executor: KernelExecutor) -> None:
    res = executor.execute("def broken(:\n    pass")
    assert not res.is_success and "SyntaxError" in (res.error or "")


def test_timeout_interrupts_and_keeps_state(executor: KernelExecutor) -> None:
    executor.execute("kept = 'still here'")
    started = time.monotonic()
    res = executor.execute("while True: pass", timeout=2)
    assert time.monotonic() - started < 10
    assert res.timed_out and not res.is_success and not res.kernel_died
    assert "exceeded 2 s" in (res.error or "")
    after = executor.execute("kept")
    assert after.is_success and after.result == "'still here'"


def _cancelled_after_half_a_second(executor: KernelExecutor) -> tuple[ExecutionResult, float]:
    """A long loop, cancelled from another thread after 0.5 s: its result and the seconds it took."""
    token = CancelToken()
    timer = threading.Timer(0.5, token.cancel)
    timer.start()
    try:
        started = time.monotonic()
        res = executor.execute("import time\nfor _ in range(1000):\n    time.sleep(0.05)", cancel=token)
    finally:
        timer.cancel()
    return res, time.monotonic() - started


def test_cancel_from_another_thread(executor: KernelExecutor) -> None:
    res, took = _cancelled_after_half_a_second(executor)
    assert res.cancelled and not res.is_success and not res.timed_out
    assert took < 10
    assert "cancelled" in res.summary().splitlines()[0]
    assert executor.execute("1 + 1").result == "2"


def test_many_waits_at_once_poll_less_often_and_a_cancel_still_gets_through(executor: KernelExecutor) -> None:
    """When kernels fall behind, waits pile up; their polls slow down together so that their
    wake-ups do not take the CPU the kernels need, and a run still ends, and still stops on cancel."""
    assert poll_seconds(1) == poll_seconds(WAITS_PER_POLL_STEP) == POLL_SECONDS
    assert POLL_SECONDS < poll_seconds(4 * WAITS_PER_POLL_STEP) < MAX_POLL_SECONDS == poll_seconds(10_000)
    before = WAITING.count
    with contextlib.ExitStack() as others:
        for _ in range(199):  # the process's other waits, as in a crowd
            others.enter_context(WAITING)
        assert executor.execute("6 * 7").result == "42"
        res, took = _cancelled_after_half_a_second(executor)
        assert res.cancelled and took < 10
    assert WAITING.count == before  # every wait that ended left the count
    assert executor.execute("1 + 1").result == "2"


def test_already_cancelled_token_runs_nothing(executor: KernelExecutor) -> None:
    token = CancelToken()
    token.cancel()
    res = executor.execute("never_defined = 1", cancel=token)
    assert res.cancelled
    assert "NameError" in (executor.execute("never_defined").error or "")


def test_matplotlib_figure_becomes_png_artifact(executor: KernelExecutor) -> None:
    res = executor.execute("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('trend')\nplt.show()")
    assert res.is_success, res.error
    images = [a for a in res.artifacts if a.type == "image"]
    assert len(images) == 1
    path = images[0].path
    assert path.is_absolute() and path.parent == executor.cwd
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.name in res.summary()


def test_dataframe_result_is_a_table(executor: KernelExecutor) -> None:
    code = "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Rome'] * 15, 'temp': range(30)})"
    res = executor.execute(code)
    assert res.is_success, res.error
    assert len(res.tables) == 1
    table = res.tables[0]
    assert table.columns == ["city", "temp"]
    assert table.shape == (30, 2)
    assert len(table.rows) == 20 and table.rows[1] == ["Rome", "1"]
    assert "Oslo" in res.result  # the text form is still the result


def test_long_output_is_cut_in_summary(executor: KernelExecutor) -> None:
    res = executor.execute("print('x' * 5000)")
    text = res.summary(max_chars=1500)
    assert "characters cut" in text
    assert len(text) < 2000
    assert len(res.stdout) == 5001  # the full output is kept on the result


def test_summary_lists_artifacts_and_failure_reason(tmp_path: Path) -> None:
    res = ExecutionResult(
        execution_id="e",
        code="",
        is_success=False,
        result="",
        stdout="",
        stderr="",
        error="boom",
        artifacts=[Artifact("p.png", tmp_path / "p.png", "image")],
        tables=[],
        logs=[],
        timed_out=True,
    )
    lines = res.summary().splitlines()
    assert lines[0] == "The execution failed (it timed out and was interrupted)."
    assert any("p.png" in line for line in lines)


def test_crash_restarts_a_fresh_kernel(fresh: KernelExecutor) -> None:
    fresh.execute("lost = 1")
    old_pid = fresh.pid
    res = fresh.execute("import os\nos._exit(1)")
    assert res.kernel_died and not res.is_success
    assert "lost" in (res.error or "")
    assert fresh.pid is not None and fresh.pid != old_pid
    assert old_pid is not None and not pid_alive(old_pid)
    assert fresh.execute("2 + 2").result == "4"
    assert "NameError" in (fresh.execute("lost").error or "")


def test_stop_ends_the_kernel_process(fresh: KernelExecutor) -> None:
    assert fresh.execute("1").is_success
    pid = fresh.pid
    assert pid is not None and pid_alive(pid)
    fresh.stop()
    assert not pid_alive(pid)
    assert fresh.pid is None
    fresh.stop()  # idempotent
    after = fresh.execute("1")
    assert not after.is_success and "stopped" in (after.error or "")


def test_executors_are_independent_and_run_concurrently(tmp_path: Path) -> None:
    executors = [KernelExecutor(f"s{i}", tmp_path / f"cwd{i}") for i in range(2)]
    results: dict[int, ExecutionResult] = {}
    try:
        for i, ex in enumerate(executors):
            ex.execute(f"mine = {i}")

        def run(i: int) -> None:
            results[i] = executors[i].execute("import time\ntime.sleep(0.3)\nmine")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for ex in executors:
            ex.stop()
    assert [results[i].result for i in range(2)] == ["0", "1"]


def test_code_ignoring_interrupts_gets_a_fresh_kernel(fresh: KernelExecutor) -> None:
    fresh.execute("lost = 1")
    old_pid = fresh.pid
    swallow = "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass"
    res = fresh.execute(swallow, timeout=1)
    assert res.timed_out and res.kernel_died and not res.is_success
    assert "restarted" in (res.error or "") and "lost" in (res.error or "")
    assert old_pid is not None and not pid_alive(old_pid)
    assert fresh.execute("3 * 3").result == "9"


def test_stop_while_code_runs(fresh: KernelExecutor) -> None:
    assert fresh.execute("1").is_success
    pid = fresh.pid
    assert pid is not None
    timer = threading.Timer(0.5, fresh.stop)
    timer.start()
    started = time.monotonic()
    res = fresh.execute("while True: pass")
    timer.join()
    assert res.cancelled and not res.is_success
    assert time.monotonic() - started < 15
    assert not pid_alive(pid)


def test_server_secrets_do_not_reach_user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEAVER_LLM__API_KEY", "sk-server")
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", "signing-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("PLUGIN_sql_API_KEY", "for-the-plugin")
    executor = KernelExecutor("secrets", tmp_path)
    try:
        names = ["WEAVER_LLM__API_KEY", "CHAINLIT_AUTH_SECRET", "OPENAI_API_KEY", "PLUGIN_sql_API_KEY"]
        res = executor.execute(f"import os\n[name for name in {names!r} if name in os.environ]")
    finally:
        executor.stop()
    assert res.result == "['PLUGIN_sql_API_KEY']"


def test_malformed_rich_output_is_skipped_not_fatal(executor: KernelExecutor) -> None:
    res = executor.execute(
        "display({'image/png': 'not base64!'}, raw=True)\n"
        "display({'application/vnd.weaver.table+json': {'shape': 'x'}}, raw=True)\n"
        "print('after')"
    )
    assert res.is_success and "after" in res.stdout
    assert not [a for a in res.artifacts if a.type == "image"]
