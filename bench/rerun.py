"""What Regenerate costs the user: a re-run of the last round against the same round sent plainly.

One chat on the offline backend (a fenced ```python block runs as written) makes some variables in
a first round (a list, a dict, a pandas DataFrame), then the measured round is
``print(len(numbers))``. Alternating, per run:

* ``plain``: that message sent as a new round (the baseline: a warm kernel);
* ``snapshot``: ``Session.rerun()`` of it with the default snapshots (a fresh kernel loads the
  variables saved after the first round, kept one round back), the wait for the background save
  first so both start from the same state;
* ``replay``: the same with ``session.snapshot_max_mb = 0``: the fresh kernel runs the first
  round's code again.

It prints each way's median (and max) wall time, and the ratio of the medians against ``plain``.

    python bench/rerun.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import Round, TaskWeaverApp  # noqa: E402
from core.session import Session  # noqa: E402

SETUP = (
    "import pandas as pd\nnumbers = list(range(200_000))\nnames = {i: str(i) for i in range(5_000)}\n"
    "df = pd.DataFrame({'x': range(50_000)})"
)
MESSAGE = "print(len(numbers))"
OFFLINE = {"llm.api_type": "offline"}


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def timed(call: Callable[[], Round]) -> float:
    started = time.perf_counter()
    rnd = call()
    elapsed = time.perf_counter() - started
    if "200000" not in rnd.reply_text:
        raise SystemExit(f"unexpected answer: {rnd.reply_text[:300]}")
    return elapsed


def chat(app: TaskWeaverApp) -> Session:
    session = app.get_session()
    session.send_message(fenced(SETUP))
    session.send_message(fenced(MESSAGE))
    return session


def settle(session: Session) -> None:
    session.snapshots.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"plain": [], "snapshot": [], "replay": []}
    with tempfile.TemporaryDirectory() as folder:
        apps = {
            "snapshot": TaskWeaverApp(app_dir=Path(folder) / "a", config=OFFLINE),
            "replay": TaskWeaverApp(app_dir=Path(folder) / "b", config={**OFFLINE, "session.snapshot_max_mb": 0}),
        }
        try:
            sessions = {name: chat(app) for name, app in apps.items()}
            plain = sessions["snapshot"]
            for _ in range(args.runs):
                settle(plain)
                times["plain"].append(timed(lambda: plain.send_message(fenced(MESSAGE))))
                for name, session in sessions.items():
                    settle(session)
                    times[name].append(timed(session.rerun))
                    report = session.last_rerun
                    assert report is not None and report.complete, report
                    if report.restore.from_snapshot != (name == "snapshot"):
                        raise SystemExit(f"{name}: the variables came back the other way: {report.restore.summary()}")
        finally:
            for app in apps.values():
                app.stop()
    base = statistics.median(times["plain"])
    print(f"{'way':<10} {'median s':>9} {'max s':>7} {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<10} {median:>9.3f} {max(values):>7.3f} {median / base:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
