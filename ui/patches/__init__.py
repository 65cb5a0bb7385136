"""Every runtime override of Chainlit and uvicorn, each checked against the versions it was written for.

Weaver changes a few things inside Chainlit and uvicorn while they run (why each: its module's
docstring). Such a change is only right for the code it was written against, so each patch is one
module here (``ui/patches/<name>.py`` with an ``install(...)``) and one line in ``PATCHES``, naming
the distributions and versions it was written for. Nothing patches anything except through
``install(name, ...)``, which checks first:

* a patch Weaver needs (``SECURITY``, or ``BEHAVIOUR`` users rely on) on a version it was not
  written for stops the server at start with one line (``PatchRefused``);
* a ``SPEED`` patch on such a version is skipped with a warning: the server runs as Chainlit wrote it;
  so is a ``DRAIN`` patch (the graceful stop, ``ui/drain.py``): the server then stops as uvicorn does,
  at once, rather than refuse to start on a newer uvicorn (which Weaver does not pin); and so is a
  ``WORKERS`` patch, which only ``weaver ui --workers N`` needs (its workers then refuse to start).

``check()`` runs the same test over every patch at once; ``ui/chainlit_main.py`` calls it before
Chainlit is imported. How to move the pin: CONTRIBUTING.md, "Patches of Chainlit and uvicorn".
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

logger = logging.getLogger("weaver.ui.patches")


class Need(Enum):
    SECURITY = "security"  # without it a user could do what they must not: refuse to start
    BEHAVIOUR = "behaviour"  # without it users would see the wrong thing: refuse to start
    SPEED = "speed"  # without it the server is only slower: warn and skip
    DRAIN = "drain"  # without it a stop cancels running rounds at once, as uvicorn's own does: warn and skip
    WORKERS = "workers"  # only `weaver ui --workers N` needs it: skip with a warning; a worker refuses to start


# What the server is like without a patch it may skip, for the warning.
WITHOUT = {
    Need.SPEED: "slower, not less safe",
    Need.DRAIN: "a stop cancels running rounds at once",
    Need.WORKERS: "`weaver ui --workers N` refuses to start; one worker serves as before",
}


# The series every Chainlit patch was written against; pyproject.toml pins the same (a test checks).
CHAINLIT = "chainlit>=2.12,<2.13"
UVICORN = "uvicorn>=0.55,<0.56"
SOCKETIO = "python-socketio>=5.11,<6"


@dataclass(frozen=True)
class Patch:
    """One override: ``ui.patches.<name>`` patches the targets it names in its docstring."""

    name: str
    need: Need
    written_for: tuple[str, ...]  # requirement strings, e.g. "chainlit>=2.12,<2.13"


PATCHES: tuple[Patch, ...] = (
    Patch("socket_connect", Need.SECURITY, (CHAINLIT, SOCKETIO)),
    Patch("upload_mime", Need.SECURITY, (CHAINLIT,)),
    Patch("thread_author", Need.BEHAVIOUR, (CHAINLIT,)),
    Patch("history_route", Need.BEHAVIOUR, (CHAINLIT,)),
    Patch("history_ownership", Need.SECURITY, (CHAINLIT,)),
    Patch("revocation", Need.SECURITY, (CHAINLIT,)),
    Patch("no_nest_asyncio", Need.SPEED, (CHAINLIT,)),
    Patch("step_timestamps", Need.SPEED, (CHAINLIT,)),
    Patch("joined_writes", Need.SPEED, (UVICORN,)),
    Patch("drain_signal", Need.DRAIN, (UVICORN,)),
    Patch("files_dir", Need.BEHAVIOUR, (CHAINLIT,)),
    Patch("handed_sockets", Need.WORKERS, (UVICORN,)),  # `weaver ui --workers N`: the router's sockets
    Patch("edit_message", Need.SECURITY, (CHAINLIT, SOCKETIO)),  # an edit turned off is refused
)

VersionOf = Callable[[str], str | None]


class PatchRefused(RuntimeError):
    """A patch Weaver needs does not fit the installed version; the message is one line saying which."""


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def mismatches(patch: Patch, version_of: VersionOf = installed_version) -> list[str]:
    """What is installed that ``patch`` was not written for (empty when it fits)."""
    found = []
    for text in patch.written_for:
        wanted = Requirement(text)
        have = version_of(wanted.name)
        try:
            fits = have is not None and Version(have) in wanted.specifier
        except InvalidVersion:
            fits = False
        if not fits:
            found.append(f"{wanted.name} {have or '(not installed)'} (written for {wanted.specifier})")
    return found


_warned: set[str] = set()


def _verdict(patch: Patch, version_of: VersionOf) -> bool:
    """True when ``patch`` may be applied; False (warned once) for a speed patch that does not fit;
    ``PatchRefused`` for a needed one that does not fit."""
    wrong = mismatches(patch, version_of)
    if not wrong:
        return True
    said = f"Weaver's {patch.need.value} patch {patch.name!r} does not fit {', '.join(wrong)}"
    if patch.need not in WITHOUT:
        raise PatchRefused(f"{said}; install the pinned versions (pyproject.toml) or move the pin (CONTRIBUTING.md).")
    if patch.name not in _warned:
        _warned.add(patch.name)
        logger.warning("%s: skipped, the server runs unpatched there (%s)", said, WITHOUT[patch.need])
    return False


def check(patches: tuple[Patch, ...] = PATCHES, version_of: VersionOf = installed_version) -> list[str]:
    """The names of the patches that fit; raises ``PatchRefused`` (all misfits in one line) when a
    needed one does not. Speed patches that do not fit are warned about and left out."""
    refused, usable = [], []
    for patch in patches:
        try:
            if _verdict(patch, version_of):
                usable.append(patch.name)
        except PatchRefused as exc:
            refused.append(str(exc))
    if refused:
        raise PatchRefused(" ".join(refused))
    return usable


def install(name: str, *args: Any, version_of: VersionOf = installed_version, **kwargs: Any) -> bool:
    """Apply patch ``name`` (``ui.patches.<name>.install(*args, **kwargs)``) if it fits the installed
    versions; False when a speed patch was skipped. Raises ``PatchRefused`` for a needed one that does not fit."""
    patch = next((p for p in PATCHES if p.name == name), None)
    if patch is None:
        raise KeyError(f"no patch {name!r} is registered in ui.patches.PATCHES")
    if not _verdict(patch, version_of):
        return False
    importlib.import_module(f"{__name__}.{name}").install(*args, **kwargs)
    return True
