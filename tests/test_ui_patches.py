"""``ui.patches``: every runtime override of Chainlit and uvicorn, checked against the versions it was
written for; and what the speed patches do (each on its own, no server needed)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from pathlib import Path

import pytest

from ui import patches
from ui.patches import PATCHES, Need, PatchRefused

REPO_ROOT = Path(__file__).resolve().parents[1]


def versions(**overrides: str | None):  # type: ignore[no-untyped-def]
    """The installed versions, with some distributions said to be at another version (or absent)."""

    def version_of(distribution: str) -> str | None:
        if distribution in overrides:
            return overrides[distribution]
        return patches.installed_version(distribution)

    return version_of


def test_every_patch_fits_what_is_installed_and_has_its_module() -> None:
    assert patches.check() == [p.name for p in PATCHES]
    assert len({p.name for p in PATCHES}) == len(PATCHES)
    for patch in PATCHES:
        module = importlib.import_module(f"ui.patches.{patch.name}")
        assert callable(module.install) and module.__doc__, patch.name


def test_the_chainlit_pin_is_the_series_the_patches_were_written_for() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = [d.replace(" ", "") for d in project["dependencies"] if d.startswith("chainlit")]
    assert pins == [patches.CHAINLIT]


def test_a_needed_patch_on_an_unknown_chainlit_refuses_to_start_in_one_line() -> None:
    with pytest.raises(PatchRefused) as refused:
        patches.check(version_of=versions(chainlit="2.13.0"))
    said = str(refused.value)
    assert "\n" not in said
    for patch in PATCHES:
        if patch.need is not Need.SPEED and patches.CHAINLIT in patch.written_for:
            assert repr(patch.name) in said
    assert "chainlit 2.13.0 (written for <2.13,>=2.12)" in said and "CONTRIBUTING" in said
    with pytest.raises(PatchRefused, match="socket_connect"):
        patches.install("socket_connect", None, None, version_of=versions(chainlit="3.0.0"))
    with pytest.raises(PatchRefused, match=r"python-socketio \(not installed\)"):
        patches.check(version_of=versions(**{"python-socketio": None}))


def test_a_speed_patch_on_an_unknown_version_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="weaver.ui.patches"):
        usable = patches.check(version_of=versions(uvicorn="0.56.0"))
        assert "joined_writes" not in usable and "socket_connect" in usable
        assert patches.install("joined_writes", version_of=versions(uvicorn="1.0")) is False
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "'joined_writes' does not fit uvicorn 0.56.0" in said and "skipped" in said


def test_joined_writes_leave_a_protocol_they_were_not_written_for_alone(caplog: pytest.LogCaptureFixture) -> None:
    """What uvicorn picks with ``httptools`` or ``websockets`` installed is left unpatched, and the
    log says so; h11 and wsproto (what it picks here) are joined."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from ui.patches import joined_writes

    class OtherProtocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    before = OtherProtocol.connection_made
    with caplog.at_level(logging.WARNING, logger="weaver.ui.patches.joined_writes"):
        assert joined_writes.install([OtherProtocol, H11Protocol]) == [H11Protocol]
    assert OtherProtocol.connection_made is before
    assert "serves with OtherProtocol here, not h11/wsproto" in caplog.text
    assert set(joined_writes.install()) == set(joined_writes.WRITTEN_FOR)  # nothing else installed here


def test_what_a_connection_is_given_in_one_loop_pass_leaves_in_one_write_in_order() -> None:
    """Three pieces written in one pass reach the peer as one write, in order; a piece written
    just before ``close`` still leaves."""
    import socket

    from ui.patches.joined_writes import CoalescedWrites

    async def scenario() -> tuple[bytes, int, bytes]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        sent: list[bytes] = []
        real_write = transport.write
        transport.write = lambda data: (sent.append(bytes(data)), real_write(data))[1]  # type: ignore[method-assign]
        wrapped = CoalescedWrites(transport)  # type: ignore[arg-type]
        for piece in (b"one ", b"two ", b"three"):
            wrapped.write(piece)
        assert sent == [] and wrapped.get_write_buffer_size() == len(b"one two three")
        await asyncio.sleep(0)
        first = await loop.sock_recv(theirs, 100)
        writes = len(sent)
        wrapped.write(b"bye")
        wrapped.close()
        await asyncio.sleep(0)
        rest = b""
        while chunk := await loop.sock_recv(theirs, 100):
            rest += chunk
        theirs.close()
        return first, writes, rest

    first, writes, rest = asyncio.run(scenario())
    assert first == b"one two three" and writes == 1
    assert rest == b"bye"


def test_chainlit_steps_get_ordered_timestamps_without_sleeping() -> None:
    """Chainlit slept 1 ms on the event loop per step to keep creation times apart; its clock now
    keeps them apart (and in string order, as history sorts them) without the sleep."""
    import importlib
    from datetime import datetime

    from ui.patches import step_timestamps as chainlit_timing

    chainlit_timing.install()
    stamps = [chainlit_timing.ordered_utc_now() for _ in range(500)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 500
    times = [datetime.fromisoformat(s.rstrip("Z")) for s in stamps]
    assert all((b - a).total_seconds() >= 0.001 for a, b in zip(times, times[1:], strict=False))
    for name in chainlit_timing.PATCHED:
        module = importlib.import_module(name)
        assert module.utc_now is chainlit_timing.ordered_utc_now
        assert module.time.sleep is not time.sleep and module.time.time is time.time
