"""Generated Python that profiles files added without code: tables, images and text.

File names only ever appear in the generated code as ``repr`` literals passed to small helper
functions, so a name such as ``{x}.csv`` is data, never code. Each file has its own ``try``, so
one broken file spoils nothing, and the helpers are deleted afterwards so the user's namespace
gains only the tables' variables.
"""

from __future__ import annotations

import builtins
import keyword
import re
from pathlib import PurePath

from core.plugins.runtime import TABLE_MIME

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
_RESERVED = set(dir(builtins)) | {"pd", "os", "Image", "display", "get_ipython", "exit", "quit"}

_HELPERS = {
    "_could_not_read": """def _could_not_read(name, kind, error):
    print(f"{name}: could not be read as {kind} ({type(error).__name__}: {error})")
""",
    "_describe_table": f"""def _describe_table(name, table, variable):
    rows, columns = table.shape
    print(f"{{name}}: {{rows}} rows x {{columns}} columns, loaded as `{{variable}}`")
    if not columns:
        return
    missing = table.isna().sum()
    print(f"missing values: {{int(missing.sum())}} in all\\n")
    distinct = pd.Series([_distinct(table.iloc[:, i]) for i in range(columns)], index=table.columns)
    overview = pd.DataFrame({{"type": table.dtypes.astype(str), "missing": missing, "distinct": distinct}})
    print(overview.to_string())
    numeric = table.select_dtypes("number")
    if numeric.shape[1]:
        print("\\nsummary of the numeric columns:")
        print(numeric.describe().round(2).to_string())
    # The first rows once, as a table that knows the whole table's shape (not a second text copy).
    kind = {TABLE_MIME!r}
    bundle, _ = get_ipython().display_formatter.format(table.head(5), include={{kind}})
    if kind in bundle:
        display({{kind: {{**bundle[kind], "shape": [rows, columns]}}}}, raw=True)
    else:
        print("\\nfirst rows:")
        print(table.head(5).to_string())
""",
    "_distinct": """def _distinct(column):
    try:
        return column.nunique()
    except TypeError:  # lists or dicts in the cells (nested JSON) cannot be hashed: count them as text
        return column.astype(str).nunique()
""",
    "_describe_image": """def _describe_image(name):
    with Image.open(name) as img:
        print(f"{name}: image {img.size[0]} x {img.size[1]} pixels, mode {img.mode}, format {img.format}")
""",
    "_describe_text": """def _describe_text(name):
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        print(f"{name}: binary file, {os.path.getsize(name)} bytes (not text)")
        return
    lines = text.splitlines()
    print(f"{name}: text, {len(lines)} lines, {len(text.split())} words")
    print("\\n".join(lines[:5]))
""",
}


def variable_name(file_name: str, taken: set[str]) -> str:
    """A Python identifier named after the file (``Sales 2024.csv`` → ``sales_2024``), never a builtin."""
    stem = PurePath(file_name).stem.lower()
    name = re.sub(r"\W+", "_", stem, flags=re.ASCII).strip("_") or "data"
    if name[0].isdigit():
        name = f"df_{name}"
    if keyword.iskeyword(name) or name in _RESERVED:
        name = f"{name}_data"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _guarded(name: str, kind: str, body: str) -> str:
    return f"try:\n    {body}\nexcept Exception as _error:\n    _could_not_read({name!r}, {kind!r}, _error)\n"


def profile_code(file_names: list[str], variables: dict[str, str] | None = None) -> str:
    """One cell that profiles every file, by type, each in its own ``try``; a table is loaded
    into ``variables[name]`` when given (a dataset's name), else a name made from the file's."""
    taken: set[str] = set()
    imports = {"import os"}
    helpers = ["_could_not_read"]
    parts: list[str] = []
    for name in file_names:
        suffix = PurePath(name).suffix.lower()
        if suffix in TABLE_READERS:
            imports.add("import pandas as pd")
            helpers += ["_distinct", "_describe_table"]
            given = (variables or {}).get(name)
            var = variable_name(given + ".x" if given else name, taken)
            reader = TABLE_READERS[suffix].format(path=name)
            parts.append(_guarded(name, "a table", f"{var} = {reader}\n    _describe_table({name!r}, {var}, {var!r})"))
        elif suffix in IMAGE_SUFFIXES:
            imports.add("from PIL import Image")
            helpers.append("_describe_image")
            parts.append(_guarded(name, "an image", f"_describe_image({name!r})"))
        else:
            helpers.append("_describe_text")
            parts.append(_guarded(name, "text", f"_describe_text({name!r})"))
    used = list(dict.fromkeys(helpers))
    return "\n".join(["\n".join(sorted(imports)), "", *(_HELPERS[h] for h in used), *parts, f"del {', '.join(used)}\n"])
