"""The permission a role that reaches the network needs: ``<role>.enabled = true``, said by name.

Such a role acts on what the model writes (a query, a URL), and the model's words may come from
anyone's page or prompt; so it is off unless the operator turns it on, and turning it on is said
loudly at every start.
"""

from __future__ import annotations

import logging
from typing import Any

from core.errors import ConfigError
from core.roles.ext import section_setting

log = logging.getLogger("weaver.roles")


def require_enabled(name: str, settings: dict[str, Any], what: str) -> None:
    """Refuse to start with role ``name`` listed in ``session.roles`` unless ``<name>.enabled`` is true."""
    if not section_setting(name, settings, "enabled", False):
        raise ConfigError(
            f"session.roles lists {name!r}, which {what}; it is off unless {name}.enabled is true "
            f'(set "{name}.enabled": true in taskweaver_config.json to allow it)'
        )
    log.warning("!!! %s is enabled (%s.enabled = true): this server %s on the model's request", name, name, what)
