"""Regenerate ``core/execution/kernel_hot_code.txt``: the code a kernel runs after the fork.

The fork server gathers these functions' code objects on pages of their own before the first fork
(``kernel_main.gather_hot_code``): every call writes to its code object's reference count, so a
kernel copies each page holding code it runs; scattered among the code it never runs, the ~1,000
code objects a kernel runs cost it ~700 pages, gathered ~230 (``bench/kernel_memory.py``).

This script does what the fork server does (``zygote.preload``), forks a kernel from itself as
the fork server would (not sandboxed: the code it runs is the same), starts it as a session
does (ready, Weaver's runtime bootstrapped), runs a user's cell in it as a session does, leaves
it idle for a moment, shuts it down, and writes the code objects it called (every thread), one
per line, with the fork server's helper's (``zygote``'s functions). Run it again after upgrading
ipykernel, IPython, pyzmq, tornado, traitlets or jupyter_client, or after changing what a kernel
does at its start: a stale list costs memory, never behaviour.

    python bench/kernel_hot_code.py [--cells 2] [--idle 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.execution import kernel_main, zygote  # noqa: E402
from core.execution.launcher import kernel_env  # noqa: E402

# A user's cell as a session runs it: output, a value shown, a name defined.
CELL = "x = sum(range(10))\nprint('x is', x)\nx"


class _Handle:
    """What ``KernelRPC`` needs of a kernel handle: its channels and whether it lives."""

    def __init__(self, client: Any, pid: int) -> None:
        self.client = client
        self.pid = pid

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)


def _kernel(connection_file: str, hidden: list[str], out: Path, log: Path) -> None:
    """The forked kernel: every code object called from here on (any thread) is noted, but the code
    of cells (the runtime's calls; its file is the kernel's own)."""
    called: dict[int, Any] = {}

    def note(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            called.setdefault(id(frame.f_code), frame.f_code)

    # A sandboxed kernel's environment and fresh folders (its profile and caches are made at its start).
    private = log.parent
    env = kernel_env("hot-code", None, home=private / "home")
    env.update(IPYTHONDIR=str(private / "ipython"), MPLCONFIGDIR=str(private / "mpl"))
    env["XDG_CACHE_HOME"] = str(private / "cache")
    for folder in ("home", "work"):
        (private / folder).mkdir()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(private / "work")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.setsid()
    sys.setprofile(note)
    threading.setprofile(note)
    kernel_main.forget_host_core()
    sys.modules.update(kernel_main._RUNTIME_MODULES)  # as ``adopt_runtime`` does in a sandbox
    sys.argv = [sys.executable, "-f", connection_file, *kernel_main.FIXED_ARGS]
    kernel_main.run(sys.argv[1:], hidden)
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    keys = sorted(
        {key for code in called.values() if not (key := kernel_main.code_key(code)).startswith(("/", "<string>"))}
    )
    out.write_text("".join(key + "\n" for key in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=2, help="user cells run after the bootstrap")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds the bootstrapped kernel stays idle")
    args = parser.parse_args()
    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    from core.execution.kernel_rpc import KernelRPC

    hidden = zygote.preload()
    with tempfile.TemporaryDirectory(prefix="weaver-hot-") as tmp:
        folder = Path(tmp)
        connection_file, _ = write_connection_file(
            str(folder / "kernel.json"), ip=str(folder / "ipc"), transport="ipc", key=os.urandom(16).hex().encode()
        )
        out = folder / "called.txt"
        pid = os.fork()
        if pid == 0:
            try:
                _kernel(connection_file, hidden, out, folder / "kernel.log")
            finally:
                os._exit(0)
        client = BlockingKernelClient(connection_file=connection_file)
        client.load_connection_file()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            rpc = KernelRPC(_Handle(client, pid))  # type: ignore[arg-type]
            report = rpc.bootstrap(
                {"session_id": "hot-code", "env_id": "local", "plugins": [], "session_var_limits": None}
            )
            if report.get("errors"):
                raise SystemExit(f"the runtime's bootstrap failed: {report['errors']}")
            for i in range(args.cells):
                rpc.begin_execution({"execution_id": f"hot-{i}", "session_vars": {}})
                msg_id = rpc.execute(CELL)
                if not rpc.replies({msg_id}, 30):
                    raise SystemExit("the kernel did not answer a cell")
                while rpc.next_iopub(timeout=0.5) is not None:
                    pass
                rpc.threads_started()
            time.sleep(args.idle)
            client.shutdown()
        finally:
            client.stop_channels()
        os.waitpid(pid, 0)
        if not out.exists():
            raise SystemExit("the kernel wrote no list:\n" + (folder / "kernel.log").read_text()[-2000:])
        keys = out.read_text().splitlines()
    # What the fork server's helper runs after the fork, on its way into the sandbox (the kernel
    # inherits the pages it copies): every function of ``zygote`` but the fork server's own.
    helper = [f for name, f in vars(zygote).items() if callable(f) and name not in ("preload", "serve", "main")]
    keys = sorted(
        {
            *keys,
            *(
                kernel_main.code_key(f.__code__)
                for f in helper
                if getattr(f, "__module__", "") == zygote.__name__ and hasattr(f, "__code__")
            ),
        }
    )
    header = (
        f"# Written by bench/kernel_hot_code.py (Python {sys.version.split()[0]}): see kernel_main.gather_hot_code.\n"
    )
    kernel_main.HOT_CODE.write_text(header + "".join(key + "\n" for key in keys))
    print(f"{len(keys)} code objects a kernel runs after the fork -> {kernel_main.HOT_CODE}")


if __name__ == "__main__":
    main()
