"""A crowd on a real ``weaver ui``: N simulated browser users over HTTP and socket.io.

Each user does what the page does: ``GET /``, logs in as the page does (``POST /auth/header``), opens
the socket (``/ws/socket.io``, websocket), waits until the chat is ready (Chainlit's
``on_chat_start`` step ends), then sends a ```` ```python ```` block ``--rounds`` times, each after
the previous answer (see ``tests/ui_harness.ChatClient``), every one running code; then it leaves
(disconnects) at once. ``--stay`` keeps everyone connected until the last user is done instead (the
server's memory is then read with everyone connected). Users arrive spread evenly over ``--arrival``
seconds. Measured per user, from the client's side:

* open → ready: ``GET /`` requested → ``on_chat_start`` ended (page, login, socket, chat start);
  its two parts are shown apart too: page + login, and chat ready (socket opened → chat ready);
* first step: message sent → the first role step of the round appears;
* first answer: message sent → the round's answer (round 1, which starts the user's kernel);
* warm round: the same for rounds 2 and later.

Just before the crowd, one user alone does the same on the same server (the baseline; ``--no-baseline``
skips it): the crowd's medians are printed as multiples of it, with the machine's load average and
the share of the machine's CPU the run's processes got, since other work on a shared machine
lengthens every figure.

Who the users are: by default every user is the one local user (the default local login), so the
started server raises the per-client and live-session caps to fit the crowd. ``--distinct-users``
makes every user a different person logging in for the first time with the ``header`` login, the
way a company deploys Weaver: behind a proxy that names the user in a header. The script plays that
proxy: each user sends ``X-Forwarded-User: load-<run>-<n>`` (a new name per user and per run) and
an ``X-Forwarded-For`` address of its own; the started server runs with ``WEAVER_UI_AUTH=header``,
``WEAVER_UI_USER_HEADER=X-Forwarded-User``, a fresh ``CHAINLIT_AUTH_SECRET`` and
``WEAVER_UI_TRUSTED_PROXIES=127.0.0.1`` (for the bench only), and keeps the default per-client cap
(each user holds one chat).

Several client processes: ``--clients K`` splits the users over K processes running this script in
worker mode (user i goes to client i mod K, at the same instant it would have with one client), each
sending its results back as JSON; the coordinator merges them. How we know the client is not the
bottleneck: each client process reports its own event-loop lag (how late a 10 ms timer runs; every
figure it measures meanwhile is that late) and the share of a core it used; the script warns when a
client's lag p95 passes 20 ms or its CPU 80 % (use more ``--clients`` then).

Memory: while the server runs, a process of the script (``--sampler``) samples every ``--sample-s``
(or, when a look takes longer than a ninth of that, nine times the look's time: at most a tenth of a core)
the proportional set size (PSS: pages shared between processes counted in part) of every process under
the started server: the server processes (``weaver ui`` and its Chainlit worker(s)), the fork
server, the kernels and the sandboxes around them; it reports the peak of their sum with its parts
and the peak number of live kernels. After everyone leaves it waits for every session's kernel to
stop (the server runs with ``WEAVER_UI_DISCONNECT_GRACE_S=--grace``) and reports how long that took
(it must be 0 within grace + 30 s). Pooled kernels (no session yet) are counted apart.

Without ``--url`` it starts ``weaver ui`` on a free 127.0.0.1 port in a temporary app folder,
offline (``--workers N`` passes ``--workers N`` to it when N > 1), and stops it at the end.
``--compare-pool`` runs the same crowd twice in one run, with the pool on (``execution.pool_size`` as
given) and off (0); ``--compare-fork`` once more with ``execution.fork_kernels`` flipped.

At the end it prints the started server's log warnings and errors, counted, with the most frequent
messages (numbers blanked so repeats count together): a run says when the server itself complained.
A large ``--pool-size`` is waited for before the crowd (up to 0.3 s a kernel; the report says how
long it took and whether it filled).
Then the machine must be calm: the crowd starts once two seconds in a row were at least
``--calm-idle`` idle (0.8; up to ``--calm-timeout`` s, and the report says whether it was). A
crowd started while Linux still tore down the previous run's thousand sandboxes measured that
work: in such runs the first answers took 22-64 s instead of under one.

Safety: only 127.0.0.1 targets are accepted; the run stops with a clear message when ``--timeout``
passes, when the sampled PSS passes ``--max-memory-gb`` or when the machine's available memory falls
below ``--min-available-gb``; at the end it stops the server it started (its process group, by its
pid) and the client processes it started (by their pids) and checks that no process of the
server's tree (kernels included) is left, and says so.

    python bench/load.py [--users 100] [--rounds 3] [--arrival 1.0] [--distinct-users] [--clients K]
                         [--workers N] [--stay] [--compare-pool] [--compare-fork] [--url URL] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import secrets
import select
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import socketio
from procs import alive, cpu_ticks, descendants, free_port, mem_available_kb, pss_kb, rss_kb, wait_until_calm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.execution.kernel_procs import is_kernel_process  # noqa: E402  (stdlib and core only)

CODE = "```python\nprint(6*7)\n```"
EXPECT = "42"
USER_HEADER = "X-Forwarded-User"
LAG_WARN_S = 0.020
CPU_WARN = 0.80


# ----- one simulated user ----------------------------------------------------------------------


@dataclass
class UserResult:
    index: int = 0
    name: str = ""
    page_s: float | None = None  # GET / → logged in
    ready_s: float | None = None  # socket opened → chat ready
    open_s: float | None = None  # GET / → chat ready
    first_step_s: list[float] = field(default_factory=list)
    answer_s: list[float] = field(default_factory=list)
    error: str | None = None
    left_at: float | None = None  # time.monotonic() when it disconnected


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


def proxy_headers(index: int, name: str | None, header: str) -> dict[str, str]:
    """What the proxy in front of Weaver adds to each request of user ``index``: the user's name and
    an address of its own (10.77.x.y, never contacted: it is only a header value)."""
    if name is None:
        return {}
    return {header: name, "X-Forwarded-For": f"10.77.{index // 250}.{index % 250 + 1}"}


async def run_user(
    base: str, at: float, rounds: int, step_timeout: float, result: UserResult, proxy: dict[str, str]
) -> socketio.AsyncClient:
    """One browser tab: page, login, socket, chat ready, ``rounds`` rounds, from ``at``
    (``time.monotonic()``, the same clock in every process). Returns the socket (still open)."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    page = Page()
    sio = socketio.AsyncClient(reconnection=False)

    @sio.on("*")
    async def record(event: str, data: Any = None) -> None:
        page.apply(event, data)

    try:
        opened = time.monotonic()
        async with httpx.AsyncClient(base_url=base, timeout=step_timeout, verify=_TLS, headers=proxy) as http:
            (await http.get("/")).raise_for_status()
            login = await http.post("/auth/header", headers={"Origin": base})
            if proxy and login.status_code != 200:
                raise RuntimeError(f"header login answered {login.status_code}: {login.text[:200]}")
            # Every cookie the page holds, as a browser sends them: a proxy's stickiness cookie too.
            cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items()) if login.status_code == 200 else ""
        result.page_s = time.monotonic() - opened
        started = time.monotonic()
        auth = {
            "clientType": "webapp",
            "sessionId": str(uuid.uuid4()),
            "threadId": "",
            "userEnv": "{}",
            "chatProfile": "",
        }
        headers = {"Origin": base, **proxy, **({"Cookie": cookie} if cookie else {})}
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
        result.open_s = time.monotonic() - opened
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


async def leave(sio: socketio.AsyncClient, result: UserResult) -> None:
    if sio.connected:
        try:
            await sio.disconnect()
        except Exception:  # noqa: BLE001 - a socket already dropped has left too
            pass
    result.left_at = time.monotonic()


# ----- one client process (worker mode) ---------------------------------------------------------


async def loop_lag(lags: list[float], period: float = 0.01) -> None:
    """How late this client's own event loop runs a 10 ms timer: when it is late, so is every
    figure measured meanwhile (the simulated users of one client process share its loop)."""
    while True:
        planned = time.monotonic() + period
        await asyncio.sleep(period)
        lags.append(max(0.0, time.monotonic() - planned))


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def client_part(spec: dict[str, Any]) -> dict[str, Any]:
    """This process's share of the crowd: its users arrive at the given instants; with ``stay`` they
    stay connected until the coordinator says ``leave`` on stdin."""
    users = spec["users"]  # [index, name or None, at]
    results = [UserResult(index=index, name=name or "") for index, name, _ in users]
    lags: list[float] = []
    lag = asyncio.ensure_future(loop_lag(lags))
    cpu_before, began = time.process_time(), time.monotonic()

    async def one(entry: list[Any], result: UserResult) -> socketio.AsyncClient:
        index, name, at = entry
        proxy = proxy_headers(index, name, spec["header"])
        sio = await run_user(spec["base"], at, spec["rounds"], spec["step_timeout"], result, proxy)
        if not spec["stay"]:
            await leave(sio, result)
            _say({"user": asdict(result)})  # at once: a run stopped midway still has it
        return sio

    sockets = await asyncio.gather(*(one(u, r) for u, r in zip(users, results, strict=True)))
    lag.cancel()
    wall = max(1e-6, time.monotonic() - max(began, spec["start_at"]))
    report = {
        "pid": os.getpid(),
        "users": [asdict(r) for r in results],
        "lag_p50_s": statistics.median(lags) if lags else 0.0,
        "lag_p95_s": pct(lags, 0.95) if lags else 0.0,
        "lag_max_s": max(lags) if lags else 0.0,
        "cpu_s": time.process_time() - cpu_before,
        "wall_s": wall,
    }
    if spec["stay"]:
        _say({"done": True})
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "leave"
        await asyncio.gather(*(leave(s, r) for s, r in zip(sockets, results, strict=True)))
        report["users"] = [asdict(r) for r in results]
    return report


def client_main() -> None:
    """Worker mode: say ``ready`` once imported, read the spec (one JSON line), run, answer in JSON."""
    _say({"ready": True})
    spec = json.loads(sys.stdin.readline())
    _say({"result": asyncio.run(client_part(spec))})


# ----- processes -------------------------------------------------------------------------------


@dataclass
class Kernel:
    pid: int
    session_id: str
    pooled: bool  # started ahead, not yet handed to a session


def session_of(pid: int, app_dir: Path | None) -> tuple[str, bool] | None:
    """The session a kernel works for (the folder it works in: a forked kernel's environment is the
    fork server's) and whether it is pooled (its session folder has no session log yet)."""
    try:
        session_id = Path(os.readlink(f"/proc/{pid}/cwd")).parent.name
    except OSError:
        return None
    pooled = app_dir is not None and not (app_dir / "workspace" / "sessions" / session_id / "session.log").exists()
    return session_id, pooled


def kernels(root: int, app_dir: Path | None) -> list[Kernel]:
    """The kernel processes under ``root``."""
    found = []
    for pid in descendants(root):
        if is_kernel_process(pid):
            seen = session_of(pid, app_dir)
            if seen is not None:
                found.append(Kernel(pid, *seen))
    return found


def kind_of(pid: int) -> str:
    """``kernel``, ``fork server``, ``server`` (``weaver ui`` and the web server processes: any other
    Python) or ``sandbox`` (bubblewrap and the sandbox's init around each kernel)."""
    if is_kernel_process(pid):
        return "kernel"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "sandbox"
    if b"core.execution.zygote" in argv:
        return "fork server"
    return "server" if b"python" in Path(argv[0].decode(errors="replace")).name.encode() else "sandbox"


def server_pids(root: int) -> list[int]:
    return [pid for pid in [root, *descendants(root)] if kind_of(pid) == "server"]


KINDS = ("server", "fork server", "kernel", "sandbox")


def _stat(pid: int) -> tuple[int, int] | None:
    """(start time, user + system CPU ticks) of a process from one read of its stat; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]), int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


REREAD_EVERY = 4


class Probe:
    """One look at the server's process tree, made in the sampler process: PSS per kind, live
    kernels, and the CPU of every process seen since the probe started (so kernels that stopped
    still count)."""

    def __init__(self, root: int, app_dir: Path | None) -> None:
        self.root, self.app_dir = root, app_dir
        self.kinds: dict[tuple[int, int], str] = {}
        self.first: dict[tuple[int, int], int] = {}
        self.last: dict[tuple[int, int], int] = {}
        self.looks = 0
        self.pss: dict[tuple[int, int], tuple[int, int]] = {}  # key → (PSS kB, look it was read at)

    def pss_of(self, pid: int, key: tuple[int, int], kind: str) -> int:
        """The PSS of a server process at every look; of a kernel or a sandbox (hundreds of them,
        ~0.5 ms each to read, and slow to change once started) when first seen, and then again at
        every ``REREAD_EVERY``-th look, staggered by pid."""
        known = self.pss.get(key)
        if kind in ("kernel", "sandbox") and known is not None and (self.looks + pid) % REREAD_EVERY:
            return known[0]
        value = pss_kb(pid)
        self.pss[key] = (value, self.looks)
        return value

    def look(self) -> dict[str, Any]:
        began = time.monotonic()
        parts = dict.fromkeys(KINDS, 0)
        live = session_live = 0
        new: list[tuple[int, int]] = []
        for pid in [self.root, *descendants(self.root)]:
            stat = _stat(pid)
            if stat is None:
                continue
            key = (pid, stat[0])
            # A kernel stays one; anything else may still exec (or be forked into a kernel).
            kind = self.kinds.get(key)
            if kind != "kernel":
                kind = kind_of(pid)
            if key not in self.kinds:
                new.append(key)
                self.first[key] = stat[1] if self.looks == 0 else 0
            self.kinds[key] = kind
            self.last[key] = stat[1]
            parts[kind] += self.pss_of(pid, key, kind)
            if kind == "kernel":
                live += 1
                seen = session_of(pid, self.app_dir)
                session_live += 1 if seen is not None and not seen[1] else 0
        self.looks += 1
        self.pss = {k: v for k, v in self.pss.items() if v[1] >= self.looks - REREAD_EVERY}
        cpu = dict.fromkeys(KINDS, 0)
        for key, ticks in self.last.items():
            cpu[self.kinds[key]] += ticks - self.first[key]
        return {
            "parts": parts,
            "live": live,
            "session_live": session_live,
            "available": mem_available_kb(),
            "cpu_ticks": cpu,
            "new": new,
            "cost_s": time.monotonic() - began,
            "own_cpu_s": time.process_time(),
        }


SAMPLER_WAIT_PER_COST = 9.0  # the sampler waits at least 9 times as long as its last look took


def sampler_main(root: int, app_dir: str, period: float) -> None:
    """Sampler mode: one look every ``period`` s as a JSON line, until stdin closes. Its CPU is
    printed; on a busy machine that slice comes from every process alike, the kernels no more than
    others. (At nice 19 in an autogroup of its own it was starved there: a look took most of a
    second of wall time and missed peaks.)"""
    probe = Probe(root, Path(app_dir) if app_dir else None)
    while True:
        look = probe.look()
        _say(look)
        # Reading every process's page tables grows with the processes: with a thousand kernels a look
        # took ~0.3-0.6 s, a third of a core sampling every second. The sampler keeps to a tenth of a
        # core (a fifth was 15 % of a core, 18 CPU-s, in a 1,000-person run: taken from the crowd).
        wait = max(period, float(look["cost_s"]) * SAMPLER_WAIT_PER_COST)
        readable, _, _ = select.select([sys.stdin], [], [], wait)
        if readable and not sys.stdin.readline():
            return


@dataclass
class Peak:
    total_kb: int = 0
    parts_kb: dict[str, int] = field(default_factory=dict)  # at the moment of the peak


class Sampler(threading.Thread):
    """Reads the sampler process (``--sampler``) and keeps the peaks, the CPU per kind since the last
    ``reset``, the processes seen and the safety bounds."""

    def __init__(self, root: int, app_dir: Path | None, period: float, max_kb: int, min_available_kb: int) -> None:
        super().__init__(daemon=True, name="load-sampler")
        self.max_kb, self.min_available_kb = max_kb, min_available_kb
        cmd = [sys.executable, str(Path(__file__).resolve()), "--sampler", str(root), str(app_dir or ""), str(period)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.lock = threading.Lock()
        self.stop_reason: str | None = None
        self.seen: list[tuple[int, int]] = []  # (pid, start) of every process seen, for the final check
        self.cpu_ticks: dict[str, int] = dict.fromkeys(KINDS, 0)  # since the sampler started
        self.own_cpu_s = 0.0
        self.reset()

    def reset(self) -> None:
        """Start a new measurement (peaks, CPU) from now; the processes seen are kept."""
        with self.lock:
            self.peak = Peak()
            self.peak_part_kb = dict.fromkeys(KINDS, 0)
            self.peak_kernels = 0
            self.peak_session_kernels = 0
            self.min_available_seen_kb = mem_available_kb()
            self.cpu_at_reset = dict(self.cpu_ticks)
            self.cost_s: list[float] = []

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            look = json.loads(line)
            parts, available = look["parts"], look["available"]
            total = sum(parts.values())
            with self.lock:
                self.seen += [tuple(key) for key in look["new"]]  # type: ignore[misc]
                self.cpu_ticks = look["cpu_ticks"]
                self.own_cpu_s = look["own_cpu_s"]
                if total > self.peak.total_kb:
                    self.peak = Peak(total, parts)
                for kind in KINDS:
                    self.peak_part_kb[kind] = max(self.peak_part_kb[kind], parts[kind])
                self.peak_kernels = max(self.peak_kernels, look["live"])
                self.peak_session_kernels = max(self.peak_session_kernels, look["session_live"])
                self.min_available_seen_kb = min(self.min_available_seen_kb, available)
                self.cost_s.append(look["cost_s"])
                if self.stop_reason is None and total > self.max_kb:
                    self.stop_reason = (
                        f"stopping: the PSS of the server and its kernels ({total / 2**20:.1f} GiB) passed "
                        f"--max-memory-gb {self.max_kb / 2**20:.3g}"
                    )
                if self.stop_reason is None and 0 < available < self.min_available_kb:
                    self.stop_reason = (
                        f"stopping: machine memory available fell below {self.min_available_kb / 2**20:.3g} GiB "
                        f"({available / 2**20:.1f} GiB left; --min-available-gb)"
                    )

    def finish(self) -> None:
        """Stop the sampler process (ours: closing its stdin ends it; by its pid if it does not)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.join(timeout=10)

    def cpu_s(self) -> dict[str, float]:
        """CPU-seconds per kind since the last ``reset``."""
        tick = os.sysconf("SC_CLK_TCK")
        with self.lock:
            return {kind: (self.cpu_ticks[kind] - self.cpu_at_reset[kind]) / tick for kind in KINDS}

    def note_tree(self, root: int) -> None:
        """Add the processes under ``root`` now (those started since the last look) to the ones seen."""
        found = [(pid, stat[0]) for pid in [root, *descendants(root)] if (stat := _stat(pid)) is not None]
        with self.lock:
            self.seen += found

    def left_running(self) -> list[int]:
        """Pids of the processes ever seen under the server that still run."""
        with self.lock:
            seen = list(self.seen)
        return [pid for (pid, started) in seen if alive(pid, started)]


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


def server_env(args: argparse.Namespace, pool_size: int, fork: bool) -> dict[str, str]:
    env = {
        **os.environ,
        "WEAVER_LLM__API_TYPE": "offline",
        "WEAVER_UI_DISCONNECT_GRACE_S": str(args.grace),
        "WEAVER_SESSION__MAX_LIVE_SESSIONS": str(max(1000, args.users)),
        "WEAVER_EXECUTION__POOL_SIZE": str(pool_size),
        "WEAVER_EXECUTION__FORK_KERNELS": str(fork).lower(),
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("OPENAI_API_KEY", "WEAVER_LLM__API_KEY", "WEAVER_LLM__API_BASE", "FORWARDED_ALLOW_IPS"):
        env.pop(key, None)
    if args.distinct_users:
        # The bench plays the proxy, from 127.0.0.1: trusted here only, for this server only.
        env |= {
            "WEAVER_UI_AUTH": "header",
            "WEAVER_UI_USER_HEADER": args.user_header,
            "CHAINLIT_AUTH_SECRET": secrets.token_urlsafe(48),
            "WEAVER_UI_TRUSTED_PROXIES": "127.0.0.1",
        }
    else:
        # Every simulated user is the one local user: the per-client cap must hold the crowd.
        env |= {"WEAVER_UI_AUTH": "local", "WEAVER_UI_MAX_SESSIONS_PER_CLIENT": str(max(1000, args.users))}
        env.pop("WEAVER_UI_USER_HEADER", None)
    return env


def start_server(folder: Path, args: argparse.Namespace, pool_size: int, fork: bool, timeout: float) -> Server:
    app_dir = folder / "app"
    (app_dir / "plugins").mkdir(parents=True)
    port = free_port()
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "ui.cli", "ui", "--host", "127.0.0.1", "--port", str(port), "--app-dir", str(app_dir)]
    if args.workers > 1:
        cmd += ["--workers", str(args.workers)]
    env = server_env(args, pool_size, fork)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, app_dir, log)
    deadline = time.monotonic() + timeout
    answered: set[str] = set()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"weaver ui exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            # With --workers, every worker must answer (the router picks one by its cookie and names it).
            for index in range(args.workers):
                got = httpx.get(f"{server.base}/health", headers={"Cookie": f"weaver_worker={index}"}, timeout=1)
                if got.status_code == 200:
                    answered.add(got.headers.get("x-weaver-worker", "0"))
            if len(answered) >= args.workers:
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
class ClientStats:
    pid: int
    users: int
    lag_p50_s: float
    lag_p95_s: float
    lag_max_s: float
    cpu_s: float
    wall_s: float

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / max(1e-6, self.wall_s)


@dataclass
class Report:
    label: str
    users: list[UserResult]
    wall_s: float
    clients: list[ClientStats] = field(default_factory=list)
    server_rss_before_kb: int = 0
    server_rss_loaded_kb: int = 0
    kernel_rss_kb: list[int] = field(default_factory=list)
    kernel_pss_kb: list[int] = field(default_factory=list)
    pooled_kernels: int = 0
    left_after_s: float | None = None
    left: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak: Peak = field(default_factory=Peak)
    peak_part_kb: dict[str, int] = field(default_factory=dict)
    peak_kernels: int = 0
    peak_session_kernels: int = 0
    min_available_kb: int = 0
    sample_cost_s: float = 0.0
    sampler_cpu_s: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pool_fill: tuple[int, float, bool] | None = None  # pooled kernels wanted, seconds waited, filled
    calm: tuple[bool, float, float] | None = None  # the machine before the crowd: calm, seconds waited, idle share
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stopped: str | None = None
    logins: tuple[int, int, int] | None = None  # logins, distinct names, distinct client addresses
    stop_check: str = ""
    alone: Report | None = None  # one user alone on the same server just before the crowd


def audited_logins(app_dir: Path | None, names: set[str]) -> tuple[int, int, int] | None:
    """What the server's audit log says of this crowd's logins: how many, of how many distinct
    names, from how many distinct client addresses (the proxy's ``X-Forwarded-For``, when trusted)."""
    path = app_dir / "audit.jsonl" if app_dir is not None else None
    if path is None or not path.exists():
        return None
    logins = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "login" and (not names or entry.get("user") in names):
            logins.append(entry)
    return len(logins), len({e.get("user") for e in logins}), len({e.get("client") for e in logins})


def default_clients(users: int) -> int:
    """One client process holds 100 users arriving within a second with a loop lag p95 of a few ms;
    above that, one more per 250 users."""
    return 1 if users <= 100 else min(8, math.ceil(users / 250))


async def _spawn_client() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve()),
        "--client",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=64 * 2**20,
        start_new_session=True,
    )


async def _read(proc: asyncio.subprocess.Process, key: str, done: list[UserResult] | None = None) -> dict[str, Any]:
    """The client's next message with ``key``; the users it reports meanwhile go to ``done``."""
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client process {proc.pid} ended without {key!r} (exit {await proc.wait()})")
        message = json.loads(line)
        if key in message:
            return message
        if "user" in message and done is not None:
            done.append(UserResult(**message["user"]))


async def _send(proc: asyncio.subprocess.Process, message: Any) -> None:
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(message) + "\n").encode())
    await proc.stdin.drain()


class Stop(Exception):
    """A safety bound was hit; the message says which. ``done``: the users who had finished."""

    def __init__(self, reason: str, done: list[UserResult] | None = None) -> None:
        super().__init__(reason)
        self.done = done or []


async def _watch(tasks: list[asyncio.Future[Any]], sampler: Sampler | None, deadline: float) -> list[Any]:
    """Wait for every task, stopping when a bound is hit."""
    pending = set(tasks)
    try:
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.5)
            if sampler is not None and sampler.stop_reason:
                raise Stop(sampler.stop_reason)
            if time.monotonic() > deadline:
                raise Stop("stopping: --timeout reached")
    finally:
        for task in pending:
            task.cancel()
    return [t.result() for t in tasks]


async def crowd(
    server: Server, args: argparse.Namespace, label: str, deadline: float, sampler: Sampler | None
) -> Report:
    root = server.proc.pid if server.proc else None
    step_timeout = max(10.0, min(args.step_timeout, deadline - time.monotonic()))
    if root is not None and server.app_dir is not None and args.pool_size > 0:
        wanted = args.pool_size * args.workers  # each worker keeps its own pool
        # A pool sized for a crowd fills at the machine's start rate (~20 a second on 2 cores).
        waited = time.monotonic()
        filled = await pool_settled(
            root, server.app_dir, wanted, min(max(60.0, wanted * 0.3), deadline - time.monotonic())
        )
        pool_fill = (wanted, time.monotonic() - waited, filled)
    else:
        pool_fill = None
    calm = await asyncio.to_thread(wait_until_calm, args.calm_idle, min(args.calm_timeout, deadline - time.monotonic()))
    spids = server_pids(root) if root is not None else []
    report = Report(label, [], 0.0)
    report.server_rss_before_kb = sum(rss_kb(p) for p in spids)
    report.load_before = os.getloadavg()
    report.pool_fill = pool_fill
    report.calm = calm
    n_clients = max(1, min(args.users, args.clients or default_clients(args.users)))
    run = secrets.token_hex(3)
    spacing = args.arrival / args.users if args.users > 1 else 0.0
    procs = [await _spawn_client() for _ in range(n_clients)]
    answers: list[Any] = []
    done: list[UserResult] = []
    try:
        await _watch([asyncio.ensure_future(_read(p, "ready")) for p in procs], sampler, deadline)
        if sampler is not None:
            sampler.reset()
        start_at = time.monotonic() + 0.3
        shares: list[list[list[Any]]] = [[] for _ in procs]
        for i in range(args.users):
            name = f"load-{run}-{i:05d}" if args.distinct_users else None
            shares[i % n_clients].append([i, name, start_at + i * spacing])
        for proc, share in zip(procs, shares, strict=True):
            spec = {"base": server.base, "users": share, "rounds": args.rounds, "step_timeout": step_timeout}
            await _send(proc, {**spec, "stay": args.stay, "header": args.user_header, "start_at": start_at})
        if args.stay:
            await _watch([asyncio.ensure_future(_read(p, "done")) for p in procs], sampler, deadline)
            report.wall_s = time.monotonic() - start_at
            if root is not None:
                await asyncio.sleep(1.0)  # let the last rounds' bookkeeping settle before reading memory
                report.server_rss_loaded_kb = sum(rss_kb(p) for p in spids)
                found = [k for k in kernels(root, server.app_dir) if not k.pooled]
                report.kernel_rss_kb = [rss_kb(k.pid) for k in found]
                report.kernel_pss_kb = [pss_kb(k.pid) for k in found]
                report.pooled_kernels = len(kernels(root, server.app_dir)) - len(found)
            for proc in procs:
                await _send(proc, "leave")
        try:
            answers = await _watch([asyncio.ensure_future(_read(p, "result", done)) for p in procs], sampler, deadline)
        except Stop as why:
            raise Stop(str(why), sorted(done, key=lambda u: u.index)) from None
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            try:  # a client that answered ends by itself; one stopped midway is killed
                await asyncio.wait_for(proc.wait(), timeout=5 if answers else 0.1)
            except asyncio.TimeoutError:
                proc.kill()  # ours, by its pid
                await proc.wait()
    for share, answer in zip(shares, answers, strict=True):
        part = answer["result"]
        users = [UserResult(**u) for u in part["users"]]
        report.users += users
        keys = ("pid", "lag_p50_s", "lag_p95_s", "lag_max_s", "cpu_s", "wall_s")
        report.clients.append(ClientStats(users=len(share), **{k: part[k] for k in keys}))
    report.users.sort(key=lambda u: u.index)
    report.load_after = os.getloadavg()
    if args.distinct_users:
        report.logins = audited_logins(server.app_dir, {u.name for u in report.users})
    last_left = max((u.left_at for u in report.users if u.left_at is not None), default=time.monotonic())
    if not args.stay:
        report.wall_s = last_left - start_at
    if root is not None:
        limit = last_left + args.grace + 30.0
        while True:
            report.left = sum(1 for k in kernels(root, server.app_dir) if not k.pooled)
            if report.left == 0:
                report.left_after_s = time.monotonic() - last_left
                break
            if time.monotonic() > min(limit, deadline):
                break
            await asyncio.sleep(0.5)
    if sampler is not None:
        report.cpu_s = sampler.cpu_s()
        with sampler.lock:
            report.peak = sampler.peak
            report.peak_part_kb = dict(sampler.peak_part_kb)
            report.peak_kernels = sampler.peak_kernels
            report.peak_session_kernels = sampler.peak_session_kernels
            report.min_available_kb = sampler.min_available_seen_kb
            report.sample_cost_s = statistics.median(sampler.cost_s) if sampler.cost_s else 0.0
            report.sampler_cpu_s = sampler.own_cpu_s
    return report


async def sequential(
    server: Server, args: argparse.Namespace, label: str, deadline: float, sampler: Sampler | None
) -> Report:
    """``--users 1``: ``--repeat`` new chats one after another, each finding the pool refilled."""
    reports = [await crowd(server, args, label, deadline, sampler) for _ in range(args.repeat)]
    merged = reports[0]
    for extra in reports[1:]:
        merged.users += extra.users
        merged.clients += extra.clients
        merged.kernel_rss_kb += extra.kernel_rss_kb
        merged.kernel_pss_kb += extra.kernel_pss_kb
        merged.left = max(merged.left, extra.left)
        merged.peak = max(merged.peak, extra.peak, key=lambda peak: peak.total_kb)
        merged.peak_kernels = max(merged.peak_kernels, extra.peak_kernels)
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
    return f"p50 {statistics.median(values):7.3f} s   p95 {pct(values, 0.95):7.3f} s   max {max(values):7.3f} s"


def crowd_name(args: argparse.Namespace, n: int) -> str:
    if args.users == 1:
        return f"{n} chats one after another"
    who = "distinct users" if args.distinct_users else "users (one local user)"
    return f"{n} {who} {'within' if args.arrival <= 1 else 'over'} {args.arrival:g} s"


def _gib(kb: int) -> str:
    return f"{kb / 2**20:.2f} GiB"


def summary(report: Report, args: argparse.Namespace) -> dict[str, Any]:
    """The figures of the README's table, for ``--json`` and the one-line summary."""
    users = report.users

    def p(values: list[float], q: float) -> float | None:
        return pct(values, q) if values else None

    first = [u.answer_s[0] for u in users if u.answer_s]
    warm = [s for u in users for s in u.answer_s[1:]]
    opened = [u.open_s for u in users if u.open_s is not None]
    steps = [s for u in users for s in u.first_step_s]
    servers = report.peak.parts_kb.get("server", 0)
    in_kernels = report.peak.total_kb - servers
    return {
        "label": report.label,
        "crowd": crowd_name(args, len(users) if args.users == 1 else args.users),
        "users": len(users),
        "rounds": args.rounds,
        "errors": sum(1 for u in users if u.error is not None),
        "first_error": next((u.error for u in users if u.error is not None), None),
        "answers_ok": sum(len(u.answer_s) for u in users),
        "answers_expected": len(users) * args.rounds,
        "open_ready_p95_s": p(opened, 0.95),
        "first_step_p95_s": p(steps, 0.95),
        "first_answer_p50_s": statistics.median(first) if first else None,
        "first_answer_p95_s": p(first, 0.95),
        "first_answer_max_s": max(first) if first else None,
        "warm_p95_s": p(warm, 0.95),
        "peak_pss_kb": report.peak.total_kb,
        "peak_pss_parts_kb": report.peak.parts_kb,
        "peak_pss_servers_kb": servers,
        "peak_pss_kernels_kb": in_kernels,
        "peak_kernels": report.peak_kernels,
        "kernels_left": report.left if args.url is None else None,
        "kernels_left_after_s": report.left_after_s,
        "client_lag_p95_s": max((c.lag_p95_s for c in report.clients), default=None),
        "client_cpu_share": max((c.cpu_share for c in report.clients), default=None),
        "clients": len(report.clients),
        "client_pids": [c.pid for c in report.clients],
        "alone": baseline_line(report, args) if report.alone is not None and report.alone.users else None,
        "stopped": report.stopped,
        "logins": report.logins,
    }


def _s(value: float | None) -> str:
    """Seconds as the README's tables write them: 0.62, 7.9, 141."""
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def table_row(s: dict[str, Any], grace: float) -> str:
    left = "–" if s["kernels_left"] is None else str(s["kernels_left"])
    if s["kernels_left_after_s"] is not None:
        left += f" (grace + {max(0.0, s['kernels_left_after_s'] - grace):.1f} s)"
    memory = "–"
    if s["peak_pss_kb"]:
        memory = (
            f"{s['peak_pss_kb'] / 2**20:.2f} GiB ({s['peak_pss_servers_kb'] / 2**20:.2f} + "
            f"{s['peak_pss_kernels_kb'] / 2**20:.2f})"
        )
    if s["stopped"] and not s["users"]:
        return f"| {s['crowd']} | {s['stopped']} | | | | | {memory} | {s['peak_kernels']} | |"
    if s["stopped"]:
        left = f"stopped ({s['users']} users had finished): {s['stopped']}"
    cells = [
        s["crowd"],
        str(s["errors"]),
        f"{_s(s['open_ready_p95_s'])} s",
        f"{_s(s['first_step_p95_s'])} s",
        f"{_s(s['first_answer_p50_s'])} / {_s(s['first_answer_p95_s'])} / {_s(s['first_answer_max_s'])} s",
        f"{_s(s['warm_p95_s'])} s",
        memory,
        str(s["peak_kernels"]) if s["peak_pss_kb"] else "–",
        left,
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = (
    "| crowd | errors | open → ready p95 | first step p95 | first answer p50 / p95 / max | warm p95 "
    "| peak PSS servers + kernels | peak kernels | kernels left |"
)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def baseline_line(report: Report, args: argparse.Namespace) -> str:
    """The same user's figures alone on the same server just before the crowd, and the crowd's
    medians as multiples of them (how much the crowd, not the machine, costs each user)."""
    assert report.alone is not None
    solo = report.alone.users[0]
    figures = [
        ("open -> ready", [solo.open_s] if solo.open_s is not None else [], [u.open_s for u in report.users]),
        ("first answer", solo.answer_s[:1], [u.answer_s[0] for u in report.users if u.answer_s]),
        ("warm", solo.answer_s[1:], [x for u in report.users for x in u.answer_s[1:]]),
    ]
    said = []
    for name, alone, crowd_values in figures:
        a, c = _median([x for x in alone if x is not None]), _median([x for x in crowd_values if x is not None])
        if a is not None and c is not None:
            said.append(f"{name} {a:.3f} s (crowd median {c / max(a, 1e-6):.1f}x)")
    return ", ".join(said) + (f"; error: {solo.error}" if solo.error else "")


def show(report: Report, args: argparse.Namespace) -> bool:
    users = report.users
    ok = [u for u in users if u.error is None]
    errors = [u.error for u in users if u.error is not None]
    n = len(users)
    s = summary(report, args)
    print(f"\n== {report.label}: {s['crowd']}, {args.rounds} rounds each ==")
    if report.stopped:
        print(f"  {report.stopped}" + (f"; the figures are of the {n} users who had finished" if n else ""))
        if not n:
            if report.peak.total_kb:
                peak = f"{_gib(report.peak.total_kb)}, {report.peak_kernels} kernels at most"
                print(f"  {'peak memory (PSS)':<24} {peak}")
            print(f"  {'server stopped':<24} {report.stop_check}")
            return False
    # The labels are read by bench/workers.py: "page + login" and "chat ready" (socket → ready) as before.
    print(f"  {'open -> ready':<24} {stats([u.open_s for u in users if u.open_s is not None])}")
    print(f"  {'  page + login':<24} {stats([u.page_s for u in users if u.page_s is not None])}")
    print(f"  {'  chat ready':<24} {stats([u.ready_s for u in users if u.ready_s is not None])}")
    print(f"  {'first step':<24} {stats([x for u in users for x in u.first_step_s])}")
    print(f"  {'first answer':<24} {stats([u.answer_s[0] for u in users if u.answer_s])}")
    print(f"  {'warm rounds':<24} {stats([x for u in users for x in u.answer_s[1:]])}")
    print(f"  {'errors':<24} {len(errors)} of {n}" + (f"  first: {errors[0]}" if errors else ""))
    print(f"  {'answers right':<24} {s['answers_ok']} of {s['answers_expected']}")
    if report.logins is not None:
        print(
            f"  {'logins (audit log)':<24} {report.logins[0]} of {report.logins[1]} distinct names "
            f"from {report.logins[2]} client addresses"
        )
    if report.pool_fill is not None:
        wanted, waited_s, filled = report.pool_fill
        print(
            f"  {'warm pool before':<24} {wanted} kernels {'ready' if filled else 'NOT all ready'} "
            f"after {waited_s:.1f} s of waiting"
        )
    if report.calm is not None:
        calm, waited_s, idle = report.calm
        said = (
            f"calm after {waited_s:.1f} s of waiting"
            if calm
            else f"NOT calm after {waited_s:.1f} s (--calm-idle {args.calm_idle:g}): other work took the cores"
        )
        print(f"  {'machine before':<24} {idle:.0%} idle, {said}")
    if not report.stopped:
        went = "stayed" if args.stay else "left"
        print(f"  {'wall time':<24} {report.wall_s:.1f} s ({len(ok)} users done; they {went})")
        print(
            f"  {'machine load average':<24} {report.load_before[0]:.1f} before, {report.load_after[0]:.1f} after "
            f"(1 min; other work on the machine makes every latency longer)"
        )
    for i, c in enumerate(report.clients):
        warn = []
        if c.lag_p95_s > LAG_WARN_S:
            warn.append(f"loop lag p95 over {LAG_WARN_S * 1000:.0f} ms")
        if c.cpu_share > CPU_WARN:
            warn.append(f"CPU over {CPU_WARN:.0%} of a core")
        print(
            f"  {'client ' + str(i + 1) + ' (pid ' + str(c.pid) + ')':<24} {c.users} users, loop lag p50 "
            f"{c.lag_p50_s * 1000:.1f} ms p95 {c.lag_p95_s * 1000:.1f} ms max {c.lag_max_s * 1000:.0f} ms, "
            f"CPU {c.cpu_s:.1f} s = {c.cpu_share:.0%} of a core"
            + (f"  WARNING: {' and '.join(warn)}: the client may be the bottleneck (more --clients)" if warn else "")
        )
    if report.server_rss_loaded_kb:
        per_user = (report.server_rss_loaded_kb - report.server_rss_before_kb) / 1024 / max(1, n)
        print(
            f"  {'server memory':<24} {report.server_rss_before_kb / 1024:.0f} MB before, "
            f"{report.server_rss_loaded_kb / 1024:.0f} MB with everyone connected: {per_user:.2f} MB per user"
        )
    if report.cpu_s:
        c = report.cpu_s
        clients = sum(x.cpu_s for x in report.clients)
        print(
            f"  {'CPU used':<24} servers {c['server']:.1f} s, kernels {c['kernel']:.1f} s, fork server "
            f"{c['fork server']:.1f} s, sandboxes {c['sandbox']:.1f} s, clients {clients:.1f} s "
            f"({os.cpu_count()} cores x {report.wall_s:.1f} s wall: this run got "
            f"{(sum(c.values()) + clients) / max(1e-6, (os.cpu_count() or 1) * report.wall_s):.0%} of the machine)"
        )
    if report.peak.total_kb:
        parts = report.peak.parts_kb
        print(
            f"  {'peak memory (PSS)':<24} {_gib(report.peak.total_kb)}: servers {_gib(parts['server'])}, "
            f"kernels {_gib(parts['kernel'])}, fork server {_gib(parts['fork server'])}, "
            f"sandboxes {_gib(parts['sandbox'])}"
        )
        print(
            f"  {'  each part at its peak':<24} servers {_gib(report.peak_part_kb['server'])}, "
            f"kernels {_gib(report.peak_part_kb['kernel'])}; machine memory available fell to "
            f"{_gib(report.min_available_kb)} (sampled every "
            f"{max(args.sample_s, report.sample_cost_s * SAMPLER_WAIT_PER_COST):.1f} s, "
            f"{report.sample_cost_s * 1000:.0f} ms a sample, {report.sampler_cpu_s:.1f} CPU-s in all)"
        )
        print(f"  {'peak live kernels':<24} {report.peak_kernels} ({report.peak_session_kernels} holding a session)")
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
    if args.url is None and not report.stopped:
        gone = f"after {report.left_after_s:.1f} s" if report.left_after_s is not None else "NOT within the limit"
        when = f"all gone {gone} after the last user left; grace {args.grace:g} s"
        print(f"  {'session kernels left':<24} {report.left} ({when})")
    if report.alone is not None and report.alone.users:
        print(f"  {'one user alone, before':<24} {baseline_line(report, args)}")
    if report.stop_check:
        print(f"  {'server stopped':<24} {report.stop_check}")
    print(f"  {'row':<24} {table_row(s, args.grace)}")
    return not errors and report.left == 0 and not report.stopped


async def run_variant(args: argparse.Namespace, size: int, fork: bool, deadline: float) -> tuple[bool, dict[str, Any]]:
    """Start a server, run the crowd, stop everything and check nothing is left."""
    with tempfile.TemporaryDirectory(prefix="weaver-load-") as tmp:
        limit = min(120.0, deadline - time.monotonic())
        run_args = argparse.Namespace(**{**vars(args), "pool_size": size})
        server = start_server(Path(tmp), run_args, size, fork, limit)
        assert server.proc is not None
        sampler = Sampler(
            server.proc.pid,
            server.app_dir,
            args.sample_s,
            int(args.max_memory_gb * 2**20),
            int(args.min_available_gb * 2**20),
        )
        sampler.start()
        label = f"pool_size={size}, fork_kernels={str(fork).lower()}" + (
            f", workers={args.workers}" if args.workers > 1 else ""
        )
        report: Report | None = None
        stopped: str | None = None
        finished: list[UserResult] = []
        try:
            alone = None
            if args.users > 1 and not args.no_baseline:
                solo = argparse.Namespace(**{**vars(run_args), "users": 1, "clients": 1})
                alone = await crowd(server, solo, "alone", deadline, sampler)
            report = await (sequential if args.users == 1 else crowd)(server, run_args, label, deadline, sampler)
            report.alone = alone
        except Stop as why:
            stopped, finished = str(why), why.done
            print(f"\n{stopped}", flush=True)
        finally:
            sampler.finish()
            sampler.note_tree(server.proc.pid)
            stop_server(server)
            left = sampler.left_running()
            waited = time.monotonic() + 15
            while left and time.monotonic() < waited:  # kernels die with their parent, a moment later
                await asyncio.sleep(0.2)
                left = sampler.left_running()
        stop_check = f"{len(left)} of the {len(sampler.seen)} processes seen under it still run" + (
            f" (pids {left[:20]})" if left else " (no kernel or server process left)"
        )
        if report is None:
            report = Report(label, finished, 0.0, stopped=stopped)
            report.peak, report.peak_kernels = sampler.peak, sampler.peak_kernels
            report.peak_part_kb = dict(sampler.peak_part_kb)
            report.peak_session_kernels = sampler.peak_session_kernels
            report.min_available_kb = sampler.min_available_seen_kb
            report.sample_cost_s = statistics.median(sampler.cost_s) if sampler.cost_s else 0.0
            report.sampler_cpu_s = sampler.own_cpu_s
        report.stop_check = stop_check
        clean = show(report, run_args) and not left
        if server.log is not None:
            print(log_summary(server.log))
        if server.app_dir is not None and any(u.error for u in report.users):
            print(first_failed_round(server.app_dir))
        row = {**summary(report, run_args), "processes_left_after_stop": len(left), "app_dir": str(server.app_dir)}
        return clean, row


def first_failed_round(app_dir: Path, lines: int = 40) -> str:
    """The first traceback in the sessions' logs (a round that failed inside Weaver logs one), so a
    run with errors says where they came from before its temporary folder goes."""
    for log in sorted((app_dir / "workspace" / "sessions").glob("*/session.log")):
        try:
            text = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for index, line in enumerate(text):
            if line.startswith("Traceback (most recent call last)"):
                shown = "\n    ".join(text[max(0, index - 1) : index + lines])
                return f"  {'first traceback':<24} {log.parent.name}:\n    {shown}"
    return f"  {'first traceback':<24} none in the sessions' logs"


def log_summary(log: Path, shown: int = 3) -> str:
    """The server log's warnings and errors: how many, and the most frequent messages (numbers
    and ids blanked so repeats count together), so a run says when the server itself complained."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"  {'server log':<24} not readable: {exc}"
    kinds: dict[str, int] = {"ERROR": 0, "WARNING": 0}
    messages: dict[str, int] = {}
    for line in lines:
        for kind in kinds:
            if f" {kind} " in line:
                kinds[kind] += 1
                text = line.split(f" {kind} ", 1)[1]
                key = re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)?", "#", text)[:140]
                messages[f"{kind} {key}"] = messages.get(f"{kind} {key}", 0) + 1
    top = sorted(messages.items(), key=lambda item: -item[1])[:shown]
    said = "".join(f"\n    {count} x {message}" for message, count in top)
    return f"  {'server log':<24} {kinds['ERROR']} errors, {kinds['WARNING']} warnings{said}"


async def main_async(args: argparse.Namespace) -> bool:
    deadline = time.monotonic() + args.timeout
    rows: list[dict[str, Any]] = []
    clean = True
    if args.url is not None:
        server = Server(args.url.rstrip("/"), None, None, None)
        try:
            report = await (sequential if args.users == 1 else crowd)(
                server, args, f"server at {args.url}", deadline, None
            )
        except Stop as why:
            print(f"\n{why}")
            return False
        clean = show(report, args)
        rows.append(summary(report, args))
    else:
        variants = [(args.pool_size, not args.no_fork)]
        if args.compare_pool:
            variants.append((0, not args.no_fork))
        if args.compare_fork:
            variants.append((args.pool_size, args.no_fork))
        for size, fork in variants:
            ok, row = await run_variant(args, size, fork, deadline)
            clean = ok and clean
            rows.append(row)
            if row["stopped"]:
                break
    print("\n" + TABLE_HEAD + "\n|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(table_row(row, args.grace) + f"  <- {row['label']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return clean


def main() -> None:
    if sys.argv[1:] == ["--client"]:
        client_main()
        return
    if sys.argv[1:2] == ["--sampler"]:
        sampler_main(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="simulated browser users (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="messages per user (default 3; 0: connect only)")
    parser.add_argument("--arrival", type=float, default=1.0, help="users arrive spread over this many s (1)")
    parser.add_argument(
        "--distinct-users",
        action="store_true",
        help="every user a different person, first login, header login behind a proxy (the script)",
    )
    parser.add_argument("--user-header", default=USER_HEADER, help=f"the proxy's user header ({USER_HEADER})")
    parser.add_argument(
        "--stay", action="store_true", help="users stay connected until the last is done (default: leave at once)"
    )
    parser.add_argument("--clients", type=int, default=0, help="client processes (default: 1 up to 100 users, +1/250)")
    parser.add_argument("--workers", type=int, default=1, help="weaver ui --workers N (passed only when N > 1)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the one user alone timed just before the crowd"
    )
    parser.add_argument("--repeat", type=int, default=5, help="with --users 1: new chats one after another (5)")
    parser.add_argument("--pool-size", type=int, default=2, help="execution.pool_size of the started server (2)")
    parser.add_argument("--compare-pool", action="store_true", help="also run the crowd with the pool off")
    parser.add_argument("--no-fork", action="store_true", help="execution.fork_kernels = false (each kernel imports)")
    parser.add_argument(
        "--compare-fork", action="store_true", help="also run the crowd with execution.fork_kernels flipped"
    )
    parser.add_argument("--grace", type=float, default=10.0, help="WEAVER_UI_DISCONNECT_GRACE_S (default 10)")
    parser.add_argument("--step-timeout", type=float, default=300.0, help="longest wait for one step (300 s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on the whole run (default 900 s)")
    parser.add_argument("--max-memory-gb", type=float, default=16.0, help="stop when the PSS passes this (16)")
    parser.add_argument(
        "--min-available-gb", type=float, default=3.0, help="stop when the machine's MemAvailable falls below (3)"
    )
    parser.add_argument("--sample-s", type=float, default=1.0, help="memory sampling period (default 1 s)")
    parser.add_argument(
        "--calm-idle",
        type=float,
        default=0.8,
        help="before the crowd, wait until the machine is this idle two seconds in a row (0.8)",
    )
    parser.add_argument("--calm-timeout", type=float, default=120.0, help="longest wait for that (120 s; 0: none)")
    parser.add_argument("--url", help="drive this server (127.0.0.1 only) instead of starting one")
    parser.add_argument("--json", help="also write the summary of each run to this file")
    args = parser.parse_args()
    if args.url is not None and urlparse(args.url).hostname != "127.0.0.1":
        parser.error("--url must be on 127.0.0.1")
    if args.users < 1 or args.rounds < 0:
        parser.error("--users must be at least 1 and --rounds at least 0 (0: connect only)")
    if args.clients < 0 or args.workers < 1:
        parser.error("--clients must be 0 (decide) or more, --workers at least 1")
    if mem_available_kb() and mem_available_kb() < args.min_available_gb * 2**20:
        raise SystemExit(f"not starting: machine memory available is already below {args.min_available_gb:g} GiB")
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    clean = asyncio.run(asyncio.wait_for(main_async(args), args.timeout + 120))
    raise SystemExit(0 if clean else 1)


if __name__ == "__main__":
    main()
