"""Logging: the standard ``logging`` module, plus a per-session log of rounds in its folder."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from core.memory import Round


class TelemetryLogger:
    """The app's logger (TaskWeaver's name for it); sessions get children that also write to a file."""

    def __init__(self, name: str = "weaver") -> None:
        self.logger = logging.getLogger(name)

    def info(self, msg: str, *args: Any) -> None:
        self.logger.info(msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.logger.warning(msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self.logger.error(msg, *args)

    def exception(self, msg: str, *args: Any) -> None:
        self.logger.exception(msg, *args)


class SessionLog:
    """``session.log`` (text) and ``rounds.jsonl`` (one JSON round per line) in the session folder."""

    def __init__(self, session_dir: Path, session_id: str, parent: TelemetryLogger | None = None) -> None:
        session_dir.mkdir(parents=True, exist_ok=True)
        self.rounds_path = session_dir / "rounds.jsonl"
        # A child of the app's logger: its lines also reach wherever the app's logging goes.
        self.logger = (parent or TelemetryLogger()).logger.getChild(f"session.{session_id}")
        self._handler = logging.FileHandler(session_dir / "session.log", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.addHandler(self._handler)
        self.logger.setLevel(logging.INFO)

    def record_round(self, rnd: Round) -> None:
        with self.rounds_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(rnd.to_dict(), ensure_ascii=False, default=str) + "\n")

    def rewrite_rounds(self, rounds: list[Round]) -> None:
        """``rounds.jsonl`` as these rounds only (a re-run dropped the later ones), replaced at once."""
        part = self.rounds_path.with_name(self.rounds_path.name + ".part")
        with part.open("w", encoding="utf-8") as out:
            for rnd in rounds:
                out.write(json.dumps(rnd.to_dict(), ensure_ascii=False, default=str) + "\n")
        os.replace(part, self.rounds_path)

    def close(self) -> None:
        self.logger.removeHandler(self._handler)
        self._handler.close()
        # Loggers live for the whole process otherwise: one per session ever opened would pile up.
        logging.Logger.manager.loggerDict.pop(self.logger.name, None)
