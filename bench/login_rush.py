"""A login rush on a real ``weaver ui``: N first logins of distinct names at once, then the same N
names again (returning logins), with the server's CPU per login for each.

The server runs the way a company deploys it: ``header`` login (``WEAVER_UI_USER_HEADER``) behind a
trusted proxy (``WEAVER_UI_TRUSTED_PROXIES=127.0.0.1``, this script playing the proxy), an explicit
``CHAINLIT_AUTH_SECRET``, the default SQLite history in a temporary app folder (or
``--database-url`` for PostgreSQL), no kernel pool (no kernel is started: only the login is measured).

Each simulated user does what the page does to sign in, timed from the client's side:

* login: ``POST /auth/header`` (the user row, the token, the cookie);
* user: ``GET /user`` with that cookie (Chainlit reads the user again);
* connect: the socket.io connect with that cookie (authenticated once more), then a disconnect.

A wave is N users started together. First a few warm-up logins run (first and returning), so no
wave pays the server's one-off costs, and the N returning users sign in once, not counted. Then
the waves: returning, new, new, returning (``--pairs 1``: the first two), so a drift of the
machine's load cancels out. Before each the script waits longer than the server's user cache
(``ui.history.users.USER_CACHE_S``), so a returning login reads the database as it does the next
day. Per wave it prints the latency p50/p95 of each step and of
all three, and the server's CPU (utime + stime from ``/proc``: the whole process, and its main
thread, which runs the event loop), minus what the idle server spends in the same time; then the
ratios new / returning. Only 127.0.0.1 is used; the server is stopped at the end.

    python bench/login_rush.py [--users 100] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import socketio
from procs import descendants, free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
USER_HEADER = "X-Forwarded-User"
CACHE_S = 5.0  # ui.history.users.USER_CACHE_S (not imported: the script runs against any checkout)
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def ticks(path: str) -> int:
    """utime + stime of the process or thread whose ``stat`` file is ``path``, in clock ticks."""
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Cpu:
    """The server's CPU: the whole process, and its main thread (the event loop)."""

    pid: int

    def now(self) -> tuple[float, float]:
        return (
            ticks(f"/proc/{self.pid}/stat") * TICK_S,
            ticks(f"/proc/{self.pid}/task/{self.pid}/stat") * TICK_S,
        )


@dataclass
class Wave:
    label: str
    login_s: list[float] = field(default_factory=list)
    user_s: list[float] = field(default_factory=list)
    connect_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0
    loop_cpu_s: float = 0.0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0  # this script's own CPU while the wave ran (the simulated browsers)


async def one_login(base: str, name: str, transport: httpx.AsyncHTTPTransport, wave: Wave) -> None:
    """Sign ``name`` in as the page does behind the proxy: login, the user, the socket."""
    proxy = {"Origin": base, USER_HEADER: name}
    http = httpx.AsyncClient(base_url=base, transport=transport, trust_env=False, timeout=60)
    sio = socketio.AsyncClient(reconnection=False)
    try:
        t0 = time.monotonic()
        login = await http.post("/auth/header", headers=proxy)
        login.raise_for_status()
        cookie = "; ".join(f"{k}={v}" for k, v in login.cookies.items())
        t1 = time.monotonic()
        (await http.get("/user", headers={**proxy, "Cookie": cookie})).raise_for_status()
        t2 = time.monotonic()
        auth = {"clientType": "webapp", "sessionId": str(uuid.uuid4()), "threadId": "", "userEnv": "{}"}
        await sio.connect(
            base,
            socketio_path="/ws/socket.io",
            transports=["websocket"],
            auth=auth,
            headers={**proxy, "Cookie": cookie},
            wait_timeout=60,
        )
        t3 = time.monotonic()
        wave.login_s.append(t1 - t0)
        wave.user_s.append(t2 - t1)
        wave.connect_s.append(t3 - t2)
        wave.total_s.append(t3 - t0)
    except Exception as exc:  # noqa: BLE001 - counted and reported
        wave.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        if sio.connected:
            await sio.disconnect()


async def settled(cpu: Cpu, idle_rate: float, quiet_s: float = 0.5) -> tuple[float, float]:
    """Wait until the server spends no more than it does idle over ``quiet_s``; its CPU then."""
    last = cpu.now()
    while True:
        await asyncio.sleep(quiet_s)
        now = cpu.now()
        if now[0] - last[0] <= idle_rate * quiet_s + 2 * TICK_S:
            return now
        last = now


async def wave_of(
    base: str, names: list[str], cpu: Cpu, idle: tuple[float, float], label: str, profile: Path | None = None
) -> Wave:
    wave = Wave(label)
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=len(names) + 10))
    spy = None
    if profile is not None:  # py-spy's samples of the server during the wave (``--profile``)
        cmd = ["py-spy", "record", "-p", str(cpu.pid), "-r", "200", "-f", "raw", "-o", str(profile)]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)  # py-spy attaches
    before, started, client = cpu.now(), time.monotonic(), time.process_time()
    await asyncio.gather(*(one_login(base, name, transport, wave) for name in names))
    wave.client_cpu_s = time.process_time() - client
    after = await settled(cpu, idle[0])
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
    wave.wall_s = time.monotonic() - started
    wave.cpu_s = max(0.0, after[0] - before[0] - idle[0] * wave.wall_s)
    wave.loop_cpu_s = max(0.0, after[1] - before[1] - idle[1] * wave.wall_s)
    await transport.aclose()
    return wave


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def show(wave: Wave, users: int) -> None:
    print(f"\n{wave.label}: {users} logins, {len(wave.errors)} errors, {wave.wall_s:.2f} s until the server was quiet")
    for label, values in (
        ("login  POST /auth/header", wave.login_s),
        ("user   GET /user", wave.user_s),
        ("socket connect", wave.connect_s),
        ("all three", wave.total_s),
    ):
        if values:
            p50, p95 = statistics.median(values) * 1000, pct(values, 0.95) * 1000
            print(f"  {label:26} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
    print(
        f"  server CPU per login: {wave.cpu_s / users * 1000:.2f} ms (process), "
        f"{wave.loop_cpu_s / users * 1000:.2f} ms (event-loop thread)"
    )
    for error in wave.errors[:5]:
        print(f"  error: {error}")


def start_server(folder: Path, database_url: str | None) -> tuple[subprocess.Popen[bytes], str, Path]:
    app_dir = folder / "app"
    (app_dir / "plugins").mkdir(parents=True)
    port = free_port()
    env = {
        **os.environ,
        "WEAVER_LLM__API_TYPE": "offline",
        "WEAVER_UI_USER_HEADER": USER_HEADER,
        "WEAVER_UI_TRUSTED_PROXIES": "127.0.0.1",
        "CHAINLIT_AUTH_SECRET": secrets.token_urlsafe(48),
        "WEAVER_EXECUTION__POOL_SIZE": "0",
        "WEAVER_UI_DISCONNECT_GRACE_S": "1",  # a wave's disconnects are done with before the next wave
        "WEAVER_UI_MAX_SESSIONS_PER_CLIENT": "100000",
        "WEAVER_SESSION__MAX_LIVE_SESSIONS": "100000",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("WEAVER_UI_AUTH", "WEAVER_DATABASE_URL", "OPENAI_API_KEY", "WEAVER_LLM__API_KEY"):
        env.pop(key, None)
    if database_url:
        env["WEAVER_DATABASE_URL"] = database_url
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "ui.cli", "ui", "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(app_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"weaver ui exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base, log
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit("weaver ui did not answer /health in time")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the process group of the server this script started (by its pid), then wait."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def chainlit_pid(root: int) -> int:
    """The Chainlit process: ``weaver ui`` runs it as its child."""
    for pid in [root, *descendants(root)]:
        try:
            if b"chainlit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return root


async def layer_alone(users: int, database_url: str | None) -> dict[str, tuple[float, float, int]]:
    """The history layer alone, in this process: ``users`` first logins at once (``create_user`` of
    new names), then, after a fresh open (nothing cached), the same names at once. For each: the
    event loop's CPU per login (this thread's), the wall time of the rush, the transactions run."""
    found: dict[str, tuple[float, float, int]] = {}
    for _ in range(2):  # the first time pays one-off costs (statements compiled, modules imported): the second counts
        found = await _layer_rush(users, database_url)
    return found


async def _layer_rush(users: int, database_url: str | None) -> dict[str, tuple[float, float, int]]:
    import chainlit as cl
    from sqlalchemy import event

    from ui.history import open_history

    found: dict[str, tuple[float, float, int]] = {}
    with tempfile.TemporaryDirectory(prefix="weaver-login-layer-") as tmp:
        names = [f"layer-{i:04d}" for i in range(users)]
        for kind in ("new", "returning"):
            layer = await open_history(Path(tmp), database_url)
            begun = [0]

            def begin(conn: object, begun: list[int] = begun) -> None:
                begun[0] += 1

            event.listen(layer.engine.sync_engine, "begin", begin)
            try:
                cpu, wall = time.thread_time(), time.monotonic()
                logins = (cl.User(identifier=n, metadata={"provider": "header"}) for n in names)
                await asyncio.gather(*(layer.create_user(user) for user in logins))
                found[kind] = ((time.thread_time() - cpu) / users, time.monotonic() - wall, begun[0])
            finally:
                event.remove(layer.engine.sync_engine, "begin", begin)
                await layer.close()
    return found


def merged(label: str, waves: list[Wave]) -> Wave:
    """The waves of one kind as one: their latencies together, their CPU added up."""
    out = Wave(label)
    for wave in waves:
        for name in ("login_s", "user_s", "connect_s", "total_s", "errors"):
            getattr(out, name).extend(getattr(wave, name))
        out.cpu_s += wave.cpu_s
        out.loop_cpu_s += wave.loop_cpu_s
        out.wall_s += wave.wall_s
    return out


async def main_async(args: argparse.Namespace) -> bool:
    prof = Path(args.profile) if args.profile else None
    waves: dict[str, list[Wave]] = {"new": [], "returning": []}
    with tempfile.TemporaryDirectory(prefix="weaver-login-rush-") as tmp:
        proc, base, log = start_server(Path(tmp), args.database_url)
        try:
            cpu = Cpu(chainlit_pid(proc.pid))
            run = secrets.token_hex(3)
            warm = [f"warm-{run}-{i}" for i in range(5)]
            await wave_of(base, warm, cpu, (0.0, 0.0), "warm-up")
            await wave_of(base, warm, cpu, (0.0, 0.0), "warm-up")
            returning = [f"back-{run}-{i:04d}" for i in range(args.users)]
            await wave_of(base, returning, cpu, (0.0, 0.0), "the returning users' first logins, not counted")
            t0, c0 = time.monotonic(), cpu.now()
            await asyncio.sleep(CACHE_S + 1)  # every user leaves the cache (as the next day); the idle cost is read
            c1, dt = cpu.now(), time.monotonic() - t0
            idle = ((c1[0] - c0[0]) / dt, (c1[1] - c0[1]) / dt)
            print(f"server pid {cpu.pid}; idle CPU {idle[0] * 1000:.1f} ms/s (event loop {idle[1] * 1000:.1f} ms/s)")
            # returning, new, new, returning: a drift of the machine's load over the run cancels out
            for i, kind in enumerate(["returning", "new", "new", "returning"][: 2 * args.pairs]):
                names = returning if kind == "returning" else [f"new{i}-{run}-{j:04d}" for j in range(args.users)]
                profile = prof.with_suffix(f".{i}.{kind}.txt") if prof else None
                wave = await wave_of(base, names, cpu, idle, kind, profile)
                waves[kind].append(wave)
                print(
                    f"wave {i + 1} ({kind}): server CPU {wave.cpu_s / args.users * 1000:.2f} ms per login, "
                    f"login p95 {pct(wave.login_s, 0.95) * 1000:.0f} ms, this client's CPU {wave.client_cpu_s:.2f} s"
                )
                await asyncio.sleep(CACHE_S + 1)
        finally:
            stop_server(proc)
            if args.keep_log:
                print(log.read_text(errors="replace")[-5000:])
    if args.database_url is None:
        alone = await layer_alone(args.users, None)
        print(f"\nthe history layer alone ({args.users} create_user at once, SQLite):")
        for kind, (cpu_s, wall_s, transactions) in alone.items():
            print(
                f"  {kind:9} event-loop CPU {cpu_s * 1000:.2f} ms per login, {wall_s * 1000:.0f} ms for all, "
                f"{transactions} transaction(s) in all"
            )
        print(f"  new / returning CPU {alone['new'][0] / alone['returning'][0]:.2f}")
    first = merged(f"first logins (new users), {len(waves['new'])} waves", waves["new"])
    again = merged(f"returning logins (stored users, not cached), {len(waves['returning'])} waves", waves["returning"])
    count = args.users * len(waves["new"])
    show(first, count)
    show(again, count)
    print("\nnew / returning:")
    for label, a, b in (
        ("login p50", statistics.median(first.login_s or [0]), statistics.median(again.login_s or [0])),
        ("login p95", pct(first.login_s, 0.95), pct(again.login_s, 0.95)),
        ("all three p95", pct(first.total_s, 0.95), pct(again.total_s, 0.95)),
        ("server CPU", first.cpu_s, again.cpu_s),
        ("event-loop CPU", first.loop_cpu_s, again.loop_cpu_s),
    ):
        print(f"  {label:16} {a / b if b else float('nan'):.2f}")
    return not first.errors and not again.errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=2, choices=(1, 2), help="waves of each kind")
    parser.add_argument("--database-url", default=None, help="PostgreSQL on 127.0.0.1 (default: SQLite)")
    parser.add_argument("--profile", default=None, help="py-spy samples of each wave: PATH.new.txt, .returning.txt")
    parser.add_argument("--keep-log", action="store_true", help="print the end of the server log")
    args = parser.parse_args()
    # a TCP port on this machine, or a unix socket (``postgresql://user@/db?host=/dir``)
    if args.database_url and urlparse(args.database_url).hostname not in ("127.0.0.1", "localhost", None):
        raise SystemExit("--database-url: only a database on 127.0.0.1 (or a unix socket) is accepted")
    sys.exit(0 if asyncio.run(main_async(args)) else 1)


if __name__ == "__main__":
    main()
