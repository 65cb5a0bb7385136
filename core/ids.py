"""Identifiers in TaskWeaver's shape: ``YYYYMMDD-HHMMSS-<8 hex>`` (UTC), with a kind prefix."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone


def create_id(prefix: str = "") -> str:
    """A sortable, unique id; ``prefix`` is e.g. ``round`` or ``post``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    core_id = f"{stamp}-{secrets.token_hex(4)}"
    return f"{prefix}-{core_id}" if prefix else core_id
