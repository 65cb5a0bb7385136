"""What a kernel on a Jupyter kernel gateway costs next to a local one: start, a round trip, file moves.

Starts a real ``jupyter-kernel-gateway`` on 127.0.0.1 (tests/gateway_server.py), then times
``KernelExecutor.start()`` (kernel ready, runtime bootstrapped) and a warm ``print(1)`` for both
backends, alternating; and, on the gateway, an execution after a new upload (sent to the kernel
first) and one that writes a file (brought back after it).

    python bench/gateway.py [--starts 5] [--executions 30] [--file-mb 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.config import ExecutionSettings  # noqa: E402
from core.execution.kernel import KernelExecutor  # noqa: E402
from tests.gateway_server import KERNEL_NAME, start_gateway  # noqa: E402


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--executions", type=int, default=30)
    parser.add_argument("--file-mb", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="weaver-bench-gw-"))
    began = time.monotonic()
    gw = start_gateway(root / "gateway")
    print(f"gateway up in {time.monotonic() - began:.1f} s (pid {gw.pid})")
    remote = ExecutionSettings(gateway_url=gw.url, gateway_token=gw.token, gateway_kernel_name=KERNEL_NAME)
    kinds = {"local": ExecutionSettings(), "gateway": remote}
    try:
        starts: dict[str, list[float]] = {k: [] for k in kinds}
        for i in range(args.starts):
            for kind, settings in kinds.items():
                ex = KernelExecutor(f"bench-{kind}-{i}", root / kind / str(i), settings=settings)
                t = time.monotonic()
                ex.start()
                starts[kind].append(time.monotonic() - t)
                ex.stop()
        warm = {k: KernelExecutor(f"bench-warm-{k}", root / "warm" / k, settings=s) for k, s in kinds.items()}
        for ex in warm.values():
            ex.start()
        rounds: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.executions):
            for kind, ex in warm.items():
                t = time.monotonic()
                assert ex.execute("print(1)").is_success
                rounds[kind].append(time.monotonic() - t)
        for kind in kinds:
            print(f"{kind:8} start {median_ms(starts[kind])}, warm print(1) {median_ms(rounds[kind])}")
        ex = warm["gateway"]
        size = args.file_mb * 1024 * 1024
        (ex.cwd / "upload.bin").write_bytes(os.urandom(size))
        t = time.monotonic()
        assert ex.execute("print(1)").is_success
        push = time.monotonic() - t
        t = time.monotonic()
        res = ex.execute(f"open('made.bin', 'wb').write(__import__('os').urandom({size}))")
        pull = time.monotonic() - t
        assert res.is_success and (ex.cwd / "made.bin").stat().st_size == size
        print(f"gateway  {args.file_mb} MB upload sent in {push:.2f} s, {args.file_mb} MB result back in {pull:.2f} s")
        for ex in warm.values():
            ex.stop()
    finally:
        gw.stop()


if __name__ == "__main__":
    main()
