"""A real Jupyter kernel gateway (jupyter-kernel-gateway) on 127.0.0.1 for the gateway tests.

It runs in a temp folder with its own Jupyter paths and one kernelspec, ``weaver-test``: this
machine's Python with the worktree on ``PYTHONPATH`` (what ``pip install weaver-chat`` does in a
real kernel image). Started on a free port with a token, stopped by its own pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[1]
KERNEL_NAME = "weaver-test"
START_TIMEOUT_S = 30.0


@dataclass
class Gateway:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    root: Path  # the gateway's working folder: kernels start here
    log: Path
    cert: Path | None = None  # its self-signed TLS certificate (https), also the CA to trust

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kernels(self) -> list[dict[str, object]]:
        response = httpx.get(
            f"{self.url}/api/kernels",
            headers={"Authorization": f"token {self.token}"},
            timeout=10,
            verify=ssl.create_default_context(cafile=str(self.cert)) if self.cert else True,
        )
        response.raise_for_status()
        found: list[dict[str, object]] = response.json()
        return found

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, timeout=15)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kernelspec(jupyter_path: Path) -> None:
    spec_dir = jupyter_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Weaver test kernel",
        "language": "python",
        "env": {"PYTHONPATH": str(REPO), "PYTHONSAFEPATH": "1"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, valid for a day."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def start_gateway(root: Path, token: str = "gw-secret-token", tls: bool = False) -> Gateway:
    """Start ``python -m kernel_gateway`` in ``root`` and wait until it answers with the token."""
    root.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(root) if tls else (None, None)
    tls_args = [f"--KernelGatewayApp.certfile={cert}", f"--KernelGatewayApp.keyfile={key}"] if tls else []
    jupyter = root / ".jupyter"
    write_kernelspec(jupyter / "data")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "JUPYTER_PATH": str(jupyter / "data"),
        "JUPYTER_DATA_DIR": str(jupyter / "data"),
        "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
        "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
        "MPLCONFIGDIR": str(jupyter / "mpl"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    log = root / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kernel_gateway",
                "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={port}",
                "--KernelGatewayApp.port_retries=0",
                f"--KernelGatewayApp.auth_token={token}",
                f"--KernelGatewayApp.default_kernel_name={KERNEL_NAME}",
                "--JupyterWebsocketPersonality.list_kernels=True",
                *tls_args,
            ],
            cwd=root,
            # A POST with "env" gives the kernel PATH, these, and KERNEL_* variables only.
            env={**env, "KG_ENV_PROCESS_WHITELIST": "HOME,LANG,MPLCONFIGDIR"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gateway = Gateway(f"{'https' if tls else 'http'}://127.0.0.1:{port}", token, proc, root, log, cert)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the kernel gateway exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            response = httpx.get(
                f"{gateway.url}/api/kernelspecs",
                headers={"Authorization": f"token {token}"},
                timeout=2,
                verify=ssl.create_default_context(cafile=str(cert)) if cert else True,
            )
            if response.status_code == 200:
                return gateway
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            gateway.stop()
            raise RuntimeError("the kernel gateway did not answer in time")
        time.sleep(0.1)  # polling a condition with a deadline, not a sleep-as-sync
