"""Generated Python that profiles files added without code: tables, images and text."""

from __future__ import annotations

import keyword
import re
from pathlib import PurePath

TABLE_READERS = {
    ".csv": "pd.read_csv({path!r})",
    ".tsv": "pd.read_csv({path!r}, sep='\\t')",
    ".xlsx": "pd.read_excel({path!r})",
    ".xls": "pd.read_excel({path!r})",
    ".json": "pd.read_json({path!r})",
    ".jsonl": "pd.read_json({path!r}, lines=True)",
    ".parquet": "pd.read_parquet({path!r})",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def variable_name(file_name: str, taken: set[str]) -> str:
    """A Python identifier named after the file: ``Sales 2024.csv`` → ``sales_2024``."""
    stem = PurePath(file_name).stem.lower()
    name = re.sub(r"\W+", "_", stem, flags=re.ASCII).strip("_") or "data"
    if name[0].isdigit():
        name = f"df_{name}"
    if keyword.iskeyword(name) or name in {"pd", "Image"}:
        name = f"{name}_"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _table_code(file_name: str, var: str) -> str:
    reader = TABLE_READERS[PurePath(file_name).suffix.lower()].format(path=file_name)
    return f"""try:
    {var} = {reader}
    print(f"{file_name}: {{{var}.shape[0]}} rows x {{{var}.shape[1]}} columns, loaded as `{var}`")
    print({var}.dtypes.to_string())
    display({var}.head(5))
except Exception as exc:
    print(f"{file_name}: could not be read as a table ({{type(exc).__name__}}: {{exc}})")
"""


def _image_code(file_name: str) -> str:
    return f"""try:
    with Image.open({file_name!r}) as img:
        print(f"{file_name}: image {{img.size[0]}} x {{img.size[1]}} pixels, mode {{img.mode}}, format {{img.format}}")
except Exception as exc:
    print(f"{file_name}: could not be read as an image ({{type(exc).__name__}}: {{exc}})")
"""


def _text_code(file_name: str) -> str:
    return f"""try:
    with open({file_name!r}, encoding="utf-8") as handle:
        text = handle.read()
    lines = text.splitlines()
    print(f"{file_name}: text, {{len(lines)}} lines, {{len(text.split())}} words")
    print("\\n".join(lines[:5]))
except UnicodeDecodeError:
    print(f"{file_name}: binary file, {{os.path.getsize({file_name!r})}} bytes (not text)")
except Exception as exc:
    print(f"{file_name}: could not be read ({{type(exc).__name__}}: {{exc}})")
"""


def profile_code(file_names: list[str]) -> str:
    """One cell that profiles every file, each in its own ``try`` so one broken file spoils nothing."""
    taken: set[str] = set()
    parts: list[str] = []
    imports = {"import os"}
    for name in file_names:
        suffix = PurePath(name).suffix.lower()
        if suffix in TABLE_READERS:
            imports.add("import pandas as pd")
            parts.append(_table_code(name, variable_name(name, taken)))
        elif suffix in IMAGE_SUFFIXES:
            imports.add("from PIL import Image")
            parts.append(_image_code(name))
        else:
            parts.append(_text_code(name))
    return "\n".join(sorted(imports)) + "\n\n" + "\n".join(parts)
