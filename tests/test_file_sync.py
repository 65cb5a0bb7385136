"""The file helpers both ends of a remote kernel's file transfer use: nothing leaves the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.plugins.kernel_files import PART_PREFIX, UnsafePath, listing, parts, read_chunk, write_chunk


@pytest.mark.parametrize(
    "rel", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./x", "a\\..\\x", "x\x00y", f"{PART_PREFIX}x"]
)
def test_paths_that_could_leave_the_folder_are_refused(rel: str) -> None:
    with pytest.raises(UnsafePath):
        parts(rel)


def test_plain_paths_pass() -> None:
    assert parts("out/chart.png") == ["out", "chart.png"]
    assert parts("..hidden") == ["..hidden"]  # a name that merely starts with dots is a name


def test_listing_skips_symlinks_and_part_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    (tmp_path / "link.txt").symlink_to("/etc/hostname")
    (tmp_path / "linkdir").symlink_to("/etc")
    (tmp_path / f"{PART_PREFIX}b").write_text("half")
    found, truncated = listing(str(tmp_path))
    assert list(found) == ["sub/a.txt"] and not truncated
    assert listing(str(tmp_path), max_listed=0) == ({}, True)


def test_no_read_or_write_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "cwd"
    folder.mkdir()
    (folder / "escape").symlink_to(outside)
    (folder / "secret").symlink_to("/etc/hostname")
    with pytest.raises(OSError):
        write_chunk(str(folder), "escape/x.txt", 0, b"evil", True)
    with pytest.raises(OSError):
        read_chunk(str(folder), "secret", 0, 100)
    assert list(outside.iterdir()) == []
    # Writing a file over a symlink replaces the link itself; its target is untouched.
    target = outside / "t.txt"
    target.write_text("kept")
    (folder / "over").symlink_to(target)
    write_chunk(str(folder), "over", 0, b"new", True)
    assert target.read_text() == "kept" and not os.path.islink(folder / "over")


def test_chunks_make_the_whole_file_only_at_the_end(tmp_path: Path) -> None:
    assert write_chunk(str(tmp_path), "d/f.bin", 0, b"abc", False) is None
    assert not (tmp_path / "d" / "f.bin").exists()
    size, _ = write_chunk(str(tmp_path), "d/f.bin", 3, b"def", True) or (0, 0)
    assert size == 6 and (tmp_path / "d" / "f.bin").read_bytes() == b"abcdef"
    assert read_chunk(str(tmp_path), "d/f.bin", 2, 3) == b"cde"
