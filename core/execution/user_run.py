"""Waiting for one user execution: its output until idle, or a deadline, a cancel, a crash or a full disk.

A stopped run is interrupted, repeatedly (code may swallow one KeyboardInterrupt), for a grace
period; after it the run counts as stuck and the executor restarts the kernel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.execution.handle import KernelHandle
from core.execution.kernel_rpc import WAITING, KernelRPC, poll_seconds
from core.execution.live_output import LiveOutput
from core.execution.outputs import OutputCollector

ALIVE_CHECK_SECONDS = 0.5
INTERRUPT_GRACE_SECONDS = 5.0  # after this, an interrupt that did not stop the code forces a restart
INTERRUPT_REPEAT_SECONDS = 2.0
# An interrupt that lands before the kernel runs the cell is lost (an idle kernel ignores SIGINT);
# a remote kernel makes that window longer. Until the cell has been busy this long, repeat sooner.
EARLY_REPEAT_SECONDS = 0.25
BUSY_SETTLE_SECONDS = 0.2
DISK_CHECK_SECONDS = 0.1
# The disk walks of all the runs waiting in this process together take at most about this share
# of a core (see ``kernel_rpc.WAITING``).
CHECKS_CPU_SHARE = 0.1


@dataclass
class Run:
    """How the wait for one user execution ended."""

    collector: OutputCollector
    msg_id: str = ""  # the execute request's id, to find its reply
    stop_reason: str | None = None  # "timeout" | "cancel" | "disk" when we interrupted it
    died: bool = False
    stuck: bool = False  # interrupted but never went idle
    threads_left: int = 0  # threads the timed-out code started that still run
    disk_full: bool = False  # the session folder passed its disk limit


def run_user_code(
    process: KernelHandle,
    rpc: KernelRPC,
    cwd: Path,
    code: str,
    timeout: float,
    should_stop: Callable[[], bool],
    disk_over: Callable[[], bool] | None,
    live: LiveOutput | None = None,
) -> Run:
    """Send ``code`` and collect its iopub messages until it ends one way or another.

    ``should_stop`` says the user cancelled (or the session is stopping); ``disk_over``, when the
    folder has a limit, says the run grew it past that limit; ``live`` gets the streams' text as
    it comes, and the rest of it once the run ends.
    """
    run = Run(OutputCollector(cwd, live=live))
    try:
        with WAITING:
            return _wait(run, process, rpc, code, timeout, should_stop, disk_over, live)
    finally:
        if live is not None:
            live.flush()


def _wait(
    run: Run,
    process: KernelHandle,
    rpc: KernelRPC,
    code: str,
    timeout: float,
    should_stop: Callable[[], bool],
    disk_over: Callable[[], bool] | None,
    live: LiveOutput | None,
) -> Run:
    msg_id = run.msg_id = rpc.execute(code)
    deadline = time.monotonic() + timeout
    grace_end = next_interrupt = next_alive = next_disk = 0.0
    busy_since: float | None = None
    while True:
        waiting = WAITING.count
        msg = rpc.next_iopub(poll_seconds(waiting))
        if msg is not None and msg.get("parent_header", {}).get("msg_id") == msg_id:
            if busy_since is None and msg["content"].get("execution_state") == "busy":
                busy_since = time.monotonic()
            if run.collector.handle(msg):
                return run
        if live is not None:
            live.poll()
        now = time.monotonic()
        if msg is None or now >= next_alive:
            next_alive = now + max(ALIVE_CHECK_SECONDS, poll_seconds(waiting))
            if not process.alive():
                run.died = True
                return run
        if run.stop_reason is None and disk_over is not None and now >= next_disk:
            over = disk_over()
            # A folder of many files takes a while to walk: the walks of all waiting runs together
            # are kept to ~CHECKS_CPU_SHARE of a core.
            walked = time.monotonic() - now
            next_disk = time.monotonic() + max(DISK_CHECK_SECONDS, walked * max(1, waiting) / CHECKS_CPU_SHARE)
            if over:
                run.disk_full = True
                run.stop_reason = "disk"
                grace_end, next_interrupt = now + INTERRUPT_GRACE_SECONDS, now
        if run.stop_reason is None:
            run.stop_reason = "cancel" if should_stop() else ("timeout" if now >= deadline else None)
            if run.stop_reason is not None:
                grace_end, next_interrupt = now + INTERRUPT_GRACE_SECONDS, now
        if run.stop_reason is not None:
            if now >= grace_end:
                run.stuck = True
                return run
            if now >= next_interrupt:  # repeated: code may swallow one KeyboardInterrupt
                early = busy_since is None or now - busy_since < BUSY_SETTLE_SECONDS
                next_interrupt = now + (EARLY_REPEAT_SECONDS if early else INTERRUPT_REPEAT_SECONDS)
                process.send_interrupt()
