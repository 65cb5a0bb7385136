"""Memory per kernel: what a forked kernel shares with the fork server, and an idle chat giving its
kernel back (real kernels in their sandboxes; a real Chainlit server for the chat)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ExecutionSettings
from core.execution import kernel_main, sandbox
from core.execution.kernel import KernelExecutor
from core.execution.kernel_main import FIXED_ARGS
from core.execution.launcher import KERNEL_ARGS, kernel_env
from tests.conftest import pid_alive
from tests.ui_harness import (
    KERNEL_ID_CODE,
    answers,
    code_block,
    kernel_pid_in,
    start_server,
    steps,
    stop_server,
    wait_until,
)
from ui.lifecycle import idle_note
from ui.restore import TITLE as RESTORE_TITLE

pytestmark = pytest.mark.timeout(300)
NO_BWRAP = sandbox.bwrap_problem()
# Packages a kernel needs to start and serve: imported once in the fork server, never again per kernel.
SHARED_PACKAGES = ("ipykernel", "IPython", "zmq", "tornado", "traitlets", "jupyter_client", "jupyter_core", "comm")
IDLE_S = 3.0


def in_a_fork_server_python(code: str) -> bytes:
    """The standard output of ``code`` run by a Python started as the fork server is."""
    return subprocess.run(
        [sys.executable, "-c", code], env=kernel_env("fork-server", None), cwd="/", capture_output=True, check=True
    ).stdout


def fork_server_modules() -> set[str]:
    """The fork server's modules: ``zygote.preload`` in a Python started as the fork server is."""
    code = (
        "import json, sys\nfrom core.execution import zygote\nzygote.preload()\nprint(json.dumps(sorted(sys.modules)))"
    )
    out = in_a_fork_server_python(code)
    return set(json.loads(out.decode().splitlines()[-1]))


@pytest.mark.skipif(NO_BWRAP is not None, reason=f"no working bubblewrap: {NO_BWRAP}")
def test_an_idle_forked_kernel_imports_no_package_the_fork_server_could_share(tmp_path: Path) -> None:
    """Started as a session starts it (runtime bootstrapped, one cell run), a forked kernel has imported
    nothing of ipykernel, IPython, ZMQ or tornado itself, and the fork server's objects stay frozen
    (a collection in the kernel never writes to their pages)."""
    executor = KernelExecutor("kmem", tmp_path / "kmem" / "work", settings=ExecutionSettings())
    try:
        executor.start()
        box = getattr(executor.process, "box", None)
        assert box is not None and box.forked, "the kernel was not forked from the fork server"
        result = executor.execute(
            "import gc, json, sys\n"
            "from ipykernel.kernelapp import IPKernelApp\n"
            "app = IPKernelApp.instance()\n"
            "own = [app.connection_file, sys.argv, app.ignore_cwd, get_ipython().history_manager.enabled]\n"
            "open('seen.json', 'w').write(json.dumps([sorted(sys.modules), gc.get_freeze_count(), own]))"
        )
        assert result.is_success, result.error
        modules, frozen, its_own = json.loads((executor.cwd / "seen.json").read_text())
    finally:
        executor.stop()
    after_fork = sorted(set(modules) - fork_server_modules())
    own = [m for m in after_fork if m.split(".")[0] in SHARED_PACKAGES]
    assert own == [], f"imported by the kernel itself, not the fork server: {own}"
    assert frozen > 20_000, frozen  # ipykernel's and IPython's objects, frozen before the fork
    # The application was built in the fork server (``kernel_main.prebuild``), yet its connection file
    # is this kernel's own and the shared command line took effect.
    connection_file, argv, ignore_cwd, history = its_own
    assert connection_file == argv[argv.index("-f") + 1] and connection_file.endswith("kernel.json"), its_own
    assert ignore_cwd is True and history is False, its_own


SHELL_FACTS = (
    "import json, os, sys\n"
    "ip = get_ipython()\n"
    "%store -z\n"
    "stored = 41\n"
    "%store stored\n"
    "del stored\n"
    "%store -r stored\n"
    "pwd = %pwd\n"
    "facts = dict(kernel=ip.kernel.shell is ip, parent=type(ip.parent).__name__, cwd=str(_dh[0]), pwd=pwd,\n"
    "    start=ip.starting_dir, home=ip.home_dir, profile=ip.profile_dir.location, ipython_dir=ip.ipython_dir,\n"
    "    profile_exists=os.path.isdir(os.path.join(ip.profile_dir.location, 'startup')),\n"
    "    ipython_folder=sorted(os.listdir(ip.ipython_dir)),\n"
    "    history=str(ip.history_manager.hist_file), store=str(ip.db.root), stored=stored + 1,\n"
    "    term=os.environ.get('TERM'), pager=os.environ.get('PAGER'), main=sys.modules['__main__'] is ip.user_module,\n"
    "    magics=len(ip.magics_manager.lsmagic()['line']))\n"
    "open('shell.json', 'w').write(json.dumps(facts))"
)


def shell_facts(folder: Path, fork: bool) -> tuple[bool, dict[str, object]]:
    """What a user's code sees of its kernel's IPython shell, and whether the kernel was forked."""
    executor = KernelExecutor("shell", folder / "work", settings=ExecutionSettings(fork_kernels=fork))
    try:
        result = executor.execute(SHELL_FACTS)
        assert result.is_success, result.error
        box = getattr(executor.process, "box", None)
        facts = json.loads((executor.cwd / "shell.json").read_text())
        for key in ("cwd", "pwd", "start", "home"):  # each kernel's own folder: compared relative to it
            facts[key] = str(Path(facts[key]).relative_to(executor.cwd)) if facts[key] != "/" else "/"
        return box is not None and box.forked, facts
    finally:
        executor.stop()


@pytest.mark.skipif(NO_BWRAP is not None, reason=f"no working bubblewrap: {NO_BWRAP}")
def test_a_forked_kernels_shell_built_in_the_fork_server_is_its_own(tmp_path: Path) -> None:
    """The fork server builds the kernel's IPython shell (``kernel_main._prebuild_shell``); in the kernel
    the shell is that kernel's, exactly as in a kernel that is a Python of its own: its working folder
    (``%pwd``, ``_dh``), home, profile folder, ``%store``, environment, ``__main__`` and magics."""
    forked, in_forked = shell_facts(tmp_path / "forked", fork=True)
    assert forked, "the kernel was not forked from the fork server"
    unforked, in_own = shell_facts(tmp_path / "own", fork=False)
    assert not unforked
    assert in_forked == in_own
    assert in_forked["kernel"] is True and in_forked["parent"] == "IPythonKernel", in_forked
    assert in_forked["cwd"] == in_forked["pwd"] == in_forked["start"] == ".", in_forked
    assert in_forked["profile_exists"] is True and in_forked["stored"] == 42, in_forked
    assert in_forked["term"] == "xterm-color" and in_forked["pager"] == "cat" and in_forked["main"] is True


RUNTIME_FACTS = (
    "import json, sys\n"
    "runtime = sys.modules['core.plugins.runtime']\n"
    "facts = [type(runtime.__spec__.loader).__name__, runtime.__file__, runtime.bootstrap.__code__.co_filename,\n"
    "    list(sys.modules['core'].__path__), runtime._ctx is not None]\n"
    "open('runtime.json', 'w').write(json.dumps(facts))"
)


@pytest.mark.skipif(NO_BWRAP is not None, reason=f"no working bubblewrap: {NO_BWRAP}")
def test_a_forked_kernel_runs_the_runtime_the_fork_server_imported_as_its_sandbox_would(tmp_path: Path) -> None:
    """Weaver's runtime is imported once in the fork server (``kernel_main.prebuild_runtime``), under the
    names a sandboxed kernel sees (``/opt/weaver/core``): a forked kernel's runtime is that one, already
    bootstrapped for its own session, with the same file and code paths as a kernel that imported it."""
    seen = {}
    for fork in (True, False):
        executor = KernelExecutor("rt", tmp_path / str(fork) / "work", settings=ExecutionSettings(fork_kernels=fork))
        try:
            result = executor.execute(RUNTIME_FACTS)
            assert result.is_success, result.error
            box = getattr(executor.process, "box", None)
            assert (box is not None and box.forked) is fork
            seen[fork] = json.loads((executor.cwd / "runtime.json").read_text())
        finally:
            executor.stop()
    loader, file, code_file, core_path, bootstrapped = seen[True]
    assert loader == "_SandboxCore" and bootstrapped is True, seen
    assert file == code_file == str(sandbox.SANDBOX_ROOT / "core" / "plugins" / "runtime.py"), seen
    assert seen[True][1:] == seen[False][1:] and core_path == [str(sandbox.SANDBOX_ROOT / "core")], seen


@pytest.mark.skipif(NO_BWRAP is not None, reason=f"no working bubblewrap: {NO_BWRAP}")
def test_a_forked_kernel_knows_its_modules_without_walking_the_fork_servers(tmp_path: Path) -> None:
    """A forked kernel lists the modules loaded at its start from the fork server's list
    (``kernel_main.note_modules``) instead of walking ``sys.modules``: ``%reset --aggressive`` still
    drops exactly what the user imported since, and none of the fork server's own ``core`` is left."""
    executor = KernelExecutor("modules", tmp_path / "work", settings=ExecutionSettings())
    try:
        result = executor.execute(
            "import colorsys\n"
            "%reset -f --aggressive\n"
            "import json, sys\n"
            "host = [n for n, m in sys.modules.items() if n.split('.')[0] == 'core'\n"
            "    and not str(getattr(m, '__file__', '')).startswith('/opt/weaver/')]\n"
            "seen = ['colorsys' in sys.modules, 'ipykernel.kernelapp' in sys.modules, 'core.plugins.runtime' in\n"
            "    sys.modules, len(get_ipython()._sys_modules_keys), host]\n"
            "open('modules.json', 'w').write(json.dumps(seen))"
        )
        assert result.is_success, result.error
        box = getattr(executor.process, "box", None)
        assert box is not None and box.forked, "the kernel was not forked from the fork server"
        user_module, kernel_module, runtime, listed, host = json.loads((executor.cwd / "modules.json").read_text())
    finally:
        executor.stop()
    assert user_module is False and kernel_module is True and runtime is True, (user_module, kernel_module, runtime)
    assert listed > 500 and host == [], (listed, host)


def test_the_fork_server_imports_the_runtime_where_the_sandbox_has_it() -> None:
    """``kernel_main`` (standard library only) names the sandbox's folder for Weaver's code itself."""
    assert kernel_main.SANDBOX_ROOT == str(sandbox.SANDBOX_ROOT)
    assert kernel_main._HOST_CORE == sandbox.CORE_DIR.resolve()


def test_the_kernel_command_line_is_the_one_the_fork_server_parses_once() -> None:
    """``kernel_main.run`` uses the fork server's pre-parsed application only for this command line;
    if the two drifted apart every kernel would silently parse its own again (and copy ~0.35 MB)."""
    assert KERNEL_ARGS == ["-f", "{connection_file}", *FIXED_ARGS]


def test_the_fork_server_leaves_few_free_blocks_for_kernels_to_fill() -> None:
    """After ``zygote.preload`` the small-object allocator's partly used pools are full
    (``kernel_main.fill_free_slots``) and so are the gaps in the C heap (``fill_malloc_holes``): a
    kernel's new objects go to fresh pages instead of copying the shared pages that held free space.
    What is left is the unused tail of the last pool per size and the heap's top."""
    code = (
        "import gc, os, sys\n"
        "from core.execution import kernel_main, zygote\n"
        "def free():\n"
        "    fd = os.memfd_create('stats'); saved = os.dup(2); os.dup2(fd, 2); sys._debugmallocstats()\n"
        "    os.dup2(saved, 2); os.lseek(fd, 0, 0); text = os.read(fd, 1 << 20).decode()\n"
        "    return sum(int(n) for size, n in kernel_main._ALLOCATOR_CLASS.findall(text) if int(size) >= 48)\n"
        "def gaps():\n"
        "    info = kernel_main.mallinfo()\n"
        "    return info.fordblks - info.keepcost\n"
        "kernel_main.prepare(); kernel_main.prebuild(); gc.collect(); before, heap_before = free(), gaps()\n"
        "kernel_main.fill_malloc_holes(); kernel_main.fill_free_slots()\n"
        "print(heap_before, gaps(), before, free(), sum(map(len, kernel_main._FILLERS)))\n"
    )
    out = in_a_fork_server_python(code)
    heap_before, heap_after, before, after, fillers = map(int, out.decode().split()[-5:])
    assert fillers > 1000 and after < before / 2, (before, after, fillers)
    assert heap_before > 50_000 and heap_after < heap_before / 4, (heap_before, heap_after)


def test_the_fork_server_gathers_the_code_kernels_run_on_pages_of_its_own() -> None:
    """After ``zygote.preload`` the code objects ``kernel_hot_code.txt`` lists are found (the list is
    not stale: else run ``bench/kernel_hot_code.py``) and lie together (a kernel copies each page
    holding code it runs), and the functions that run them are the fork server's own."""
    code = (
        "import gc, json, types\n"
        "from core.execution import kernel_main, zygote\n"
        "zygote.preload()\n"
        "gc.unfreeze()  # frozen objects are out of gc.get_objects()' reach\n"
        "listed = {l for l in kernel_main.HOT_CODE.read_text().splitlines() if l and not l.startswith('#')}\n"
        "found, stack = {}, [f.__code__ for f in gc.get_objects() if type(f) is types.FunctionType]\n"
        "while stack:\n"
        "    c = stack.pop()\n"
        "    if kernel_main.code_key(c) in listed: found[id(c)] = kernel_main.code_key(c)\n"
        "    stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))\n"
        "print(json.dumps([len(listed), len(set(found.values())), len(found), len({a // 4096 for a in found})]))\n"
    )
    out = in_a_fork_server_python(code)
    listed, keys_found, objects, pages = json.loads(out.decode().splitlines()[-1])
    assert listed > 500 and keys_found > 0.9 * listed, (listed, keys_found)
    # ~4.5 code objects a page gathered; scattered among the rest they were ~1.5 a page.
    assert pages < objects / 3, (objects, pages)


def test_gathered_code_runs_as_before(tmp_path: Path) -> None:
    """A function whose code ``gather_hot_code`` copies returns what it returned, closures,
    comprehensions and generators made in it included, and its nested code is the copy's."""
    (tmp_path / "sample.py").write_text(
        "def outer(n, k=2):\n"
        "    def inner(x):\n"
        "        return x * k + n\n"
        "    squares = [inner(i) for i in range(n)]\n"
        "    return squares, list(i for i in squares if i % 2), (lambda: n)()\n"
        "class Thing:\n"
        "    def method(self, *args, **kwargs):\n"
        "        return args, sorted(kwargs)\n"
        "def untouched():\n"
        "    return 'same'\n"
    )
    hot = tmp_path / "hot.txt"
    code = (
        "import json, pathlib, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import sample\n"
        "from core.execution import kernel_main\n"
        "before = [sample.outer(5), sample.Thing().method(1, b=2, a=1), sample.untouched()]\n"
        "codes = [sample.outer.__code__, sample.Thing.method.__code__, sample.untouched.__code__]\n"
        "inner = next(c for c in codes[0].co_consts if getattr(c, 'co_name', '') == 'inner')\n"
        f"kernel_main.HOT_CODE = pathlib.Path({str(hot)!r})\n"
        "kernel_main.HOT_CODE.write_text('# test\\n' + kernel_main.code_key(inner) + '\\n'\n"
        "    + kernel_main.code_key(codes[1]) + '\\n')\n"
        "copied = kernel_main.gather_hot_code()\n"
        "after = [sample.outer(5), sample.Thing().method(1, b=2, a=1), sample.untouched()]\n"
        "now = [sample.outer.__code__, sample.Thing.method.__code__, sample.untouched.__code__]\n"
        "new_inner = next(c for c in now[0].co_consts if getattr(c, 'co_name', '') == 'inner')\n"
        "same = [a is b for a, b in zip(codes, now)]\n"
        "equal = [a == b for a, b in zip(codes, now)]\n"
        "print(json.dumps([before == after, copied, same, equal, new_inner is not inner and new_inner == inner]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    same_results, copied, identical, equal, inner_copied = json.loads(out.stdout.splitlines()[-1])
    assert same_results is True and copied == 2, (same_results, copied)
    # ``outer`` holds the listed ``inner``: both are copies; ``untouched`` is left where it was.
    assert identical == [False, False, True] and equal == [True, True, True] and inner_copied is True


def test_without_its_list_the_fork_server_gathers_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing ``kernel_hot_code.txt`` (an installation without it) costs memory, never a start."""
    monkeypatch.setattr(kernel_main, "HOT_CODE", tmp_path / "missing.txt")
    assert kernel_main.gather_hot_code() == 0


def test_the_idle_note_names_the_time_and_what_comes_back() -> None:
    assert "for 1 hour," in idle_note(3600, True) and "variables are being brought back" in idle_note(3600, True)
    assert "for 1.5 hours," in idle_note(5400, False) and "brought back" not in idle_note(5400, False)
    assert "for 1.5 minutes," in idle_note(90, False) and "for 3 seconds," in idle_note(3, False)


@pytest.mark.skipif(NO_BWRAP is not None, reason=f"no working bubblewrap: {NO_BWRAP}")
def test_an_idle_chat_gives_its_kernel_back_and_its_next_message_brings_the_variables_back(tmp_path: Path) -> None:
    """A chat nobody uses for ``session.idle_timeout`` (the browser still open) stops its kernel: the
    kernel and its whole sandbox are gone. The next message says why it waits, starts a kernel and
    has the chat's variables back."""
    server = start_server(
        tmp_path / "app",
        tmp_path / "server.log",
        extra_env={"WEAVER_SESSION__IDLE_TIMEOUT": str(IDLE_S), "WEAVER_EXECUTION__POOL_SIZE": "0"},
    )
    try:
        client = server.client().connect()
        try:
            turn = client.ask(code_block("z = 5\n" + KERNEL_ID_CODE))
            pid = kernel_pid_in("\n".join(steps(turn, "CodeInterpreter") + answers(turn)))
            sandbox_pids = ancestors_below(pid, server.proc.pid)
            assert sandbox_pids, "the kernel is not under the server"
            server.wait_log(rf"chat {client.session_id} idle for \d+s: stopping", IDLE_S + 30)
            wait_until(lambda: not any(pid_alive(p) for p in [pid, *sandbox_pids]), 30, "the kernel's sandbox to end")
            again = client.ask(code_block("print('z is', z)"))
            said = answers(again)
            notes = [str(m.get("output")) for m in client.messages().values()]
            restore = [m for m in client.messages().values() if str(m.get("name")).startswith(RESTORE_TITLE)]
        finally:
            client.disconnect()
    finally:
        stop_server(server)
    assert any("z is 5" in a for a in said), said
    assert any("nobody used this chat for 3 seconds" in n and "being brought back" in n for n in notes), notes
    assert restore and "Loaded" in str(restore[0].get("output")), restore


def ancestors_below(pid: int, top: int) -> list[int]:
    """The processes between ``pid`` and ``top`` (its sandbox: bubblewrap and its init), nearest first."""
    found: list[int] = []
    current = pid
    while True:
        try:
            parent = int(Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return found
        if parent in (top, 0, 1):
            return found
        found.append(parent)
        current = parent


def test_a_kernel_adds_no_thread_to_the_server(tmp_path: Path) -> None:
    """Each kernel's control socket shares the server's one ZMQ context: jupyter_client's own context
    per kernel was two more threads (ZMQ's I/O and reaper) in the server for every kernel alive,
    4,000 at a thousand kernels."""

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    kernels: list[KernelExecutor] = []
    try:
        for i in range(8):
            if i == 4:  # the first four made what is made once (the context, the spawner's threads)
                before = threads()
            kernels.append(KernelExecutor(f"thr{i}", tmp_path / f"thr{i}" / "work", settings=ExecutionSettings()))
            kernels[-1].start()
        added = threads() - before
    finally:
        for kernel in kernels:
            kernel.stop()
    assert added <= 1, f"four more kernels added {added} threads to the server"
