"""A throwaway PostgreSQL cluster for tests: ``initdb`` and ``postgres`` in a temp folder, no TCP.

PostgreSQL refuses to run as root, so when the tests run as root the cluster runs as ``nobody``
(no system change needed) in a private folder under ``/tmp`` owned by that user; otherwise it runs
as the current user. The server listens only on a unix socket in that folder
(``listen_addresses=''``), trusts local connections (only the folder's owner and root can reach
the socket), and skips fsync: it is a test database, thrown away at the end.

``postgres`` is started directly rather than through ``pg_ctl start``, so the test process holds
the server's own PID: ``stop()`` sends SIGINT (PostgreSQL's fast shutdown) to that PID and waits,
killing it only if it does not stop. ``PgCluster.create_database()`` gives each test a fresh,
empty database and returns its SQLAlchemy URL (``postgresql+asyncpg://`` over the socket).

If no PostgreSQL binaries are found this *fails* with what to install: CI installs them, so a
missing server is a broken set-up, not a reason to skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.processes import stop_process

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SUPERUSER = "postgres"
PORT = 5432  # only names the socket file (.s.PGSQL.5432) in our private folder; no TCP listener


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: on PATH, else Debian's newest /usr/lib/postgresql/<v>/bin."""
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), *_debian_bin_dirs()]:
        if folder and all(os.access(Path(folder, name), os.X_OK) for name in ("initdb", "postgres")):
            return Path(folder)
    return None


def _debian_bin_dirs() -> list[str]:
    def version(path: str) -> tuple[int, ...]:
        found = re.search(r"/postgresql/([\d.]+)/bin$", path)
        return tuple(int(p) for p in found.group(1).split(".") if p) if found else ()

    return sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root; None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("weaver-pg", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and neither a 'weaver-pg' nor a 'nobody' user exists to run PostgreSQL")


@dataclass
class PgCluster:
    bin_dir: Path
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    _databases: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@/{database}?host={self.socket_dir}&port={PORT}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _popen_kwargs(self) -> dict[str, Any]:
        owner = _run_as()
        kwargs: dict[str, Any] = {"env": {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"}}
        if owner is not None:
            kwargs.update(user=owner[0], group=owner[1], extra_groups=[])
        return kwargs

    def start(self) -> None:
        owner = _run_as()
        self.socket_dir.mkdir()
        if owner is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, *owner)
        initdb = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            timeout=120,
            **self._popen_kwargs(),
        )
        if initdb.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({initdb.returncode}):\n{initdb.stdout.decode()}{initdb.stderr.decode()}"
            )
        log = open(self.log_path, "wb")
        if owner is not None:
            os.chown(self.log_path, *owner)
        settings = {
            "listen_addresses": "",
            "unix_socket_directories": str(self.socket_dir),
            "port": str(PORT),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "40",
        }
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._popen_kwargs()
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Ready when postmaster.pid names our process and says "ready" (PostgreSQL ≥ 10 writes it)."""
        assert self.proc is not None
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[0].strip() == str(self.proc.pid) and lines[7].strip() == "ready":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {START_TIMEOUT_S:.0f}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def create_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self._psql_admin(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return self.url(name)

    def _psql_admin(self, statement: str) -> None:
        import asyncio

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(user=SUPERUSER, database="postgres", host=str(self.socket_dir), port=PORT)
            try:
                await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(run())

    def stop(self) -> None:
        """Stop our server by its PID (fast shutdown), then remove its folder."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PgCluster:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL server binaries (initdb, postgres) were not found on PATH or in /usr/lib/postgresql/*/bin; "
            "install them (Debian: apt-get install postgresql) — .ci/run does",
            pytrace=False,
        )
    root = Path(tempfile.mkdtemp(prefix="weaver-pg-", dir="/tmp"))  # /tmp: traversable by the server's user
    os.chmod(root, 0o700)
    cluster = PgCluster(bin_dir=bin_dir, root=root)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
