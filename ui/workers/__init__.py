"""``weaver ui --workers N``: N Chainlit server processes on one machine, one public port.

One Python event loop uses one core. With ``--workers N`` (N > 1) the ``weaver ui`` process is a
small supervisor and router (``supervisor.py``, ``router.py``; standard library only, so it stays
small and quick to start): it listens on the public address, reads the first request's headers of
each new connection without consuming them (``MSG_PEEK``), picks a worker by the sticky cookie
``weaver_worker=<k>`` that every worker sets on its responses (``sticky.py``; a new browser gets the
next worker in turn), and passes the accepted socket itself to that worker over a Unix socket pair
(``SCM_RIGHTS``). The worker serves it as if it had accepted it (``handoff.py`` and
``ui/patches/handed_sockets.py``): no byte of a connection passes through the router afterwards.

Each worker is a full server: its own chats, kernels and ``.files-<id>`` folder
(``ui/files_folder.py``). What they must agree on (the login secret, failed logins, live chats per
user, logged-out logins, gateway kernels to adopt) is kept where replicas keep it: the history
database (``ui/shared.py``), which with the default SQLite file works across the workers of one
machine (WAL, ``BEGIN IMMEDIATE``), and the app folder.

A worker learns what it is from its environment (set by the supervisor only): its index, how
many there are, and the descriptor of its end of the socket pair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

INDEX_ENV = "WEAVER_UI_WORKER_INDEX"
COUNT_ENV = "WEAVER_UI_WORKER_COUNT"
FD_ENV = "WEAVER_UI_WORKER_FD"
COOKIE = "weaver_worker"  # the sticky cookie: which worker serves this browser
HEADER = "X-Weaver-Worker"  # on every HTTP response of a worker: its index


@dataclass(frozen=True)
class WorkerRole:
    """This process as one worker of ``weaver ui --workers N``."""

    index: int
    count: int
    fd: int


def this_worker(env: Mapping[str, str] | None = None) -> WorkerRole | None:
    """The worker this process is, or None for a server started alone (``--workers 1``)."""
    env = os.environ if env is None else env
    if not env.get(FD_ENV):
        return None
    try:
        return WorkerRole(int(env[INDEX_ENV]), int(env[COUNT_ENV]), int(env[FD_ENV]))
    except (KeyError, ValueError):
        raise SystemExit(
            f"Weaver UI: {FD_ENV}, {INDEX_ENV} and {COUNT_ENV} are set by `weaver ui --workers N` only"
        ) from None
