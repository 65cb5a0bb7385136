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

import contextlib
import functools
import gc
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pathlib
import re
import sys
import sysconfig
import types
from collections.abc import Iterator
from typing import Any

LEFT_OUT = ("debugpy", "jedi")
# The kernel's command line after ``-f <connection file>`` (``launcher.KERNEL_ARGS``): the same for every
# kernel, so the fork server parses it once (``prebuild``).
FIXED_ARGS = ("--IPKernelApp.ignore_cwd=True", "--HistoryManager.enabled=False")
EMBED = "IPython.terminal.embed"
# What every kernel imports while it starts and answers its first requests, beyond ``ipykernel.kernelapp``
# (``bench/kernel_memory.py`` lists it): imported by ``prepare``, so a forked kernel shares them with
# the fork server instead of holding a copy of its own. Only modules whose import starts no thread
# and opens nothing; Weaver's own runtime (``core.plugins.runtime``) is not here, a forked kernel
# imports it from inside its sandbox, but what it needs of the standard library is.
PRE_IMPORTS = (
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",  # imported (and found unusable) even with debugpy hidden
    "IPython.core.completerlib",
    "IPython.extensions.storemagic",  # IPython's default extension
    "faulthandler",
    "pwd",
    "tornado.gen",
    "tornado.locks",
    "tornado.queues",
    "tornado.platform.asyncio",
    # Weaver's runtime in the kernel (core.plugins.runtime, api, core.compat.autoload)
    "secrets",
    "tempfile",
    "shutil",
    "importlib.util",
    "traceback",
)


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

    for name in PRE_IMPORTS:
        importlib.import_module(name)
    return [*hidden, EMBED]


class _SysForTheKernelClass:
    """``sys`` as ipykernel's kernel class sees it while it is built (and IPython's ``init_code``,
    ``_init_code``): no modules listed.

    ``IPythonKernel.__init__`` lists the file of every loaded module, for the debugger alone. In a
    forked kernel that walk writes to the reference count of every module object and file name the
    fork server imported: ~4 MB of its shared pages copied into each kernel, for a list nobody reads
    when the debugger is hidden."""

    modules: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)


@contextlib.contextmanager
def _no_module_list() -> Iterator[None]:
    """While the kernel is built, ipykernel's kernel module sees ``_SysForTheKernelClass`` for ``sys``;
    only when the debugger is hidden (its module list is then unused) and that module reads ``sys``."""
    from ipykernel import ipkernel

    if sys.modules.get("debugpy", False) is not None or getattr(ipkernel, "sys", None) is not sys:
        yield
        return
    ipkernel.sys = _SysForTheKernelClass()  # type: ignore[assignment]
    try:
        yield
    finally:
        ipkernel.sys = sys


def prebuild() -> None:
    """In the fork server: the kernel application object, with the command line every kernel shares
    (``FIXED_ARGS``) parsed into its configuration, and the kernel's IPython shell (``_prebuild_shell``).
    Neither holds anything of one kernel: no file, socket, profile or environment is read yet; a kernel
    adds its connection file (``run``) and makes the shell its own (``_adopt_shell``). Building them once
    spares each kernel ~0.35 MB and ~1.3 MB of pages it would copy (measured with ``bench/kernel_memory.py``)."""
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.instance().parse_command_line(list(FIXED_ARGS))
    _prebuild_shell()


def note_modules() -> None:
    """In the fork server, once it imports nothing more: its modules and their names, so that a kernel
    never needs to walk ``sys.modules`` (``forget_host_core``, ``_init_code``)."""
    _FORK_SERVER_MODULES.update(sys.modules)
    _MODULE_NAMES.update(sys.modules)
    _HOST_CORE_MODULES[:] = [name for name in sys.modules if name == "core" or name.startswith("core.")]


# The fork server's modules (``note_modules``): a kernel's shell lists the modules loaded at its start
# (``_sys_modules_keys``, for ``%reset --aggressive``) from these (``_init_code``), and a kernel drops
# the fork server's ``core`` by these names (``forget_host_core``).
_FORK_SERVER_MODULES: dict[str, Any] = {}
_MODULE_NAMES: set[str] = set()
_HOST_CORE_MODULES: list[str] = []


def forget_host_core() -> None:
    """In a forked kernel, first: the fork server's own ``core`` modules leave ``sys.modules`` (the
    kernel's come from its sandbox, or ``adopt_runtime``). Their names were listed in the fork server
    (``prebuild``): walking ``sys.modules`` here would write to the count of every module's name and
    so copy the fork server's pages that hold them."""
    for name in _HOST_CORE_MODULES:
        sys.modules.pop(name, None)
    for name in _modules_since_the_fork():
        if name == "core" or name.startswith("core."):
            del sys.modules[name]


def _modules_since_the_fork() -> list[str]:
    """The names of the modules a kernel added to ``sys.modules`` after the fork: the last ones in its
    order (a dict keeps the order of insertion), back to the first that is the fork server's own. Read
    from the end, so the fork server's names are not visited (each visit writes to the name's count)."""
    found = []
    for name in reversed(sys.modules):
        if _FORK_SERVER_MODULES.get(name, False) is sys.modules[name]:
            break
        found.append(name)
    return found


def _init_code(app: Any, init_code: Any) -> None:
    """``init_code`` of ``app``, whose last step lists every loaded module's name in a new set
    (``set(sys.modules)``): in a forked kernel that writes to the count of each name the fork server
    holds, copying ~1 MB of its pages. Here the step sees no modules, and the shell gets the set the
    fork server made (``_MODULE_NAMES``) with the names loaded since (``_modules_since_the_fork``)."""
    from IPython.core import shellapp

    if getattr(shellapp, "sys", None) is not sys or not _MODULE_NAMES:
        init_code()
        return
    shellapp.sys = _SysForTheKernelClass()  # type: ignore[assignment]
    try:
        init_code()
    finally:
        shellapp.sys = sys
    _MODULE_NAMES.update(_modules_since_the_fork())
    app.shell._sys_modules_keys = _MODULE_NAMES


# What ``InteractiveShell.__init__`` does that belongs to one kernel (its folder, home, environment,
# ``__main__``): left out when the fork server builds the shell, done by each kernel (``_adopt_shell``).
_SHELL_STEPS_AFTER_THE_FORK = (
    "init_environment",
    "init_virtualenv",
    "save_sys_module_state",
    "init_sys_modules",
    "init_pushd_popd_magic",
    "init_logger",
)


def _skip(self: Any, *args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _shell_steps_deferred() -> Iterator[None]:
    """While the fork server builds the shell: no step of ``_SHELL_STEPS_AFTER_THE_FORK`` runs and the
    shell's key-value store (``shell.db``, which creates its folder) is not opened."""
    from ipykernel.zmqshell import ZMQInteractiveShell
    from IPython.core import interactiveshell

    own = {name: ZMQInteractiveShell.__dict__.get(name) for name in _SHELL_STEPS_AFTER_THE_FORK}
    store = interactiveshell.PickleShareDB
    interactiveshell.PickleShareDB = _skip  # type: ignore[assignment,misc]
    for name in own:
        setattr(ZMQInteractiveShell, name, _skip)
    try:
        yield
    finally:
        interactiveshell.PickleShareDB = store  # type: ignore[misc]
        for name, method in own.items():
            if method is None:
                delattr(ZMQInteractiveShell, name)
            else:
                setattr(ZMQInteractiveShell, name, method)


def _prebuild_shell() -> None:
    """In the fork server: the kernel's IPython shell (``ZMQInteractiveShell``, the singleton the kernel
    takes when it is built), with the shared configuration, an empty namespace and a profile folder
    with no location. Nothing in it is any kernel's: no socket, session, file, folder, environment or
    user data (``_SHELL_STEPS_AFTER_THE_FORK``); it starts no thread (history is off in ``FIXED_ARGS``,
    checked). A kernel then gives it its own (``_adopt_shell``). Building it once spares each kernel
    ~2 MB of pages it would copy (``bench/kernel_memory.py``)."""
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelapp import IPKernelApp
    from ipykernel.zmqshell import ZMQInteractiveShell
    from IPython.core.profiledir import ProfileDir

    app = IPKernelApp.instance()
    with _shell_steps_deferred():
        shell = ZMQInteractiveShell.instance(
            parent=app,
            ipython_dir="",  # none yet: IPython would otherwise look for, or make, the fork server's own
            profile_dir=ProfileDir(),
            compiler_class=IPythonKernel.compiler_class.default_value,
        )
    if shell.history_manager is None or shell.history_manager.enabled:
        raise RuntimeError("the kernel's shell was built with its history on")


def _adopt_shell(app: Any) -> None:
    """In a kernel whose shell the fork server built, once the kernel is built: the shell becomes this
    kernel's (its kernel, profile and IPython folders, working folder, home, environment, ``__main__``
    and key-value store), as ``InteractiveShell.__init__`` would have made it here."""
    from ipykernel.zmqshell import ZMQInteractiveShell
    from IPython.core import interactiveshell

    shell = app.kernel.shell
    shell.kernel = app.kernel
    shell.parent = app.kernel
    extensions = shell.extension_manager._on_ipython_dir_changed  # it would make an ``extensions`` folder
    shell.unobserve(extensions, names=("ipython_dir",))
    shell.ipython_dir = app.ipython_dir
    shell.observe(extensions, names=("ipython_dir",))
    shell.profile_dir = app.profile_dir
    shell.history_manager.hist_file = shell.history_manager._get_hist_file_name()
    shell.starting_dir = os.getcwd()
    shell.history_manager.dir_hist[:] = [pathlib.Path.cwd()]  # the user's ``_dh``, the same list
    shell.init_encoding()
    for name in _SHELL_STEPS_AFTER_THE_FORK:
        getattr(ZMQInteractiveShell, name)(shell)
    shell.db = interactiveshell.PickleShareDB(os.path.join(shell.profile_dir.location, "db"))


@contextlib.contextmanager
def _parsed_before_the_fork(app: Any, argv: list[str]) -> Iterator[None]:
    """While ``app`` initialises, its command line is taken as parsed when ``prebuild`` parsed it
    (``argv`` is ``-f <connection file>`` then ``FIXED_ARGS``); only the connection file is this kernel's.
    The kernel takes the shell ``prebuild`` built, which becomes this kernel's before anything uses it."""
    app.connection_file = argv[1]
    app.parse_command_line = lambda argv=None: None
    init_shell = app.init_shell

    def adopt_then_init_shell() -> None:
        _adopt_shell(app)
        init_shell()

    app.init_shell = adopt_then_init_shell
    init_code = app.init_code
    app.init_code = lambda: _init_code(app, init_code)
    try:
        yield
    finally:
        del app.parse_command_line
        del app.init_shell
        del app.init_code


def _app(argv: list[str]) -> tuple[Any, contextlib.AbstractContextManager[None]]:
    """The application to initialise from ``argv``: the fork server's (``prebuild``) when ``argv`` is
    what it parsed, else a new one (that also parses ``argv``)."""
    from ipykernel.kernelapp import IPKernelApp

    if IPKernelApp.initialized():
        app = IPKernelApp.instance()
        if len(argv) == 2 + len(FIXED_ARGS) and argv[0] == "-f" and tuple(argv[2:]) == FIXED_ARGS:
            return app, _parsed_before_the_fork(app, argv)
        IPKernelApp.clear_instance()
        _drop_prebuilt_shell()
    return IPKernelApp.instance(), contextlib.nullcontext()


def _drop_prebuilt_shell() -> None:
    """A kernel with another command line builds its own shell."""
    from ipykernel.zmqshell import ZMQInteractiveShell

    if ZMQInteractiveShell.initialized():
        ZMQInteractiveShell.clear_instance()


def run(argv: list[str], hidden: list[str]) -> None:
    """Initialise the kernel from ``argv`` (without the program name), then serve until shutdown."""
    gc.disable()
    adopt_runtime()
    app, parsing = _app(argv)
    with _no_module_list(), parsing:
        app.initialize(argv)  # ipykernel and IPython note here, once, that the hidden modules are missing
    for name in hidden:
        module = sys.modules.get(name, False)
        if module is None or getattr(module, "__weaver_stand_in__", False):
            del sys.modules[name]  # later imports get the real module
    gc.enable()
    app.start()


def warm_caches() -> None:
    """In the fork server, after ``prebuild``: what every kernel computes once, on its first cell, and
    keeps: the tokenizer's pattern (``tokenize``, IPython splits each cell with it), the patterns of
    IPython's startup files (``*.py``, ``*.ipy``: ``fnmatch``'s cache), and the prebuilt shell's
    display formatters' printer tables (its first formatted value, e.g. the runtime's bootstrap
    answer). Each is the same in every kernel and names nothing of any kernel; computed after the
    fork, each compiled its pattern or built its tables anew and wrote to the shared pages of the
    code that does it: ~0.2 MB per kernel (``bench/kernel_memory.py``)."""
    import fnmatch
    import io
    import tokenize

    from ipykernel.zmqshell import ZMQInteractiveShell

    for _ in tokenize.generate_tokens(io.StringIO("pass\n").readline):
        pass
    for pattern in ("*.py", "*.ipy"):
        fnmatch.filter([], pattern)
    formatter = ZMQInteractiveShell.instance().display_formatter if ZMQInteractiveShell.initialized() else None
    if formatter is not None:
        formatter.format("")


# Weaver's runtime in a kernel (what ``KernelRPC.bootstrap`` imports) and where a sandboxed kernel
# finds Weaver's ``core`` (``sandbox.SANDBOX_ROOT``, a read-only bind of the folder this module is in).
RUNTIME = "core.plugins.runtime"
SANDBOX_ROOT = "/opt/weaver"
_HOST_CORE = pathlib.Path(__file__).resolve().parent.parent
_RUNTIME_MODULES: dict[str, types.ModuleType] = {}


class _SandboxCore(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``core`` and its modules from this folder as a sandboxed kernel would from inside its
    sandbox: the module's file, spec and code name their path there (``SANDBOX_ROOT``), so tracebacks
    and ``__file__`` read the same as in a kernel that imported them itself."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "core" and not name.startswith("core."):
            return None
        parts = name.split(".")[1:]
        host = _HOST_CORE.joinpath(*parts)
        shown = pathlib.PurePosixPath(SANDBOX_ROOT, "core", *parts)
        if (host / "__init__.py").is_file():
            spec = importlib.util.spec_from_loader(name, self, origin=str(shown / "__init__.py"), is_package=True)
        elif host.with_suffix(".py").is_file():
            spec = importlib.util.spec_from_loader(name, self, origin=str(shown.with_suffix(".py")))
        else:
            return None
        assert spec is not None
        spec.has_location = True
        if spec.submodule_search_locations is not None:
            spec.submodule_search_locations[:] = [str(shown)]
        return spec

    def exec_module(self, module: types.ModuleType) -> None:
        shown = str(module.__spec__.origin if module.__spec__ else module.__file__)
        host = _HOST_CORE.joinpath(*pathlib.PurePosixPath(shown).relative_to(SANDBOX_ROOT, "core").parts)
        exec(compile(host.read_bytes(), shown, "exec", dont_inherit=True), module.__dict__)


def prebuild_runtime() -> None:
    """In the fork server: Weaver's runtime imported as a sandboxed kernel imports it (``_SandboxCore``),
    kept aside (the fork server's own ``core`` stays as it is) for ``adopt_runtime``. Importing it runs
    nothing (the runtime's ``bootstrap`` does the work). A kernel that imported it itself copied ~1.5 MB
    of the fork server's pages (the import machinery it walks) beside the modules' own objects."""
    own = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "core" or name.startswith("core.")}
    finder = _SandboxCore()
    sys.meta_path.insert(0, finder)
    try:
        importlib.import_module(RUNTIME)
    finally:
        sys.meta_path.remove(finder)
        for name in [name for name in sys.modules if name == "core" or name.startswith("core.")]:
            _RUNTIME_MODULES[name] = sys.modules.pop(name)
        sys.modules.update(own)


def adopt_runtime() -> None:
    """In a forked kernel: the runtime ``prebuild_runtime`` imported becomes this kernel's, when the kernel
    finds ``core`` where it was imported from (``SANDBOX_ROOT`` on its path, the same files there) and
    has not imported any of it itself."""
    if not _RUNTIME_MODULES or SANDBOX_ROOT not in sys.path or any(name in sys.modules for name in _RUNTIME_MODULES):
        return
    for module in _RUNTIME_MODULES.values():
        shown = module.__spec__.origin if module.__spec__ else None
        if shown is None or not os.path.isfile(shown):
            return
    sys.modules.update(_RUNTIME_MODULES)


_FILLERS: list[list[Any]] = []
_ALLOCATOR_CLASS = re.compile(r"^\s*\d+\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s*$", re.MULTILINE)


def fill_free_slots() -> None:
    """In the fork server, last before ``gc.freeze()``: take every free block of CPython's small-object
    allocator, so that what a kernel allocates goes to fresh pages, not into gaps in pages it shares
    with the fork server (each such allocation would copy a whole shared page).

    The free blocks per size class come from ``sys._debugmallocstats()`` (written to stderr); each is
    taken by a ``bytes`` object of that exact size (33 bytes of header and the data), or an ``int`` for
    the 32-byte class. Without pymalloc (``PYTHONMALLOC=malloc``) there is nothing to read and nothing
    is done. Saves ~0.6 MB per kernel (``bench/kernel_memory.py``)."""
    fd = os.memfd_create("weaver-mallocstats")
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1 << 20).decode(errors="replace")
    finally:
        os.close(saved)
        os.close(fd)
    wanted = [(int(size), int(free)) for size, free in _ALLOCATOR_CLASS.findall(text)]
    for size, free in sorted(wanted, reverse=True):  # the 32-byte class last: counting makes ints of it
        if size < 32 or not free:
            continue
        blocks: list[Any] = [None] * free  # sized at once: a growing list would free blocks as it grows
        for i in range(free):
            blocks[i] = bytes(size - 33) if size >= 48 else 10**9 + i
        _FILLERS.append(blocks)


_HOLES: list[int] = []
_MALLINFO_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()


@functools.cache
def _mallinfo2() -> Any:
    import ctypes

    class MallInfo(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO_FIELDS]

    call = ctypes.CDLL(None).mallinfo2
    call.restype, call.argtypes = MallInfo, []
    return call


def mallinfo() -> Any:
    """glibc's ``mallinfo2()`` (``arena``: the C heap's size, ``fordblks``: its free bytes, ``keepcost``:
    its free top); raises ``AttributeError`` without glibc 2.33 or later. Allocates nothing from the
    C heap once it has been called."""
    return _mallinfo2()()


def fill_malloc_holes() -> None:
    """In the fork server, before ``gc.freeze()``: take the free chunks inside the C heap (glibc's
    malloc, which holds Python's larger objects: dict tables, code, type objects), so a kernel's larger
    objects come from the heap's top, on fresh pages, instead of gaps in pages it shares with the fork
    server (each such allocation would copy a whole shared page).

    Blocks of 64 KiB, then halves down to 16 bytes, are allocated and kept while they come from a gap;
    the first one that does not (the heap's top shrinks, the heap grows, or it was mapped on its own) is
    freed and the size halved. Never much more is kept than the gaps held at the start. Does nothing without
    glibc's ``mallinfo2``. Saves ~1 MB per kernel (``bench/kernel_memory.py``)."""
    import ctypes

    try:
        start = mallinfo()
        libc = ctypes.CDLL(None)
        malloc, free = libc.malloc, libc.free
    except (OSError, AttributeError):
        return
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    # At most twice the free bytes inside the heap below its top at the start (this loop's own list
    # leaves gaps as it grows), and a megabyte: a bound should glibc ever answer unexpectedly.
    budget = 2 * (start.fordblks - start.keepcost) + (1 << 20)
    size = 1 << 16
    while size >= 16 and budget >= size:
        before = mallinfo()
        pointer = malloc(size)
        if not pointer:
            return
        after = mallinfo()
        if after.keepcost < before.keepcost or after.arena != before.arena or after.hblkhd != before.hblkhd:
            free(pointer)
            size //= 2
        else:
            _HOLES.append(pointer)
            budget -= size


# The code a kernel runs after the fork, at its start and first cells (``bench/kernel_hot_code.py`` writes it):
# ``gather_hot_code``.
HOT_CODE = pathlib.Path(__file__).with_name("kernel_hot_code.txt")
_LIBRARY_ROOTS = tuple(
    sorted(
        {path.rstrip("/") + "/" for path in (sysconfig.get_paths()["stdlib"], *sys.path) if path}, key=len, reverse=True
    )
)
_GATHERED: list[types.CodeType] = []


def code_key(code: types.CodeType) -> str:
    """``code`` as ``kernel_hot_code.txt`` names it: its file (from its package or the standard
    library's folder, the same in any installation and inside a sandbox), first line and name."""
    path = code.co_filename
    for root in (f"{SANDBOX_ROOT}/", f"{_HOST_CORE.parent}/", *_LIBRARY_ROOTS):
        if path.startswith(root):
            path = path[len(root) :]
            break
    return f"{path}:{code.co_firstlineno}:{getattr(code, 'co_qualname', code.co_name)}"


def gather_hot_code() -> int:
    """In the fork server, once nothing more is imported or built: the code objects a kernel runs
    (``HOT_CODE``) are replaced by copies made one after another, so they lie together on pages of
    their own instead of among code no kernel runs. Each call writes to its code object (its
    reference count; in Python 3.11 also its warm-up counter and quickened instructions), so a
    kernel copies every page holding code it runs: ~700 pages scattered, ~230 gathered.

    A copy is equal to its original (``code.replace()``); a function gets the copy as its
    ``__code__``, and code nested in it (a closure, a comprehension) is reached through the copy of
    its enclosing code's constants. The originals are kept until every copy is made (each freed
    original would be the place of the next copy). Returns how many functions got a copy."""
    try:
        wanted = {line for line in HOT_CODE.read_text().splitlines() if line and not line.startswith("#")}
    except OSError:
        return 0
    made: dict[int, types.CodeType | None] = {}

    def gathered(code: types.CodeType) -> types.CodeType | None:
        if id(code) in made:
            return made[id(code)]
        made[id(code)] = None
        consts = list(code.co_consts)
        inner = False
        for i, const in enumerate(consts):
            if isinstance(const, types.CodeType) and (copy := gathered(const)) is not None:
                consts[i], inner = copy, True
        if not inner and code_key(code) not in wanted:
            return None
        _GATHERED.append(code)
        made[id(code)] = copy = code.replace(co_consts=tuple(consts))
        return copy

    count = 0
    for function in [f for f in gc.get_objects() if type(f) is types.FunctionType]:
        copy = gathered(function.__code__)
        if copy is not None:
            function.__code__ = copy
            count += 1
    _GATHERED.clear()
    return count


def main() -> None:
    run(sys.argv[1:], prepare())


if __name__ == "__main__":
    main()
