"""deploy/ checked without Docker (no daemon or registry here): each file by a parser or its own linter.

The Dockerfiles are read instruction by instruction: the replica runs as ``weaver`` and owns every
folder it writes (the app folder, Chainlit's ``.files/`` and ``.chainlit/translations/``), which
Chainlit creates at import (a root-owned folder there crashes the server at start).
``.dockerignore`` keeps the secrets out of the build context, matched the way Docker matches.
``compose.yaml`` is parsed with PyYAML; ``weaver.service`` goes through ``systemd-analyze verify``
and ``haproxy.cfg`` through ``haproxy -c`` when those tools are installed.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.ui_harness import REPO_ROOT, free_port, wait_until

DEPLOY = REPO_ROOT / "deploy"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def instructions(path: Path) -> list[Instruction]:
    """A Dockerfile's instructions: comments dropped, continuation lines joined."""
    found: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        found.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"{path} ends inside a continued line"
    return found


def test_the_replica_image_runs_as_weaver_and_owns_what_it_writes() -> None:
    steps = instructions(DEPLOY / "Dockerfile")
    keywords = [s.keyword for s in steps]
    assert keywords[0] == "FROM" and keywords[-1] == "CMD"
    users = [s.args for s in steps if s.keyword == "USER"]
    assert users == ["weaver"], "the server must run as weaver, and nothing after runs as root"
    after_user = keywords[keywords.index("USER") :]
    assert "RUN" not in after_user and "COPY" not in after_user
    workdir = [s.args for s in steps if s.keyword == "WORKDIR"][-1]
    env = " ".join(s.args for s in steps if s.keyword == "ENV")
    app_dir = shlex.split(env.split("WEAVER_APP_DIR=", 1)[1])[0]
    chowned = [
        word
        for s in steps
        if s.keyword == "RUN" and "chown" in s.args
        for part in s.args.split("&&")
        if part.strip().startswith("chown")
        for word in shlex.split(part)[1:]
        if not word.startswith("-") and ":" not in word
    ]
    # Chainlit makes <cwd>/.files at import and writes .chainlit/translations at start; Weaver the app folder.
    for needed in (app_dir, f"{workdir}/.files", f"{workdir}/.chainlit/translations"):
        assert needed in chowned, f"{needed} is not given to weaver: the server cannot write it"
    assert any("useradd" in s.args and "weaver" in s.args for s in steps if s.keyword == "RUN")
    health = [s.args for s in steps if s.keyword == "HEALTHCHECK"]
    assert health and "/ready" in health[0]


def test_the_kernel_image_installs_weavers_runtime() -> None:
    steps = instructions(DEPLOY / "Dockerfile.kernel")
    assert steps[0].keyword == "FROM" and steps[0].args.startswith("elyra/kernel-py:")
    assert any(s.keyword == "RUN" and "pip install" in s.args for s in steps)


def dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides
    (``!`` re-includes); ``**`` matches any number of folders."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        forms = [pattern]
        if pattern.startswith("**/"):
            forms.append(pattern[3:])
        regexes = [fnmatch.translate(form.replace("**/", "\0")).replace("\0", "(?:.*/)?") for form in forms]
        if any(re.match(rx, c) for rx in regexes for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for secret in (
        ".weaver/.auth_secret",
        ".weaver/users.json",
        ".weaver/weaver.db",
        ".weaver/workspace/sessions/s/cwd/data.csv",
        "sub/.weaver/users.json",
        ".env",
        ".env.production",
        ".git/config",
        ".venv/bin/python",
        "test-artifacts/shot.png",
        "core/__pycache__/app.cpython-311.pyc",
        ".files/abc/upload.csv",
        "elsewhere/audit.jsonl",
    ):
        assert dockerignored(patterns, secret), f"{secret} would be copied into the image"
    for needed in (
        "core/app.py",
        "ui/app.py",
        "pyproject.toml",
        "setup.py",  # installs the .pth below
        "weaver_taskweaver_plugins.py",
        "weaver_taskweaver_plugins.pth",
        ".chainlit/config.toml",
        ".chainlit/translations/en-US.json",  # Weaver's own texts; Chainlit writes the others
        "chainlit.md",
        "public",
    ):
        assert not dockerignored(patterns, needed), f"{needed} is needed in the image but ignored"
    assert dockerignored(patterns, ".chainlit/translations/fr-FR.json")


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_has_every_service_shared_volumes_and_readiness_checks() -> None:
    spec = compose()
    services = spec["services"]
    assert {"proxy", "web-a", "web-b", "postgres", "gateway", "kernel-image"} <= set(services)
    for name in ("web-a", "web-b"):
        web = services[name]
        assert "weaver-app:/srv/weaver-app" in web["volumes"], f"{name} does not share the app folder"
        assert "/ready" in " ".join(web["healthcheck"]["test"])
        assert web["depends_on"]["postgres"]["condition"] == "service_healthy"
        env = web["environment"]
        assert env["WEAVER_APP_DIR"] == "/srv/weaver-app"
        assert env["WEAVER_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "localhost" in env["WEAVER_UI_ALLOWED_HOSTS"].split(",")  # the health checks' Host
        assert env["WEAVER_UI_ALLOWED_ORIGINS"]
        # Only the proxy's own fixed address may name the client (a range would let others spoof it).
        proxy_address = services["proxy"]["networks"]["weaver-front"]["ipv4_address"]
        assert env["WEAVER_UI_TRUSTED_PROXIES"] == proxy_address
        assert "weaver-front" in web["networks"]
        assert env["WEAVER_LOG_FORMAT"] == "json"
    assert (
        services["web-a"]["environment"]["WEAVER_UI_REPLICA_ID"]
        != services["web-b"]["environment"]["WEAVER_UI_REPLICA_ID"]
    )
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert {"weaver-app", "weaver-db"} <= set(spec["volumes"])
    for service in services.values():  # every named volume a service mounts is declared
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source.startswith(("/", ".")) or source in spec["volumes"], f"undeclared volume {source}"
    gateway = services["gateway"]["environment"]
    assert gateway["EG_CULL_CONNECTED"] == "False", "a live chat's kernel must never be culled"
    assert int(gateway["EG_CULL_IDLE_TIMEOUT"]) > 3600 + 120  # session.idle_timeout + the disconnect grace
    assert int(gateway["EG_CULL_INTERVAL"]) > 0


def test_the_deploy_readme_documents_culling_the_database_and_the_proxy_settings() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for needed in (
        "--MappingKernelManager.cull_idle_timeout",
        "--MappingKernelManager.cull_interval",
        "--MappingKernelManager.cull_connected=False",
        "CREATE ROLE weaver",
        "CREATE DATABASE weaver OWNER weaver",
        "WEAVER_UI_ALLOWED_ORIGINS",
        "WEAVER_UI_ALLOWED_HOSTS",
        "no image registry",
    ):
        assert needed in readme, f"deploy/README.md does not say {needed}"


def systemd_verify(unit: Path) -> str:
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else f"\nexit {done.returncode}")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = (DEPLOY / "weaver.service").read_text()
    command = "/srv/weaver/.venv/bin/weaver"
    assert f"ExecStart={command} ui " in unit and "User=weaver" in unit
    # The unit names the install the README makes; here a stand-in executable takes its place
    # (verify refuses a missing command), the rest is checked as written.
    stand_in = tmp_path / "weaver"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    copy = tmp_path / "weaver.service"
    copy.write_text(unit.replace(command, str(stand_in)))
    assert systemd_verify(copy) == ""
    broken = tmp_path / "broken.service"  # the check can fail: a typo is reported
    broken.write_text(copy.read_text().replace("ProtectSystem=", "ProtectSystm="))
    assert "Unknown key" in systemd_verify(broken)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_example_configuration() -> None:
    env = {
        **os.environ,
        "WEAVER_PROXY_BIND": f"127.0.0.1:{free_port()}",  # -c only checks: nothing listens
        "WEAVER_PROXY_HOST": "localhost",
        "WEAVER_REPLICA_A": "127.0.0.1:1",
        "WEAVER_REPLICA_B": "127.0.0.1:2",
    }
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_replaces_a_client_sent_forwarded_for() -> None:
    """A browser's own ``X-Forwarded-For`` never reaches a replica: it would name any address it
    likes to the audit log and the per-address login throttle. The example configuration runs in
    front of a replica stand-in (127.0.0.1) that records the headers it gets."""
    seen: list[dict[str, str]] = []

    class Replica(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            if self.path != "/ready":
                seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    replica = ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    threading.Thread(target=replica.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = free_port()
    backend = f"127.0.0.1:{replica.server_address[1]}"
    env = {
        **os.environ,
        "WEAVER_PROXY_BIND": f"127.0.0.1:{port}",
        "WEAVER_PROXY_HOST": "localhost",
        "WEAVER_REPLICA_A": backend,
        "WEAVER_REPLICA_B": backend,
    }
    proxy = subprocess.Popen(
        ["haproxy", "-db", "-f", str(DEPLOY / "haproxy.cfg")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        spoofed = {"X-Forwarded-For": "203.0.113.66", "Forwarded": "for=203.0.113.66", "X-Real-IP": "203.0.113.66"}

        def through_proxy() -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/page", headers=spoofed, timeout=2)
            except httpx.TransportError:
                return None  # not listening yet

        assert wait_until(through_proxy, 20, "HAProxy to answer").status_code == 200
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        replica.shutdown()
        replica.server_close()
    assert seen, "no request reached the replica"
    assert seen[-1]["x-forwarded-for"] == "127.0.0.1"  # the browser's own address, nothing it sent
    assert "forwarded" not in seen[-1] and "x-real-ip" not in seen[-1]
