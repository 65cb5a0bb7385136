"""``python -m core.compat my_plugin.py [args]``: run a TaskWeaver plugin file (or script) as
``__main__`` with TaskWeaver's import paths served by Weaver."""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m core.compat FILE.py [ARGS...]")
    import core.compat.taskweaver  # noqa: F401  (refuses if a real TaskWeaver is installed)

    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
