"""A crowd on a real ``weaver ui``: N simulated browser users over HTTP and socket.io.

Each user does what the page does: ``GET /``, logs in as the page does (``POST /auth/header``; the
default local login asks nothing), opens the socket (``/ws/socket.io``, websocket), waits until the
chat is ready (Chainlit's ``on_chat_start`` step ends), then sends a ```` ```python ```` block
``--rounds`` times, each after the previous answer (see ``tests/ui_harness.ChatClient``). Users
arrive spread evenly over ``--arrival`` seconds. Measured per user, from the client's side:

* chat ready: socket open requested → ``on_chat_start`` ended (the page's GET and login before it
  are timed as "page");
* first step: message sent → the first role step of the round appears;
* first answer: message sent → the round's answer (round 1, which starts the user's kernel);
* warm round: the same for rounds 2 and later.

Then, with everyone still connected: the server's memory (VmRSS) per connected user and each kernel's
memory; then everyone leaves and the script waits for every session's kernel to stop (the server
runs with ``WEAVER_UI_DISCONNECT_GRACE_S=--grace``). Pooled kernels (no session yet) are counted apart.

Without ``--url`` it starts ``weaver ui`` on a free 127.0.0.1 port in a temporary app folder,
offline, with the per-client and live-session caps raised to fit the crowd (every simulated user
comes from 127.0.0.1 as the same local user), and stops it at the end. ``--compare-pool`` runs the
same crowd twice in one run, with the pool on (``execution.pool_size`` as given) and off (0);
``--compare-fork`` once more with ``execution.fork_kernels`` flipped (kernels forked from the
pre-imported fork server, or each importing ipykernel itself). Only 127.0.0.1 targets are
accepted. The whole run is bounded by ``--timeout``.

    python bench/load.py [--users 100] [--rounds 3] [--arrival 1.0] [--compare-pool] [--compare-fork] [--url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import socketio
from procs import cpu_ticks, descendants, free_port, pss_kb, rss_kb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.execution.kernel_procs import is_kernel_process  # noqa: E402  (stdlib and core only)

CODE = "```python\nprint(6*7)\n```"
EXPECT = "42"


# ----- one simulated user ----------------------------------------------------------------------


@dataclass
class UserResult:
    page_s: float | None = None
    ready_s: float | None = None
    first_step_s: list[float] = field(default_factory=list)
    answer_s: list[float] = field(default_factory=list)
    error: str | None = None


class Page:
    """What one browser tab holds: steps and messages by id, rebuilt from the socket's events."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Event()

    def apply(self, name: str, data: Any) -> None:
        if name in ("new_message", "stream_start", "update_message") and isinstance(data, dict) and "id" in data:
            self.items[data["id"]] = {**self.items.get(data["id"], {}), **data, "_seen": time.monotonic()}
        elif name == "stream_token" and isinstance(data, dict) and data.get("id") in self.items:
            item = self.items[data["id"]]
            old = "" if data.get("isSequence") else str(item.get("output") or "")
            item["output"] = old + str(data.get("token") or "")
        self.changed.set()

    async def until(self, predicate: Any, deadline: float, what: str) -> Any:
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                continue

    def chat_ready(self) -> bool:
        return any(i.get("name") == "on_chat_start" and i.get("end") for i in self.items.values())

    def runs(self, message_id: str) -> list[dict[str, Any]]:
        return [i for i in self.items.values() if i.get("name") == "on_message" and i.get("parentId") == message_id]

    def first_step(self, message_id: str) -> float | None:
        run_ids = {r["id"] for r in self.runs(message_id)}
        seen = [
            i["_seen"] for i in self.items.values() if i.get("parentId") in run_ids and i.get("type") != "user_message"
        ]
        return min(seen) if seen else None

    def answer(self, message_id: str) -> str | None:
        """The round's assistant text once its run ended, else None."""
        runs = self.runs(message_id)
        if not any(r.get("end") for r in runs):
            return None
        run_ids = {r["id"] for r in runs}
        said = [
            str(i.get("output") or "")
            for i in self.items.values()
            if i.get("parentId") in run_ids and i.get("type") == "assistant_message"
        ]
        return "\n".join(said)


# One TLS context for every simulated user: httpx loads the CA bundle for each new client
# otherwise (~25 ms of this process's CPU each), which made the crowd's own client the
# bottleneck and added seconds to every figure it measured. A browser pays nothing like it.
_TLS = ssl.create_default_context()


def _message(text: str) -> tuple[str, dict[str, Any]]:
    message_id = str(uuid.uuid4())
    created = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    message = {
        "threadId": "",
        "id": message_id,
        "name": "User",
        "type": "user_message",
        "output": text,
        "createdAt": created,
        "metadata": {},
    }
    return message_id, {"message": message, "fileReferences": []}


async def run_user(
    base: str, delay: float, rounds: int, step_timeout: float, result: UserResult
) -> socketio.AsyncClient:
    """One browser tab: page, login, socket, chat ready, ``rounds`` rounds. Returns the open socket."""
    await asyncio.sleep(delay)
    page = Page()
    sio = socketio.AsyncClient(reconnection=False)

    @sio.on("*")
    async def record(event: str, data: Any = None) -> None:
        page.apply(event, data)

    try:
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=base, timeout=step_timeout, verify=_TLS) as http:
            (await http.get("/")).raise_for_status()
            login = await http.post("/auth/header", headers={"Origin": base})
            # Every cookie the page holds, as a browser sends them: a proxy's stickiness cookie too.
            cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items()) if login.status_code == 200 else ""
        result.page_s = time.monotonic() - started
        started = time.monotonic()
        auth = {
            "clientType": "webapp",
            "sessionId": str(uuid.uuid4()),
            "threadId": "",
            "userEnv": "{}",
            "chatProfile": "",
        }
        headers = {"Origin": base, **({"Cookie": cookie} if cookie else {})}
        await sio.connect(
            base,
            socketio_path="/ws/socket.io",
            transports=["websocket"],
            auth=auth,
            headers=headers,
            wait_timeout=step_timeout,
        )
        await sio.emit("connection_successful")
        await page.until(page.chat_ready, started + step_timeout, "the chat to be ready")
        result.ready_s = time.monotonic() - started
        for _ in range(rounds):
            message_id, payload = _message(CODE)
            sent = time.monotonic()
            await sio.emit("client_message", payload)
            first = await page.until(partial(page.first_step, message_id), sent + step_timeout, "the first step")
            result.first_step_s.append(first - sent)
            text = await page.until(partial(page.answer, message_id), sent + step_timeout, "the answer")
            result.answer_s.append(time.monotonic() - sent)
            if EXPECT not in text:
                raise RuntimeError(f"unexpected answer {text[:200]!r}")
    except Exception as exc:  # noqa: BLE001 - counted and reported, the crowd goes on
        result.error = f"{type(exc).__name__}: {exc}"
    return sio


# ----- processes -------------------------------------------------------------------------------


@dataclass
class Kernel:
    pid: int
    session_id: str
    pooled: bool  # started ahead, not yet handed to a session


def kernels(root: int, app_dir: Path | None) -> list[Kernel]:
    """The kernel processes under ``root``; a kernel whose session folder has no session log is pooled.
    Its session is the folder it works in (a forked kernel's environment is the fork server's)."""
    found = []
    for pid in descendants(root):
        if not is_kernel_process(pid):
            continue
        try:
            session_id = Path(os.readlink(f"/proc/{pid}/cwd")).parent.name
        except OSError:
            continue
        pooled = app_dir is not None and not (app_dir / "workspace" / "sessions" / session_id / "session.log").exists()
        found.append(Kernel(pid, session_id, pooled))
    return found


def server_pid(root: int) -> int:
    """The Chainlit process: ``weaver ui`` runs it as its child."""
    for pid in [root, *descendants(root)]:
        try:
            if b"chainlit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return root


async def pool_settled(root: int, app_dir: Path, size: int, timeout: float) -> bool:
    """Wait until ``size`` pooled kernels exist and are idle (started): a fair start for the next user."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pooled = [k.pid for k in kernels(root, app_dir) if k.pooled]
        if len(pooled) >= size:
            before = sum(cpu_ticks(p) for p in pooled)
            await asyncio.sleep(0.3)
            if sum(cpu_ticks(p) for p in pooled) == before:
                return True
        else:
            await asyncio.sleep(0.2)
    return False


# ----- the server ------------------------------------------------------------------------------


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[bytes] | None
    app_dir: Path | None
    log: Path | None


def start_server(folder: Path, users: int, pool_size: int, grace: float, timeout: float, fork: bool = True) -> Server:
    app_dir = folder / "app"
    (app_dir / "plugins").mkdir(parents=True)
    port = free_port()
    env = {
        **os.environ,
        "WEAVER_LLM__API_TYPE": "offline",
        "WEAVER_UI_DISCONNECT_GRACE_S": str(grace),
        "WEAVER_UI_MAX_SESSIONS_PER_CLIENT": str(max(1000, users)),
        "WEAVER_SESSION__MAX_LIVE_SESSIONS": str(max(1000, users)),
        "WEAVER_EXECUTION__POOL_SIZE": str(pool_size),
        "WEAVER_EXECUTION__FORK_KERNELS": str(fork).lower(),
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("OPENAI_API_KEY", "WEAVER_LLM__API_KEY", "WEAVER_LLM__API_BASE"):
        env.pop(key, None)
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "ui.cli", "ui", "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(app_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, app_dir, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"weaver ui exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{server.base}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise SystemExit("weaver ui did not answer /health in time")
        time.sleep(0.2)


def stop_server(server: Server) -> None:
    """SIGINT to the process group of the server we started (by its pid), then wait."""
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ----- one crowd -------------------------------------------------------------------------------


@dataclass
class Report:
    label: str
    users: list[UserResult]
    wall_s: float
    server_rss_before_kb: int = 0
    server_rss_loaded_kb: int = 0
    kernel_rss_kb: list[int] = field(default_factory=list)
    kernel_pss_kb: list[int] = field(default_factory=list)
    pooled_kernels: int = 0
    left_after_s: float | None = None
    left: int = 0
    cpu_server_s: float = 0.0
    cpu_kernels_s: float = 0.0
    cpu_client_s: float = 0.0
    client_lag_s: list[float] = field(default_factory=list)


async def loop_lag(lags: list[float], period: float = 0.01) -> None:
    """How late this client's own event loop runs a 10 ms timer: when it is late, so is every
    figure measured meanwhile (the simulated users share this one process)."""
    while True:
        planned = time.monotonic() + period
        await asyncio.sleep(period)
        lags.append(max(0.0, time.monotonic() - planned))


async def crowd(server: Server, args: argparse.Namespace, label: str, deadline: float) -> Report:
    root = server.proc.pid if server.proc else None
    step_timeout = max(10.0, min(args.step_timeout, deadline - time.monotonic()))
    if root is not None and server.app_dir is not None and args.pool_size > 0:
        await pool_settled(root, server.app_dir, args.pool_size, min(60.0, deadline - time.monotonic()))
    spid = server_pid(root) if root is not None else None
    report = Report(label, [], 0.0)
    report.server_rss_before_kb = rss_kb(spid) if spid else 0
    server_cpu_before = cpu_ticks(spid) if spid else 0
    client_cpu_before = time.process_time()
    started = time.monotonic()
    spacing = args.arrival / args.users if args.users > 1 else 0.0
    results = [UserResult() for _ in range(args.users)]
    lag = asyncio.ensure_future(loop_lag(report.client_lag_s))
    sockets = await asyncio.gather(
        *(run_user(server.base, i * spacing, args.rounds, step_timeout, r) for i, r in enumerate(results))
    )
    lag.cancel()
    report.wall_s = time.monotonic() - started
    report.users = results
    if root is not None and spid is not None:
        await asyncio.sleep(1.0)  # let the last rounds' bookkeeping settle before reading memory
        report.server_rss_loaded_kb = rss_kb(spid)
        found = kernels(root, server.app_dir)
        report.kernel_rss_kb = [rss_kb(k.pid) for k in found if not k.pooled]
        report.kernel_pss_kb = [pss_kb(k.pid) for k in found if not k.pooled]
        report.pooled_kernels = sum(1 for k in found if k.pooled)
        tick = os.sysconf("SC_CLK_TCK")
        report.cpu_server_s = (cpu_ticks(spid) - server_cpu_before) / tick
        report.cpu_kernels_s = sum(cpu_ticks(k.pid) for k in found if not k.pooled) / tick
    report.cpu_client_s = time.process_time() - client_cpu_before
    await asyncio.gather(*(s.disconnect() for s in sockets if s.connected), return_exceptions=True)
    if root is not None:
        left_at = time.monotonic()
        limit = left_at + args.grace + 30.0
        while True:
            report.left = sum(1 for k in kernels(root, server.app_dir) if not k.pooled)
            if report.left == 0:
                report.left_after_s = time.monotonic() - left_at
                break
            if time.monotonic() > min(limit, deadline):
                break
            await asyncio.sleep(0.5)
    return report


async def sequential(server: Server, args: argparse.Namespace, label: str, deadline: float) -> Report:
    """``--users 1``: ``--repeat`` new chats one after another, each finding the pool refilled."""
    reports = []
    for _ in range(args.repeat):
        reports.append(await crowd(server, args, label, deadline))
    merged = reports[0]
    for extra in reports[1:]:
        merged.users += extra.users
        merged.kernel_rss_kb += extra.kernel_rss_kb
        merged.kernel_pss_kb += extra.kernel_pss_kb
        merged.client_lag_s += extra.client_lag_s
        merged.left = max(merged.left, extra.left)
        if extra.left_after_s is None or merged.left_after_s is None:
            merged.left_after_s = None
        else:
            merged.left_after_s = max(merged.left_after_s, extra.left_after_s)
    return merged


# ----- report ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"p50 {values and statistics.median(values):7.3f} s   p95 {pct(values, 0.95):7.3f} s   max {max(values):7.3f} s"
    )


def show(report: Report, args: argparse.Namespace) -> bool:
    users = report.users
    ok = [u for u in users if u.error is None]
    errors = [u.error for u in users if u.error is not None]
    n = len(users)
    crowd = f"{n} chats one after another" if args.users == 1 else f"{n} users arriving over {args.arrival:g} s"
    print(f"\n== {report.label}: {crowd}, {args.rounds} rounds each ==")
    print(f"  {'page + login':<24} {stats([u.page_s for u in users if u.page_s is not None])}")
    print(f"  {'chat ready':<24} {stats([u.ready_s for u in users if u.ready_s is not None])}")
    print(f"  {'first step':<24} {stats([s for u in users for s in u.first_step_s])}")
    print(f"  {'first answer':<24} {stats([u.answer_s[0] for u in users if u.answer_s])}")
    print(f"  {'warm rounds':<24} {stats([s for u in users for s in u.answer_s[1:]])}")
    print(f"  {'errors':<24} {len(errors)} of {n}" + (f"  first: {errors[0]}" if errors else ""))
    if report.client_lag_s:
        print(f"  {'client loop lag':<24} {stats(report.client_lag_s)}  (this script's own delay)")
    print(f"  {'wall time':<24} {report.wall_s:.1f} s ({len(ok)} users done)")
    if report.server_rss_loaded_kb:
        per_user = (report.server_rss_loaded_kb - report.server_rss_before_kb) / 1024 / max(1, n)
        print(
            f"  {'server memory':<24} {report.server_rss_before_kb / 1024:.0f} MB before, "
            f"{report.server_rss_loaded_kb / 1024:.0f} MB with everyone connected: {per_user:.2f} MB per user"
        )
    if report.cpu_server_s:
        print(
            f"  {'CPU used':<24} server {report.cpu_server_s:.1f} s, session kernels {report.cpu_kernels_s:.1f} s, "
            f"this client {report.cpu_client_s:.1f} s ({os.cpu_count()} cores x {report.wall_s:.1f} s wall)"
        )
    if report.kernel_rss_kb:
        rss = [k / 1024 for k in report.kernel_rss_kb]
        print(
            f"  {'kernel memory (idle)':<24} median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB, "
            f"total {sum(rss):.0f} MB for {len(rss)} kernels (+{report.pooled_kernels} pooled)"
        )
        pss = [k / 1024 for k in report.kernel_pss_kb]
        print(
            f"  {'  proportional (PSS)':<24} median {statistics.median(pss):.1f} MB, max {max(pss):.1f} MB, "
            f"total {sum(pss):.0f} MB (pages shared between kernels counted once)"
        )
    if args.url is None:
        gone = f"after {report.left_after_s:.1f} s" if report.left_after_s is not None else "NOT within the limit"
        print(f"  {'session kernels left':<24} {report.left} (all gone {gone}; grace {args.grace:g} s)")
    return not errors and report.left == 0


async def main_async(args: argparse.Namespace) -> bool:
    deadline = time.monotonic() + args.timeout
    if args.url is not None:
        server = Server(args.url.rstrip("/"), None, None, None)
        report = await (sequential if args.users == 1 else crowd)(server, args, f"server at {args.url}", deadline)
        return show(report, args)
    variants = [(args.pool_size, not args.no_fork)]
    if args.compare_pool:
        variants.append((0, not args.no_fork))
    if args.compare_fork:
        variants.append((args.pool_size, args.no_fork))
    clean = True
    for size, fork in variants:
        with tempfile.TemporaryDirectory(prefix="weaver-load-") as tmp:
            limit = min(120.0, deadline - time.monotonic())
            server = start_server(Path(tmp), args.users, size, args.grace, limit, fork)
            try:
                run_args = argparse.Namespace(**{**vars(args), "pool_size": size})
                label = f"pool_size={size}, fork_kernels={str(fork).lower()}"
                report = await (sequential if args.users == 1 else crowd)(server, run_args, label, deadline)
                clean = show(report, run_args) and clean
            finally:
                stop_server(server)
    return clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="simulated browser users (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="messages per user (default 3; 0: connect only)")
    parser.add_argument("--arrival", type=float, default=1.0, help="users arrive spread over this many s (1)")
    parser.add_argument("--repeat", type=int, default=5, help="with --users 1: new chats one after another (5)")
    parser.add_argument("--pool-size", type=int, default=2, help="execution.pool_size of the started server (2)")
    parser.add_argument("--compare-pool", action="store_true", help="also run the crowd with the pool off")
    parser.add_argument("--no-fork", action="store_true", help="execution.fork_kernels = false (each kernel imports)")
    parser.add_argument(
        "--compare-fork", action="store_true", help="also run the crowd with execution.fork_kernels flipped"
    )
    parser.add_argument("--grace", type=float, default=10.0, help="WEAVER_UI_DISCONNECT_GRACE_S (default 10)")
    parser.add_argument("--step-timeout", type=float, default=120.0, help="longest wait for one step (120 s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on the whole run (default 900 s)")
    parser.add_argument("--url", help="drive this server (127.0.0.1 only) instead of starting one")
    args = parser.parse_args()
    if args.url is not None and urlparse(args.url).hostname != "127.0.0.1":
        parser.error("--url must be on 127.0.0.1")
    if args.users < 1 or args.rounds < 0:
        parser.error("--users must be at least 1 and --rounds at least 0 (0: connect only)")
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    clean = asyncio.run(asyncio.wait_for(main_async(args), args.timeout + 120))
    raise SystemExit(0 if clean else 1)


if __name__ == "__main__":
    main()
