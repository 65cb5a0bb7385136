"""A crowd on two ``weaver ui`` replicas behind HAProxy, sharing one PostgreSQL and one app folder.

It starts a throwaway PostgreSQL cluster (``tests/pg_cluster.py``), two replicas (``weaver ui``,
local login, ``WEAVER_DATABASE_URL`` on that cluster, one shared temporary app folder) and HAProxy
with ``deploy/haproxy.cfg``, all on 127.0.0.1; then runs ``bench/load.py --url <proxy>`` against
the proxy. While the crowd runs it samples each replica from ``/proc``: its server's memory, how
many kernels it holds and their memory, and prints the peaks per replica, so one can see how the
load splits and how the figures of one replica add up. Everything is stopped by its own PID.

    python bench/replicas.py [--users 40] [--rounds 3] [--arrival 2] [--pool-size 0]

Every simulated user is the same local user, so the per-client cap is raised to fit the crowd; all
of them then share one row lock in the shared cap's claim (a worst case for it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from procs import children, descendants, free_port, rss_kb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.execution.kernel_procs import is_kernel_process  # noqa: E402
from tests.pg_cluster import start_cluster  # noqa: E402


@dataclass
class Replica:
    rid: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    peak_server_kb: int = 0
    idle_server_kb: int = 0
    peak_kernels: int = 0
    peak_kernel_kb: int = 0
    samples: list[int] = field(default_factory=list)

    def server_pid(self) -> int | None:
        """The Chainlit server (the launcher's child)."""
        kids = children().get(self.proc.pid, [])
        return kids[0] if kids else None

    def sample(self) -> None:
        server = self.server_pid()
        if server is None:
            return
        self.peak_server_kb = max(self.peak_server_kb, rss_kb(server))
        kernels = [p for p in descendants(server) if is_kernel_process(p)]
        self.peak_kernels = max(self.peak_kernels, len(kernels))
        self.peak_kernel_kb = max(self.peak_kernel_kb, sum(rss_kb(p) for p in kernels))


def start_replica(rid: str, app_dir: Path, env: dict[str, str], folder: Path) -> Replica:
    port = free_port()
    log = folder / f"replica-{rid}.log"
    cmd = [sys.executable, "-m", "ui.cli", "ui", "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(app_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, "WEAVER_UI_REPLICA_ID": rid},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Replica(rid, port, proc, log)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def routed(url: str) -> set[str | None]:
    """Which replicas four requests through the proxy reach (empty while it does not answer yet)."""
    try:
        return {httpx.get(f"{url}/health", timeout=2).headers.get("x-weaver-replica") for _ in range(4)}
    except httpx.HTTPError:
        return set()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40, help="simulated browser users (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="messages per user (default 3)")
    parser.add_argument("--arrival", type=float, default=2.0, help="users arrive spread over this many s (2)")
    parser.add_argument("--pool-size", type=int, default=0, help="execution.pool_size of each replica (0)")
    parser.add_argument("--grace", type=float, default=10.0, help="WEAVER_UI_DISCONNECT_GRACE_S (default 10)")
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, two replicas behind HAProxy")

    cluster = start_cluster()
    replicas: list[Replica] = []
    proxy: subprocess.Popen[bytes] | None = None
    folder = Path(tempfile.mkdtemp(prefix="weaver-replicas-"))
    try:
        app_dir = folder / "app"
        (app_dir / "plugins").mkdir(parents=True)
        proxy_port = free_port()
        env = {
            **os.environ,
            "WEAVER_DATABASE_URL": cluster.create_database(),
            "WEAVER_LLM__API_TYPE": "offline",
            "WEAVER_UI_CHECK_MODEL_AT_START": "false",
            "WEAVER_UI_DISCONNECT_GRACE_S": str(args.grace),
            "WEAVER_UI_MAX_SESSIONS_PER_CLIENT": str(max(1000, args.users)),
            "WEAVER_SESSION__MAX_LIVE_SESSIONS": str(max(1000, args.users)),
            "WEAVER_EXECUTION__POOL_SIZE": str(args.pool_size),
            "PYTHONUNBUFFERED": "1",
        }
        for key in ("OPENAI_API_KEY", "WEAVER_LLM__API_KEY", "WEAVER_LLM__API_BASE", "CHAINLIT_AUTH_SECRET"):
            env.pop(key, None)
        ports = [free_port(), free_port()]
        env["WEAVER_UI_ALLOWED_ORIGINS"] = ",".join(f"http://127.0.0.1:{p}" for p in (proxy_port, *ports))
        # One replica first: it makes the schema and the login secret; the second finds them.
        for rid in ("a", "b"):
            replica = start_replica(rid, app_dir, env, folder)
            replicas.append(replica)
            wait_healthy(f"http://127.0.0.1:{replica.port}", replica.proc, replica.log)
        proxy_env = {
            "PATH": os.environ.get("PATH", ""),
            "WEAVER_PROXY_BIND": f"127.0.0.1:{proxy_port}",
            "WEAVER_PROXY_HOST": "127.0.0.1",
            "WEAVER_REPLICA_A": f"127.0.0.1:{replicas[0].port}",
            "WEAVER_REPLICA_B": f"127.0.0.1:{replicas[1].port}",
        }
        proxy_log = folder / "haproxy.log"
        with proxy_log.open("wb") as out:
            proxy = subprocess.Popen(
                [haproxy, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                env=proxy_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{proxy_port}"
        deadline = time.monotonic() + 30
        while routed(url) != {"a", "b"}:
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise SystemExit(f"haproxy does not route to both replicas:\n{proxy_log.read_text()[-2000:]}")
            time.sleep(0.2)
        for replica in replicas:
            replica.sample()
            replica.idle_server_kb = replica.peak_server_kb

        done = threading.Event()

        def sampler() -> None:
            while not done.is_set():
                for replica in replicas:
                    replica.sample()
                done.wait(0.5)

        watcher = threading.Thread(target=sampler, daemon=True)
        watcher.start()
        load = [sys.executable, str(ROOT / "bench" / "load.py"), "--url", url, "--users", str(args.users)]
        load += ["--rounds", str(args.rounds), "--arrival", str(args.arrival)]
        result = subprocess.run(load, cwd=ROOT, capture_output=True, text=True)
        done.set()
        watcher.join()
        print(result.stdout.split("\n", 1)[1] if "\n" in result.stdout else result.stdout, end="")
        if result.returncode != 0:
            print(result.stderr[-2000:])
        print("  per replica (peaks while the crowd ran):")
        for r in replicas:
            per_kernel = r.peak_kernel_kb / max(1, r.peak_kernels) / 1024
            print(
                f"    {r.rid}: server {r.idle_server_kb / 1024:.0f} MB idle -> {r.peak_server_kb / 1024:.0f} MB, "
                f"{r.peak_kernels} kernels, {r.peak_kernel_kb / 1024:.0f} MB in kernels ({per_kernel:.1f} MB each)"
            )
        total = sum(r.peak_server_kb + r.peak_kernel_kb for r in replicas) / 1024
        print(f"    together: {sum(r.peak_kernels for r in replicas)} kernels, {total:.0f} MB (servers + kernels)")
    finally:
        if proxy is not None:
            stop(proxy, signal.SIGTERM)
        for replica in replicas:
            stop(replica.proc)
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
