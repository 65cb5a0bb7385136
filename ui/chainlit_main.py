"""``weaver ui``'s entry point: Chainlit's command line, after Weaver's patches are checked.

``weaver ui`` runs ``python -m ui.chainlit_main run ui/app.py ...`` (the arguments of
``python -m chainlit``). Before Chainlit is imported, environment variables with generic names
that Chainlit would misread (``RUN``, ``UI``, ``CI``…; ``ui/chainlit_env.py``) are removed, with one
line naming them, and every patch in ``ui.patches`` is checked against the installed Chainlit and
uvicorn: one Weaver needs that does not fit stops here with one line; a speed patch that does not
fit is skipped with a warning. Then ``no_nest_asyncio`` goes in (it must precede ``chainlit.cli``'s
import); the rest are installed when ``ui/server.py`` sets the server up.
"""

from __future__ import annotations

import os
import sys

from core.logs import LogFormatError
from ui import chainlit_env, log_setup, patches


def main() -> None:
    chainlit_env.load_dotenv_first(os.environ, os.getcwd())
    ignored = chainlit_env.isolate(os.environ)
    if ignored:
        print(
            f"Weaver UI: ignoring {', '.join(ignored)}: names Chainlit would misread (Weaver does not use them)",
            file=sys.stderr,
            flush=True,
        )
    try:
        log_setup.setup()  # before Chainlit's own logging set-up, which then adds nothing
        patches.check()
    except (patches.PatchRefused, LogFormatError) as exc:
        sys.exit(f"Weaver UI: {exc}")
    patches.install("no_nest_asyncio")
    from chainlit.cli import cli

    cli(prog_name="chainlit")


if __name__ == "__main__":
    main()
