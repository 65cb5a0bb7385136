"""Each server keeps the files of its chats in a folder of its own, not in ``<cwd>/.files``.

Chainlit keeps what a chat uploads or is shown (``/project/file/<id>`` serves it) under
``chainlit.config.FILES_DIRECTORY``, which is ``<CHAINLIT_APP_ROOT or cwd>/.files``, and its
lifespan deletes that whole folder when the server stops. ``weaver ui`` runs every server from the
checkout (Chainlit finds its config there), so two servers from one checkout shared it, and
stopping one broke the other's downloads. ``install(folder)`` points Chainlit at ``folder``: both
``chainlit.config.FILES_DIRECTORY`` (read by ``WebsocketSession.files_dir`` at each use) and the
name ``chainlit.server`` imported for its shutdown. ``ui/server.py`` gives it a folder of the
process's own in the app folder (``ui/files_folder.py``: mode 0700, swept when its server is gone),
which that shutdown deletes.
"""

from __future__ import annotations

from pathlib import Path


def install(folder: Path) -> None:
    import chainlit.config
    import chainlit.server

    folder.mkdir(parents=True, exist_ok=True)
    chainlit.config.FILES_DIRECTORY = folder
    chainlit.server.FILES_DIRECTORY = folder  # type: ignore[attr-defined]
