"""How long a resumed chat makes its user wait: the next simple message after a server restart.

One chat is built once on the offline backend (a fenced ```python block runs as written): a cell
that sleeps 10 s, then a few cells that make variables (a list, a dict, a pandas DataFrame, a
function). Its app is stopped (every kernel goes, the snapshot is written on the way out). Then,
alternating, a new ``TaskWeaverApp`` on the same folder brings the chat back and sends
``print(total)``, three ways:

* ``old``: what Weaver did before: every earlier successful cell run again as written, sleeps
  included (``core.resume.replay`` over every cell), then the message;
* ``replay``: no snapshot (``session.snapshot_max_mb = 0``): the cells run again without their
  waits and output (``ReplayChecker.trim``), then the message;
* ``snapshot``: the default: the kernel loads the saved variables, then the message.

Per way it prints the medians of the kernel start (``open_session`` → kernel ready: the same for
all three), of the restore alone and of restore + answer (the wait the user sees once the kernel
is up; its max too), and the ratio of the restore + answer medians against ``old``. It exits
with 1 if ``snapshot``'s median restore + answer is 2 s or more.

    python bench/resume.py [--runs 5] [--old-runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import TaskWeaverApp  # noqa: E402
from core.cancel import CancelToken  # noqa: E402
from core.memory import AttachmentType, ExecutionStatus, RoleName  # noqa: E402
from core.resume import ReplayStep, replay  # noqa: E402
from core.session import Session  # noqa: E402

CELLS = [
    "import time\ntime.sleep(10)\nprint('slept')",
    "numbers = list(range(100_000))",
    "names = {i: str(i) for i in range(1_000)}",
    "import pandas as pd\ndf = pd.DataFrame({'x': range(10_000)})\ndf['y'] = df.x * 2",
    "def scale(v):\n    return v * factor\nfactor = 3",
    "total = sum(numbers) + int(df.y.sum()) + scale(len(names))",
]
EXPECT = f"{sum(range(100_000)) + 2 * sum(range(10_000)) + 3 * 1_000}"
MESSAGE = "print(total)"
OFFLINE = {"llm.api_type": "offline"}


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def build(app_dir: Path) -> str:
    app = TaskWeaverApp(app_dir=app_dir, config=OFFLINE)
    try:
        session = app.get_session()
        for cell in CELLS:
            rnd = session.send_message(fenced(cell))
            if rnd.state != "finished" or "failed" in rnd.reply_text:
                raise RuntimeError(f"building the chat failed at {cell!r}: {rnd.reply_text}")
        return session.session_id
    finally:
        app.stop()


def old_replay(session: Session) -> None:
    """Weaver before snapshots: every earlier successful cell again, as written."""
    steps = [
        ReplayStep(str(post.first(AttachmentType.reply_content, "")))
        for rnd in session.rounds
        for post in rnd.post_list
        if post.send_from == RoleName.CodeInterpreter
        and post.first(AttachmentType.execution_status) == ExecutionStatus.success
    ]
    report = replay(session.executor, steps, {}, 600.0, CancelToken())
    if not report.complete:
        raise RuntimeError(f"the old replay failed: {report.summary()}")


def one_run(app_dir: Path, session_id: str, way: str) -> tuple[float, float, float]:
    """(kernel start, restore, restore + answer) in seconds for one resume done ``way``."""
    config = {**OFFLINE, "session.snapshot_max_mb": 0} if way == "replay" else OFFLINE
    app = TaskWeaverApp(app_dir=app_dir, config=config)
    try:
        started = time.perf_counter()
        session = app.open_session(session_id)
        session.executor.start()
        kernel = time.perf_counter() - started
        started = time.perf_counter()
        if way == "old":
            session.replay_pending = False
            old_replay(session)
        else:
            report = session.replay_code()
            if not report.complete or (way == "snapshot") != report.from_snapshot:
                raise RuntimeError(f"{way}: {report.summary()}")
        restored = time.perf_counter() - started
        answer = session.send_message(fenced(MESSAGE)).reply_text
        waited = time.perf_counter() - started
        if EXPECT not in answer:
            raise RuntimeError(f"{way}: unexpected answer {answer!r}")
        return kernel, restored, waited
    finally:
        app.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="resumes per way (snapshot, replay)")
    parser.add_argument("--old-runs", type=int, default=3, help="resumes the old way (each sleeps 10 s)")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float]]] = {"old": [], "replay": [], "snapshot": []}
    with tempfile.TemporaryDirectory(prefix="weaver-bench-resume-") as tmp:
        app_dir = Path(tmp)
        print("building the chat (its 10 s sleep runs once)…", flush=True)
        session_id = build(app_dir)
        for index in range(max(args.runs, args.old_runs)):
            for way in ("snapshot", "replay", "old"):
                if index < (args.old_runs if way == "old" else args.runs):
                    results[way].append(one_run(app_dir, session_id, way))
                    kernel, restored, waited = results[way][-1]
                    print(
                        f"  {way:9} kernel start {kernel:5.2f} s   restore {restored:6.2f} s   "
                        f"restore + answer {waited:6.2f} s",
                        flush=True,
                    )
    base = statistics.median(w for _, _, w in results["old"])
    print(f"\n{'way':9} {'kernel start':>14} {'restore':>10} {'restore + answer':>18} {'max':>7} {'vs old':>8}")
    for way, runs in results.items():
        kernels, restores, waits = ([run[i] for run in runs] for i in range(3))
        median = statistics.median(waits)
        print(
            f"{way:9} {statistics.median(kernels):12.2f} s {statistics.median(restores):8.2f} s "
            f"{median:16.2f} s {max(waits):5.2f} s {median / base:8.3f}"
        )
    fast = statistics.median(w for _, _, w in results["snapshot"])
    print(f"\nsnapshot: the next message answers {fast:.2f} s after the kernel is up (budget 2 s).")
    return 0 if fast < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
