"""What a running cell prints, passed on while it runs: coalesced, throttled and bounded.

The kernel sends one iopub ``stream`` message per flush of the cell's ``sys.stdout``, which can be
thousands a second. ``LiveOutput`` gathers them on the thread that waits for the cell and hands
them on at most every ``interval`` seconds (the first one at once, so the first line shows
without a wait), holding at most ``max_chars`` between two sends: a burst keeps its tail and says
how much of it was dropped. The final result (``ExecutionResult``) still has all of it, bounded
as before; what goes out here is a preview for the person watching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from core.memory import Named

DEFAULT_INTERVAL_S = 0.3


class OutputStream(Named):
    """Which of the cell's streams a piece of live output came from (Jupyter's names)."""

    stdout = "stdout"
    stderr = "stderr"


@dataclass(frozen=True)
class OutputPiece:
    """Text one stream printed since the last piece; ``skipped`` characters before it were dropped."""

    stream: OutputStream
    text: str
    skipped: int = 0


@dataclass
class _Run:
    """Held text of one stream, not sent yet."""

    stream: OutputStream
    text: str
    skipped: int = 0


class LiveOutput:
    """Collects a cell's stream text and hands it to ``sink`` in order, throttled and bounded.

    ``write`` and ``poll`` are called by the one thread that waits for the cell; ``sink`` runs on
    it too. Consecutive text of one stream is merged into one piece; streams that alternate give
    one piece per run of a stream, in the order printed.
    """

    def __init__(
        self,
        sink: Callable[[OutputPiece], object],
        interval: float = DEFAULT_INTERVAL_S,
        max_chars: int = 1500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.interval = interval
        self.max_chars = max(1, max_chars)
        self.clock = clock
        self._pending: list[_Run] = []  # oldest first
        self._held = 0  # characters in _pending
        self._last_sent: float | None = None

    def write(self, stream: str, text: str) -> None:
        """Take text the cell printed; sends what is due."""
        if not text:
            return
        name = OutputStream.stderr if stream == "stderr" else OutputStream.stdout
        if self._pending and self._pending[-1].stream == name:
            self._pending[-1].text += text
        else:
            self._pending.append(_Run(name, text))
        self._held += len(text)
        self._trim()
        self.poll()

    def poll(self) -> None:
        """Send what is held once the interval since the last send has passed (called often)."""
        if not self._pending:
            return
        now = self.clock()
        if self._last_sent is None or now - self._last_sent >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Send everything held now (the cell ended)."""
        pending, self._pending, self._held = self._pending, [], 0
        for run in pending:
            self.sink(OutputPiece(run.stream, run.text, run.skipped))
        if pending:
            self._last_sent = self.clock() if now is None else now

    def _trim(self) -> None:
        """Keep at most ``max_chars`` held: drop the oldest text, counted in the run that follows."""
        over = self._held - self.max_chars
        while over > 0:
            first = self._pending[0]
            if len(first.text) <= over and len(self._pending) > 1:
                self._pending.pop(0)
                self._pending[0].skipped += first.skipped + len(first.text)
                dropped = len(first.text)
            else:
                dropped = min(over, len(first.text))
                first.text = first.text[dropped:]
                first.skipped += dropped
            self._held -= dropped
            over -= dropped
