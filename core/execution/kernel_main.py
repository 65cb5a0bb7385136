"""The kernel's entry point: ipykernel, started without the modules a Weaver kernel never uses.

``python -m ipykernel_launcher`` loads the debugger (debugpy with pydevd) and IPython's completion
engine (jedi with parso) at start: ~12 MB and ~10 % of a kernel's start-up CPU, in every kernel,
for features Weaver never asks for (nobody attaches a debugger or asks for completions). They are
hidden while ipykernel initialises, then made importable again, so user code may still import them.
This module imports nothing but ``sys`` and ipykernel: it runs in every kernel.
"""

from __future__ import annotations

import sys

LEFT_OUT = ("debugpy", "jedi")


def main() -> None:
    hidden = [name for name in LEFT_OUT if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # an import of it raises ImportError
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize()  # ipykernel and IPython note here, once, that these are missing
    for name in hidden:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]
    app.start()


if __name__ == "__main__":
    main()
