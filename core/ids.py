"""Identifiers in TaskWeaver's shape: ``YYYYMMDD-HHMMSS-<8 hex>`` (UTC), with a kind prefix.

A round makes ~25 ids (posts, attachments, its execution). Each once cost a ``getrandom`` system
call, which lets go of the GIL; with the model's stream arriving on another thread, getting it back
often waited a switch interval, ~1 ms of every round in all. Those ids only need to be unique, so
their random part comes from ``random`` (reseeded in a forked child) and the time part is formatted
once a second. A session's id can be seen and sent back by its browser, so it stays unguessable
(``unguessable=True``, from ``secrets``).
"""

from __future__ import annotations

import random
import secrets
import time

_stamp: tuple[int, str] = (-1, "")


def _utc_stamp() -> str:
    global _stamp
    second = int(time.time())
    cached = _stamp
    if cached[0] != second:
        cached = _stamp = (second, time.strftime("%Y%m%d-%H%M%S", time.gmtime(second)))
    return cached[1]


def create_id(prefix: str = "", unguessable: bool = False) -> str:
    """A sortable, unique id; ``prefix`` is e.g. ``round`` or ``post``."""
    tail = secrets.token_hex(4) if unguessable else f"{random.getrandbits(32):08x}"
    core_id = f"{_utc_stamp()}-{tail}"
    return f"{prefix}-{core_id}" if prefix else core_id
