"""The kernel's entry point: ipykernel, started without what a Weaver kernel never uses.

``python -m ipykernel_launcher`` spends ~0.35 s of CPU and ~68 MB per kernel; when a hundred users
arrive at once, kernel starts are what the machine does for half a minute. Three things in it serve
features a Weaver kernel never offers:

* the debugger (debugpy with pydevd) and IPython's completion engine (jedi with parso): hidden
  while ipykernel initialises (each has a fallback for being absent), then importable again, so
  user code may still import them;
* IPython's terminal front end (prompt_toolkit and pygments' lexers), which ``import IPython``
  loads only to offer ``IPython.embed()``, useless in a kernel: a stand-in module serves that name
  and loads the real one if it is ever called; ``IPython.terminal`` stays importable.

Together ~40 % of a start's CPU and ~14 MB of memory. The garbage collector is also paused during
start-up (thousands of objects are created, none is garbage). This module imports nothing but the
standard library and ipykernel: it runs in every kernel, and ``prepare`` runs once in the kernel
fork server (``zygote.py``), whose children go straight to ``run``.
"""

from __future__ import annotations

import gc
import sys
import types
from typing import Any

LEFT_OUT = ("debugpy", "jedi")
EMBED = "IPython.terminal.embed"


def _embed(**kwargs: Any) -> Any:
    """``IPython.embed`` on demand: drop the stand-in and call the real one."""
    if getattr(sys.modules.get(EMBED), "__weaver_stand_in__", False):
        del sys.modules[EMBED]
    from IPython.terminal.embed import embed

    return embed(**kwargs)


def _stand_in_embed() -> types.ModuleType:
    module = types.ModuleType(EMBED, "Stand-in for IPython's terminal embedding; loads it when called.")
    module.embed = _embed  # type: ignore[attr-defined]
    module.__weaver_stand_in__ = True  # type: ignore[attr-defined]
    return module


def prepare() -> list[str]:
    """Import ipykernel with the left-out modules hidden; returns the names ``run`` unhides."""
    gc.disable()
    hidden = [name for name in LEFT_OUT if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # an import of it raises ImportError
    if "IPython" not in sys.modules:
        sys.modules[EMBED] = _stand_in_embed()
    import ipykernel.kernelapp  # noqa: F401

    return [*hidden, EMBED]


def run(argv: list[str], hidden: list[str]) -> None:
    """Initialise the kernel from ``argv`` (without the program name), then serve until shutdown."""
    from ipykernel.kernelapp import IPKernelApp

    gc.disable()
    app = IPKernelApp.instance()
    app.initialize(argv)  # ipykernel and IPython note here, once, that the hidden modules are missing
    for name in hidden:
        module = sys.modules.get(name, False)
        if module is None or getattr(module, "__weaver_stand_in__", False):
            del sys.modules[name]  # later imports get the real module
    gc.enable()
    app.start()


def main() -> None:
    run(sys.argv[1:], prepare())


if __name__ == "__main__":
    main()
