"""File intake: safe names, size limit, and nothing written unless every entry is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.files import add_files, safe_file_name


@pytest.mark.parametrize(
    "given, expected",
    [
        ("report.csv", "report.csv"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\data.xlsx", "data.xlsx"),
        (".bashrc", "bashrc"),
        ("  spaced name.txt  ", "spaced name.txt"),
        ("tab\tand\rbell\x07.txt", "tabandbell.txt"),
        ('what?<>|".csv', "what_____.csv"),
    ],
)
def test_safe_names(given: str, expected: str) -> None:
    assert safe_file_name(given) == expected


@pytest.mark.parametrize("stem", ["x" * 500, "😀" * 100, "é" * 300])
def test_long_names_fit_the_file_system_and_keep_their_extension(stem: str, tmp_path: Path) -> None:
    name = safe_file_name(stem + ".parquet")
    assert len(name.encode()) <= 200 and name.endswith(".parquet")
    assert add_files(tmp_path, [{"name": stem + ".parquet", "content": b"x"}], max_bytes=10) == [name]


def test_a_read_error_mid_copy_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "cwd"
    # /proc/self/mem passes as a regular file but fails on read: an I/O error part-way through.
    files = [{"name": "a.txt", "content": b"1"}, {"name": "b.bin", "path": "/proc/self/mem"}]
    with pytest.raises(ValueError, match="could not save the uploaded files"):
        add_files(folder, files, max_bytes=100)
    assert list(folder.iterdir()) == []


def test_oversize_upload_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"0" * 5000)
    target = tmp_path / "cwd"
    with pytest.raises(ValueError, match="over the .* limit"):
        add_files(
            target, [{"name": "small.txt", "content": b"ok"}, {"name": "big.bin", "path": str(big)}], max_bytes=4096
        )
    assert not target.exists() or list(target.iterdir()) == []


def test_a_symlink_planted_in_cwd_is_not_followed(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    (cwd / "data.csv").symlink_to(outside)
    names = add_files(cwd, [{"name": "data.csv", "content": b"new"}], max_bytes=1000)
    assert names == ["data-1.csv"]
    assert outside.read_text() == "untouched"
    assert (cwd / "data-1.csv").read_bytes() == b"new"
