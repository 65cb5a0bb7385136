"""What a re-run of a round (an edited message, a regenerated answer) did before running it again.

A re-run replays no round it discards: ``Session.rerun`` throws the kernel away and brings a fresh
one to the state before that round, as a resume does (``core.resume``: the snapshot taken after the
rounds kept, else their code run again). The snapshot one round back is kept beside the latest
(``core.snapshot_kernel``), so regenerating the last answer usually loads it without running code.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.resume import ReplayReport, RestoreOutcome


@dataclass(frozen=True)
class RerunReport:
    """The rounds dropped and how the kernel came back (``restore``: its outcome, gaps, timing)."""

    discarded: tuple[str, ...]
    restore: ReplayReport
    kept_rounds: int

    @property
    def complete(self) -> bool:
        """Every variable of the rounds kept is back."""
        return self.restore.outcome is RestoreOutcome.COMPLETE and not self.restore.skipped

    def note(self) -> str:
        """For the user, only when something is missing: what did not come back (empty otherwise)."""
        if self.complete or self.kept_rounds == 0:
            return ""
        return "The earlier variables did not all come back for this re-run: " + self.restore.summary()
