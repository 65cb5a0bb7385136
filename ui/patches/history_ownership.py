"""Ownership checks on Chainlit's feedback and element routes (``ui.history.install_ownership_checks``).

Chainlit 2.12's ``PUT``/``DELETE /feedback`` and ``PUT``/``DELETE /project/element`` take the ids of
another user's rows from the request body without asking whose they are; the check replaces the
``get_current_user`` dependency of those four routes (FastAPI's ``dependency_overrides``) so a
request for someone else's step or element is refused (403) before the route writes anything."""

from __future__ import annotations

from typing import Any

from ui.history import install_ownership_checks


def install(app: Any, layer: Any) -> None:
    install_ownership_checks(app, layer)
