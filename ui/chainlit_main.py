"""``weaver ui``'s entry point: Chainlit's command line, after Weaver's patches are checked.

``weaver ui`` runs ``python -m ui.chainlit_main run ui/app.py ...`` (the arguments of
``python -m chainlit``). Before Chainlit is imported, every patch in ``ui.patches`` is checked
against the installed Chainlit and uvicorn: one Weaver needs that does not fit stops here with one
line; a speed patch that does not fit is skipped with a warning. Then ``no_nest_asyncio`` goes in
(it must precede ``chainlit.cli``'s import); the rest are installed when ``ui/server.py`` sets the
server up.
"""

from __future__ import annotations

import sys

from core.logs import LogFormatError
from ui import log_setup, patches


def main() -> None:
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
