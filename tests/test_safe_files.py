"""The server reads and writes session files without following anything user code planted there.

Unit cases on a temp folder (each hostile name next to a canary file whose content must never come
back), write-side cases (a planted link is replaced, its target untouched), and the race that
issue 20 found: a real sandboxed kernel swapping a name between a regular file and links to a
canary and to ``/proc/self/environ`` while the test reads it through every server path.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from core import TaskWeaverApp, safe_files
from core.files import add_files
from core.safe_files import NewFile, Refusal, UnsafeFile, open_file, opening, read_file, walk, write_file, write_new
from ui.files import artifacts_inside, select_artifacts
from ui.history.storage import LocalFileStorage
from ui.outputs import read_downloads

REGULAR = b"regular-content\n"


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every case runs with the kernel's openat2 and with the component-by-component walk."""
    if request.param == "openat2":
        if not safe_files.openat2_available():
            pytest.skip("this kernel has no openat2")
    else:
        monkeypatch.setattr(opening, "_openat2_works", False)
    return str(request.param)


@pytest.fixture
def canary(tmp_path: Path) -> bytes:
    """A root-only file outside the session folder, with content found nowhere else."""
    secret = f"CANARY-{secrets.token_hex(16)}".encode()
    path = tmp_path / "outside" / "canary.txt"
    path.parent.mkdir()
    path.write_bytes(secret)
    path.chmod(0o600)
    return secret


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "cwd"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "ok.txt").write_bytes(REGULAR)
    return folder


def canary_path(tmp_path: Path) -> Path:
    return tmp_path / "outside" / "canary.txt"


def test_a_regular_file_is_read(resolver: str, cwd: Path) -> None:
    assert read_file(cwd, "sub/ok.txt") == REGULAR
    with open_file(cwd, "sub/ok.txt", max_bytes=100) as opened:
        assert opened.size == len(REGULAR) and opened.read_all() == REGULAR


def refused(cwd: Path, rel: str, reason: Refusal, canary: bytes, **kw: int) -> None:
    with pytest.raises(UnsafeFile) as caught:
        read_file(cwd, rel, **kw)
    assert caught.value.reason is reason, str(caught.value)
    assert caught.value.name == rel and str(caught.value).startswith(rel)
    assert canary.decode() not in str(caught.value)


def test_a_symlink_leaf_is_refused(resolver: str, cwd: Path, tmp_path: Path, canary: bytes) -> None:
    (cwd / "x.csv").symlink_to(canary_path(tmp_path))
    (cwd / "env").symlink_to("/proc/self/environ")
    refused(cwd, "x.csv", Refusal.LINK, canary)
    refused(cwd, "env", Refusal.LINK, canary)
    assert "x.csv is a link; links are not served" == str(pytest.raises(UnsafeFile, read_file, cwd, "x.csv").value)


def test_a_symlinked_folder_in_the_middle_is_refused(resolver: str, cwd: Path, tmp_path: Path, canary: bytes) -> None:
    (cwd / "up").symlink_to(canary_path(tmp_path).parent)
    (cwd / "inside").symlink_to(cwd / "sub")  # even one that stays inside
    refused(cwd, "up/canary.txt", Refusal.LINK, canary)
    refused(cwd, "inside/ok.txt", Refusal.LINK, canary)


@pytest.mark.parametrize("rel", ["../outside/canary.txt", "sub/../../outside/canary.txt", "", "sub//ok.txt", "./x"])
def test_dot_dot_and_odd_paths_are_refused(resolver: str, cwd: Path, canary: bytes, rel: str) -> None:
    refused(cwd, rel, Refusal.BAD_NAME, canary)


def test_an_absolute_path_is_refused(resolver: str, cwd: Path, tmp_path: Path, canary: bytes) -> None:
    refused(cwd, str(canary_path(tmp_path)), Refusal.BAD_NAME, canary)


def test_a_fifo_is_refused_without_blocking(resolver: str, cwd: Path, canary: bytes) -> None:
    os.mkfifo(cwd / "pipe")
    outcome: list[BaseException | bytes] = []
    reader = threading.Thread(target=lambda: outcome.append(_catch(cwd, "pipe")), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # the defence failed: release the blocked open before failing
        os.close(os.open(cwd / "pipe", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
        pytest.fail("opening a FIFO blocked")
    assert isinstance(outcome[0], UnsafeFile) and outcome[0].reason is Refusal.NOT_REGULAR


def _catch(cwd: Path, rel: str) -> BaseException | bytes:
    try:
        return read_file(cwd, rel)
    except BaseException as exc:  # handed to the test thread
        return exc


def test_a_hard_link_is_refused(resolver: str, cwd: Path, tmp_path: Path, canary: bytes) -> None:
    # A hard link made before the file became root-only, or by root code: it names the same file.
    os.link(canary_path(tmp_path), cwd / "hard.txt")
    refused(cwd, "hard.txt", Refusal.HARD_LINK, canary)


def test_an_oversize_file_is_refused(resolver: str, cwd: Path, canary: bytes) -> None:
    (cwd / "big.bin").write_bytes(b"0" * 2000)
    refused(cwd, "big.bin", Refusal.TOO_BIG, canary, max_bytes=1000)
    assert read_file(cwd, "big.bin", max_bytes=2000) == b"0" * 2000


def test_a_folder_where_a_file_is_expected_is_refused(resolver: str, cwd: Path, canary: bytes) -> None:
    refused(cwd, "sub", Refusal.NOT_REGULAR, canary)
    refused(cwd, "sub/ok.txt/more", Refusal.NOT_REGULAR, canary)
    refused(cwd, "nothing.txt", Refusal.MISSING, canary)


def test_walk_lists_regular_files_and_enters_no_linked_folder(
    resolver: str, cwd: Path, tmp_path: Path, canary: bytes
) -> None:
    (cwd / "x.csv").symlink_to(canary_path(tmp_path))
    (cwd / "up").symlink_to(canary_path(tmp_path).parent)
    os.mkfifo(cwd / "pipe")
    found = walk(cwd)
    assert [f.path for f in found.files] == ["sub/ok.txt"] and not found.truncated
    for n in range(30):
        (cwd / f"f{n}").write_bytes(b"")
    assert walk(cwd, max_walked=10).truncated


def test_a_write_replaces_a_planted_link_and_leaves_its_target(
    resolver: str, cwd: Path, tmp_path: Path, canary: bytes
) -> None:
    (cwd / "out.csv").symlink_to(canary_path(tmp_path))
    write_file(cwd, "out.csv", b"new")
    assert canary_path(tmp_path).read_bytes() == canary
    assert not (cwd / "out.csv").is_symlink() and (cwd / "out.csv").read_bytes() == b"new"
    assert [p.name for p in cwd.iterdir() if p.name.startswith(safe_files.TEMP_PREFIX)] == []


def test_a_new_file_never_takes_a_planted_name(resolver: str, cwd: Path, tmp_path: Path, canary: bytes) -> None:
    (cwd / "figure.png").symlink_to(tmp_path / "outside" / "created-through-link")  # dangling
    assert write_new(cwd, safe_files.numbered("figure", ".png"), b"png") == "figure-2.png"
    assert not (tmp_path / "outside" / "created-through-link").exists()
    assert sorted(os.listdir(tmp_path / "outside")) == ["canary.txt"]


def test_a_write_through_a_linked_folder_is_refused(resolver: str, cwd: Path, tmp_path: Path, canary: bytes) -> None:
    (cwd / "up").symlink_to(canary_path(tmp_path).parent)
    with pytest.raises(UnsafeFile) as caught:
        write_file(cwd, "up/canary.txt", b"overwritten", make_folders=True)
    assert caught.value.reason is Refusal.LINK
    assert canary_path(tmp_path).read_bytes() == canary


def test_written_files_belong_to_the_owner_of_the_session_folder(resolver: str, cwd: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    os.chown(cwd, 54321, 54322)
    info = write_file(cwd, "deep/er/new.txt", b"x", make_folders=True)
    assert (info.st_uid, info.st_gid) == (54321, 54322)
    assert (cwd / "deep" / "er").stat().st_uid == 54321
    with NewFile(cwd, "aborted.txt") as new:
        new.write(b"never")
    assert not (cwd / "aborted.txt").exists()


def test_uploads_are_written_past_a_planted_link(cwd: Path, tmp_path: Path, canary: bytes) -> None:
    (cwd / "data.csv").symlink_to(canary_path(tmp_path))
    assert add_files(cwd, [{"name": "data.csv", "content": b"a,b\n"}], max_bytes=100) == ["data-1.csv"]
    assert canary_path(tmp_path).read_bytes() == canary
    source = tmp_path / "upload-link"
    source.symlink_to(canary_path(tmp_path))
    with pytest.raises(ValueError, match="could not be read"):
        add_files(cwd, [{"name": "x.csv", "path": str(source)}], max_bytes=1000)


def test_a_figure_is_saved_past_a_link_the_code_planted(racing_session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The server saves displayed images into the folder: a link named figure.png is not followed."""
    target = tmp_path / "created-through-link"
    code = (
        f"import os\nos.symlink({str(target)!r}, 'figure.png')\n"
        "from IPython.display import Image, display\n"
        "display(Image(data=b'\\x89PNG\\r\\n\\x1a\\nnot-really', format='png'))"
    )
    result = racing_session.executor.execute(code)
    assert result.is_success, result.error
    assert not target.exists() and not os.path.lexists(target)
    cwd = Path(racing_session.execution_cwd)
    assert [a.name for a in result.artifacts] == ["figure-2.png"]
    assert (cwd / "figure-2.png").read_bytes().startswith(b"\x89PNG") and (cwd / "figure.png").is_symlink()


# ----- the race: a real sandboxed kernel swaps a name while the server reads it -----------------

SWAP_SECONDS = 4.0
SWAP_ROUNDS = 100_000


def swap_code(canary: Path, seconds: float = SWAP_SECONDS) -> str:
    """User code: in a kernel thread, for a bounded time, exchange x.csv (a regular file) with
    links to the canary and to ``/proc/self/environ`` (``renameat2(RENAME_EXCHANGE)``: every name
    always exists, it is only ever a file or a link); then x.csv is the regular file again."""
    return f"""
import ctypes, os, threading, time
_libc = ctypes.CDLL(None, use_errno=True)
def _exchange(a, b):
    if _libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
def _swap():
    with open("x.csv", "wb") as f:
        f.write({REGULAR!r})
    os.symlink({str(canary)!r}, "y.csv")
    os.symlink("/proc/self/environ", "z.csv")
    end, n = time.monotonic() + {seconds}, 0
    while time.monotonic() < end and n < {SWAP_ROUNDS}:
        other = "y.csv" if n % 2 else "z.csv"
        _exchange("x.csv", other)
        _exchange("x.csv", other)
        n += 1
    open("swap-count", "w").write(str(n))
    os.rename("swap-count", "swap-done")  # whole when it appears: the test waits for the name
threading.Thread(target=_swap, daemon=True).start()
"""


@pytest.fixture
def racing_session(app: TaskWeaverApp) -> Iterator[object]:
    session = app.get_session()
    yield session
    session.stop()


def test_the_swap_race_never_serves_the_canary(racing_session, tmp_path: Path, canary: bytes) -> None:  # type: ignore[no-untyped-def]
    session = racing_session
    cwd = Path(session.execution_cwd)
    environ = Path("/proc/self/environ").read_bytes()
    storage = LocalFileStorage(tmp_path / "history-files")
    result = session.executor.execute(swap_code(canary_path(tmp_path)))
    assert result.is_success, result.error
    served: list[bytes] = []
    refusals: set[str] = set()
    deadline = time.monotonic() + SWAP_SECONDS + 60
    reads = 0
    while not (cwd / "swap-done").exists():
        assert time.monotonic() < deadline, "the kernel's swap loop did not finish"
        reads += 1
        # 1. the Files panel: list, then read what is listed
        listing = session.files(200)
        downloads, notes = read_downloads(cwd, listing)
        served += [content for name, content in downloads if name.endswith(".csv")]
        refusals.update(notes)
        # 2. an artifact shown with an answer
        named = [{"name": n, "path": str(cwd / n)} for n in ("x.csv", "y.csv", "z.csv")]
        selection = select_artifacts(artifacts_inside(named, cwd))
        served += [a.content for a in selection.shown]
        refusals.update(selection.notes)
        # 3. the history store's copy of a file
        try:
            stored = asyncio.run(storage.upload_path(f"t/{reads}/x.csv", cwd / ("x.csv", "y.csv")[reads % 2]))
            served.append((tmp_path / "history-files" / stored["object_key"]).read_bytes())
        except UnsafeFile as exc:
            refusals.add(exc.reason.name)
    swaps = int((cwd / "swap-done").read_text())
    assert swaps > 100, f"the kernel swapped only {swaps} times"
    for content in served:
        assert canary not in content and environ[:200] not in content
        assert content == REGULAR
    assert len(served) > 0, "no read succeeded while the name was a regular file"
    assert refusals, f"{reads} reads of every path never met a link: the race did not happen"
    assert any("is a link; links are not served" in note for note in refusals)


def test_the_files_panel_reads_a_link_as_a_plain_refusal(tmp_path: Path, cwd: Path, canary: bytes) -> None:
    (cwd / "x.csv").symlink_to(canary_path(tmp_path))
    (cwd / "y.csv").write_bytes(b"y")
    from core.files import list_files

    downloads, notes = read_downloads(cwd, list_files(cwd, 10))
    assert sorted(name for name, _ in downloads) == ["sub/ok.txt", "y.csv"]
    assert notes == []  # a link is not even listed
    os.link(cwd / "y.csv", cwd / "z.csv")
    downloads, notes = read_downloads(cwd, list_files(cwd, 10))
    assert [name for name, _ in downloads] == ["sub/ok.txt"]
    assert sorted(notes) == [
        "`y.csv` has more than one name (a hard link); it is not served",
        "`z.csv` has more than one name (a hard link); it is not served",
    ]
    assert all(stat.S_ISREG(os.lstat(cwd / n).st_mode) for n in ("y.csv", "z.csv"))


def test_what_one_panel_or_message_holds_in_memory_is_bounded(cwd: Path) -> None:
    from core.files import list_files
    from ui.files import Artifact

    (cwd / "sub" / "ok.txt").unlink()
    for name in ("a.bin", "b.bin", "c.bin"):
        (cwd / name).write_bytes(b"1" * 400)
    downloads, notes = read_downloads(cwd, list_files(cwd, 10), max_total_bytes=900)
    assert sum(len(content) for _, content in downloads) <= 900 and len(downloads) == 2
    assert notes == ["1 more file(s), as one panel offers at most 900 B; they are in the session's working folder"]
    chosen = select_artifacts([Artifact(n, n, "file", cwd) for n in ("a.bin", "b.bin", "c.bin")], max_total_bytes=900)
    assert [a.name for a in chosen.shown] == ["a.bin", "b.bin"]
    assert "Showing 2 of 3 files" in chosen.notes[0] and "`c.bin`" in chosen.notes[0]


def test_the_prompt_names_files_but_no_link(cwd: Path, tmp_path: Path, canary: bytes) -> None:
    from core.cancel import CancelToken
    from core.events import EventEmitter
    from core.memory import Round
    from core.roles.context import RoundContext

    (cwd / "data.csv").write_bytes(b"a")
    (cwd / "secret-name.txt").symlink_to(canary_path(tmp_path))
    context = RoundContext("s", Round("q"), [], EventEmitter(), CancelToken(), cwd, {})
    assert context.cwd_files() == ["data.csv"]


def test_a_file_changed_while_it_is_read_is_refused(resolver: str, cwd: Path) -> None:
    with open_file(cwd, "sub/ok.txt") as opened:
        (cwd / "sub" / "ok.txt").write_bytes(b"longer than it was when checked")
        with pytest.raises(UnsafeFile) as caught:
            opened.read_all()
    assert caught.value.reason is Refusal.CHANGED
    assert str(caught.value) == "sub/ok.txt was changed while it was being read"


def test_the_disk_limit_walk_never_follows_a_link(tmp_path: Path) -> None:
    """The session folder's size counts its own files only: a link to a folder (say ``/``) or to a
    large file outside adds nothing, so user code cannot make the server walk the host."""
    from core.execution.limits import folder_bytes

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"x" * 100_000)
    session = tmp_path / "cwd"
    (session / "sub").mkdir(parents=True)
    (session / "a.txt").write_bytes(b"a" * 10)
    (session / "sub" / "b.txt").write_bytes(b"b" * 5)
    os.symlink(outside, session / "linked-folder")
    os.symlink("/", session / "root")
    assert folder_bytes(session) < 100


def test_a_folder_nested_past_the_walks_depth_counts_as_full(tmp_path: Path) -> None:
    """A tree deeper than Python's recursion limit neither crashes the disk check nor hides its
    bytes from it: it cannot be measured, so the folder has no room left, and the note says why."""
    from core.config import ExecutionSettings
    from core.execution.limits import disk_room, folder_usage
    from core.execution.messages import disk_note

    session = tmp_path / "cwd"
    session.mkdir()
    (session / "a.txt").write_bytes(b"a" * 10)
    fd = os.open(session, os.O_RDONLY)
    try:
        for _ in range(1200):  # made through descriptors: the path itself would pass PATH_MAX
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.mkfifo("pipe", dir_fd=fd)
    finally:
        os.close(fd)
    try:
        found = folder_usage(session)
        room = disk_room(session, 1024)
    finally:
        _remove_chain(session, 1200)  # pytest's own clean-up would recurse past Python's limit
    assert found.too_deep and found.bytes == 10
    assert room == 0
    note = disk_note(ExecutionSettings(disk_mb=1024), found.bytes / 2**20, found.too_deep)
    assert "nested more than" in note and "counts as full" in note


def _remove_chain(top: Path, depth: int) -> None:
    """Remove ``top/d/d/.../pipe`` made ``depth`` folders deep, from the bottom up, by descriptors."""
    fds = [os.open(top, os.O_RDONLY)]
    for _ in range(depth):
        fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
    os.unlink("pipe", dir_fd=fds[-1])
    for level in range(depth, 0, -1):
        os.close(fds[level])
        os.rmdir("d", dir_fd=fds[level - 1])
    os.close(fds[0])


def test_the_walk_never_opens_a_fifo_where_a_folder_was(tmp_path: Path) -> None:
    """Folders are opened with O_DIRECTORY|O_NOFOLLOW: a FIFO (or link) in a folder's place is
    skipped at once, never waited on (a plain open of a FIFO blocks until a writer comes)."""
    from core.safe_files import Progress, entries, open_root
    from core.safe_files.opening import DIR_FLAGS, open_beneath

    session = tmp_path / "cwd"
    session.mkdir()
    os.mkfifo(session / "was-a-folder")
    root = open_root(session)
    try:
        with pytest.raises(UnsafeFile):
            open_beneath(root, "was-a-folder", DIR_FLAGS)  # what the walk does for a folder: refused, no wait
        names = [e.name for e in entries(root, Progress())]
    finally:
        os.close(root)
    assert names == ["was-a-folder"]


def test_an_elements_file_for_remote_storage_is_read_without_following_a_link(tmp_path: Path) -> None:
    """The S3 path of the history reads an element's file once, as the local store copies it:
    a link planted where Chainlit's upload was is refused, the canary it points at never read."""
    from ui.history.rows import read_bytes

    canary = tmp_path / "canary.txt"
    canary.write_bytes(b"CANARY")
    upload = tmp_path / "upload.csv"
    upload.write_bytes(b"a,b\n1,2\n")
    assert read_bytes(str(upload)) == b"a,b\n1,2\n"
    upload.unlink()
    os.symlink(canary, upload)
    with pytest.raises(UnsafeFile):
        read_bytes(str(upload))
