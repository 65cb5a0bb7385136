"""Ids that come from the browser and become names on the server (folders, rows) are checked here."""

from __future__ import annotations

import uuid


def is_canonical_uuid(value: object) -> bool:
    """True only for the lowercase hyphenated form Chainlit's frontend generates (session and
    thread ids): never a path, never SQL, never two spellings of one id."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
