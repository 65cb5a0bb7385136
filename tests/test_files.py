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


def test_long_names_keep_their_extension() -> None:
    name = safe_file_name("x" * 500 + ".parquet")
    assert len(name) <= 120 and name.endswith(".parquet")


def test_oversize_upload_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"0" * 5000)
    target = tmp_path / "cwd"
    with pytest.raises(ValueError, match="over the .* limit"):
        add_files(target, [{"name": "small.txt", "content": b"ok"}, {"name": "big.bin", "path": str(big)}], max_bytes=4096)
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
