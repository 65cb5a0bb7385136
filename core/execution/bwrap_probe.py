"""One short bubblewrap run that says whether something works here, and why not in one sentence.

The sandbox (can it create namespaces?) and the per-kernel uids (can it switch to one?) each probe
once at start; both run a throwaway ``bwrap ... true`` and read its exit status the same way.
"""

from __future__ import annotations

import subprocess

PROBE_TIMEOUT_S = 20


def probe_problem(argv: list[str], cannot: str) -> str | None:
    """Run ``argv`` (a bubblewrap command that only runs ``true``); None when it succeeds, else a
    sentence: "bubblewrap {cannot} here (its error)", or why it could not run at all."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be run ({exc})"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
        return f"bubblewrap {cannot} here ({detail})"
    return None
