"""Keep Chainlit away from environment variables with generic names that Weaver does not use.

Chainlit reads some variables whose names anyone may have set for something else:

* its settings class (``chainlit.config.ChainlitConfig``, a pydantic-settings ``BaseSettings``
  without a prefix, case-insensitive) reads ``RUN``, ``UI``, ``PROJECT``, ``FEATURES``, ``CODE``,
  ``ROOT`` and ``CHAINLIT_SERVER``: a stray ``RUN=x`` stopped every server at import with a
  pydantic traceback, and ``ROOT`` silently moved the folder Chainlit reads its files from;
* its ``run`` command (``chainlit.cli.chainlit_run``, click) reads ``RUN_TARGET``, ``WATCH``,
  ``HEADLESS``, ``DEBUG``, ``CI`` and ``NO_CACHE``: ``CI=true`` (every CI runner) made Chainlit set
  a fake ``OPENAI_API_KEY``, ``DEBUG=x`` refused to start with a usage error.

Weaver configures Chainlit through its own command line and ``.chainlit/config.toml``, never
through these, so ``isolate`` removes them from the server's environment before Chainlit is
imported, and says so in one line (of ``CI``, which every CI runner sets, it says nothing).
Chainlit's own ``.env`` loading would put them back, so the
same file is loaded here first (same rules: the environment wins) and Chainlit is told there is
none. Names with Chainlit's own prefix (``CHAINLIT_AUTH_SECRET``, ``CHAINLIT_ROOT_PATH``…) are
deliberate and stay. ``tests/test_drain.py`` checks these lists against the installed Chainlit.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SETTINGS_FIELDS = ("ROOT", "CHAINLIT_SERVER", "RUN", "FEATURES", "UI", "PROJECT", "CODE")  # case-insensitive
RUN_OPTIONS = ("RUN_TARGET", "WATCH", "HEADLESS", "DEBUG", "CI", "NO_CACHE")
GENERIC_NAMES = frozenset(SETTINGS_FIELDS + RUN_OPTIONS)
# Removed without a word: every CI runner sets it, so naming it would only add a line to each start.
QUIET_NAMES = frozenset({"CI"})


def load_dotenv_first(environ: MutableMapping[str, str], cwd: str) -> None:
    """Load the ``.env`` Chainlit would (``CHAINLIT_ENV_FILE``, default ``.env``, in ``cwd``) without
    overriding what is set, then point Chainlit at an empty one, so it cannot add names back."""
    from dotenv import dotenv_values  # Chainlit's own dependency

    path = os.path.join(cwd, environ.get("CHAINLIT_ENV_FILE", ".env"))
    if os.path.isfile(path):
        for key, value in dotenv_values(path).items():
            if value is not None:
                environ.setdefault(key, value)
    environ["CHAINLIT_ENV_FILE"] = os.devnull


def isolate(environ: MutableMapping[str, str]) -> list[str]:
    """Remove the names Chainlit would misread; returns those removed worth a word, sorted."""
    removed = sorted(name for name in environ if name.upper() in GENERIC_NAMES)
    for name in removed:
        del environ[name]
    return [name for name in removed if name.upper() not in QUIET_NAMES]
