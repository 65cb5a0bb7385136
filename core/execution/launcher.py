"""Starting a kernel with our own interpreter and environment, independent of installed kernelspecs."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

REPO_ROOT = Path(__file__).resolve().parents[2]
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class _OwnPythonSpecs(KernelSpecManager):
    """Always answers with ``sys.executable -m ipykernel_launcher``: a user's kernelspec can't swap it."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="Weaver Python",
            language="python",
            interrupt_mode="signal",
        )


# The server's own credentials stay out of user code's os.environ (plugins' PLUGIN_* settings pass).
_SERVER_SECRETS = re.compile(r"^(WEAVER_|CHAINLIT_|OPENAI_|AZURE_OPENAI)|API_KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)


def kernel_env(session_id: str, extra_env: dict[str, str] | None) -> dict[str, str]:
    """Host environment without server secrets + extras + session id; ``core`` importable, figures inline."""
    env = {k: v for k, v in os.environ.items() if k.startswith("PLUGIN_") or not _SERVER_SECRETS.search(k)}
    env.update(extra_env or {})
    env["WEAVER_SESSION_ID"] = session_id
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["MPLBACKEND"] = INLINE_BACKEND
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def new_kernel_manager() -> KernelManager:
    km = KernelManager(kernel_name="weaver-python", kernel_spec_manager=_OwnPythonSpecs())
    km.shutdown_wait_time = 3.0  # a graceful shutdown that takes longer is forced
    return km
