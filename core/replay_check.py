"""Which earlier code a resumed chat may run again: only code that provably cannot reach a plugin.

A plugin may send mail, charge a card or write to a database; running it again at every resume
would repeat that. Code reaches a plugin by naming it, but also indirectly: ``globals()['send_' +
'mail']()``, ``eval``, ``getattr(module, name)``, an alias made earlier (``f = send_mail``). So each
step is read with ``ast`` and skipped (``Skip``, which says why) when:

* it **names a plugin**: as a name, an attribute, an import, or inside a string or bytes literal
  (a string can be evaluated or looked up, and pandas' ``query``/``eval`` call ``@name``);
* it **looks something up at run time**: ``globals``, ``locals``, ``vars``, ``eval``, ``exec``,
  ``compile``, ``__import__``, ``__builtins__``, ``builtins``, ``importlib``, ``setattr``,
  ``delattr``, ``getattr`` with a computed name, ``operator.attrgetter``/``methodcaller``,
  ``sys.modules``/``sys._getframe``, ``IPython``/``get_ipython``, a dunder attribute such as
  ``__dict__`` or ``__globals__``, frame attributes (``f_globals``...), ``.query``/``.eval``
  with a computed expression, or imports of ``inspect``, ``gc``, ``ctypes``, ``__main__`` or the
  plugin machinery (``taskweaver``, ``core``);
* it **uses a name that a step not replayed made** (skipped, failed or cancelled) and no
  replayed step has made again since: in the replay that name is missing, or holds something
  else (``f = send_mail`` is skipped, so a later ``f()`` is skipped too, not a NameError that
  stops the restore);
* it is **not plain Python**: IPython's ``%magic`` and ``!shell`` lines run whatever they say.

Apart from that, time is not spent again on what only took time: ``trim`` drops the
straight-line statements (at the top level, or in an ``if`` or ``with`` block; never in a loop,
whose wait may be what paces it, nor in a function or class) that only wait (``time.sleep``/
``sleep``/``await asyncio.sleep`` with arguments that call nothing) or only show something
(``print``/``display`` of values that call nothing and with no keyword - ``file=`` writes a file -
nor ``*args``; a bare name or attribute left to be displayed); a step made only of those is
skipped (``SkipKind.TIME_ONLY``), as it rebuilds nothing. These names count as the builtins or
``time``/``asyncio`` functions only while the chat has not bound them itself (``def print``,
``t = []`` after ``import time as t``); a trimmed step that would not compile runs as written.

Names are tracked per statement at the top level of each step (a use checked before the
statement's own bindings; uses inside functions count, bindings inside them do not). This is a
conservative reading of the text, not a sandbox: it decides what is run *again*, which the user
already ran once, and when in doubt it skips.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterator

# Reached by name, these look up or run other names at run time.
DYNAMIC_NAMES = frozenset(
    {
        "globals", "locals", "vars", "eval", "exec", "compile", "__import__", "__builtins__", "builtins",
        "importlib", "setattr", "delattr", "get_ipython", "IPython", "breakpoint", "attrgetter", "methodcaller",
        "__main__", "__loader__", "__spec__",
    }
)  # fmt: skip
# Attributes that reach namespaces, frames or objects by a computed path.
DYNAMIC_ATTRIBUTES = frozenset(
    {
        "f_globals", "f_locals", "f_builtins", "f_back", "tb_frame", "gi_frame", "cr_frame", "ag_frame",
        "_getframe", "_current_frames", "attrgetter", "methodcaller", "get_ipython", "run_line_magic",
        "run_cell_magic", "user_ns", "import_module", "resolve_name", "locate",
    }
)  # fmt: skip
HARMLESS_DUNDERS = frozenset({"__name__", "__doc__", "__version__", "__file__", "__qualname__", "__module__"})
SYS_LOOKUPS = frozenset({"modules", "_getframe", "_current_frames"})
# Modules that hand out other objects by name or by scanning the process (or hold the plugins).
BLOCKED_MODULES = frozenset(
    {
        "importlib", "builtins", "__main__", "IPython", "inspect", "gc", "ctypes", "taskweaver", "core", "pkgutil",
        "pydoc", "pickle", "marshal", "dill", "copyreg",
    }
)  # fmt: skip
# Calls that only show their arguments (the time a replay saves by not showing them again).
OUTPUT_FUNCTIONS = frozenset({"print", "display"})
# How a binding made a wait: ``import time [as t]`` (origin ``time``), ``from time import sleep``.
WAIT_MODULES = frozenset({"time", "asyncio"})
WAIT_SLEEPS = frozenset({"time.sleep", "asyncio.sleep"})
# A pandas ``.query``/``.eval`` string resolves ``@names`` from the caller's variables.
EXPRESSION_METHODS = frozenset({"query", "eval"})


class SkipKind(Enum):
    PLUGIN = "plugin"  # names a plugin
    DYNAMIC = "dynamic"  # looks names up at run time
    FROM_SKIPPED = "from_skipped"  # uses a name only a step not replayed made
    NOT_PYTHON = "not_python"  # IPython magics or shell lines, or not code at all
    TIME_ONLY = "time_only"  # only waits or shows output: nothing to rebuild


@dataclass(frozen=True)
class Skip:
    """Why a step is not run again; ``str()`` says it in words a user can read."""

    kind: SkipKind
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        listed = ", ".join(self.names)
        if self.kind is SkipKind.PLUGIN:
            return f"it calls the plugin {listed}, whose side effects are not repeated"
        if self.kind is SkipKind.DYNAMIC:
            return (
                f"it looks names up at run time ({listed}), so it could reach a plugin, "
                "whose side effects are not repeated"
            )
        if self.kind is SkipKind.FROM_SKIPPED:
            return f"it uses {listed}, made by an earlier step that is not run again"
        if self.kind is SkipKind.TIME_ONLY:
            return "it only waits or shows output"
        return "it is not plain Python (IPython magics or shell commands), so it could call a plugin"


@dataclass
class ReplayChecker:
    """Decides step by step, in the chat's order, and remembers the names that steps not replayed made."""

    plugins: frozenset[str]
    missing: set[str] = field(default_factory=set)  # made by a step not replayed, not made again since
    _sys_names: set[str] = field(default_factory=lambda: {"sys"})
    _wait_modules: set[str] = field(default_factory=set)  # ``import time [as t]``, ``import asyncio``
    _sleep_names: set[str] = field(default_factory=set)  # ``from time import sleep [as nap]``
    _output_names: set[str] = field(default_factory=lambda: set(OUTPUT_FUNCTIONS))  # not rebound by the chat

    def check(self, code: str) -> Skip | None:
        """Why ``code`` must not run again, or None; either way its names are accounted for."""
        tree, plain = _parse(code)
        if tree is None:
            return Skip(SkipKind.NOT_PYTHON)
        self._sys_names |= _aliases_of(tree, "sys")
        self._learn_waits(tree)
        skip = self._reaches_plugin(tree) if plain else Skip(SkipKind.NOT_PYTHON)
        if skip is None:
            skip = self._uses_missing(tree)
        if skip is not None:
            self.missing |= _bound_names(tree)
        return skip

    def _learn_waits(self, tree: ast.Module) -> None:
        """Which names are ``time``/``asyncio`` and their ``sleep``, and which output functions are
        still the builtins, once this step has run: a name the step binds any other way (``def
        print``, ``sleep = 3``, ``t = []``) is the user's own from then on, and is never dropped."""
        modules: dict[str, bool] = {}  # name -> every binding of it in the step imports a wait module
        sleeps: dict[str, bool] = {}
        for name, origin in _bindings(tree):
            modules[name] = modules.get(name, True) and origin in WAIT_MODULES
            sleeps[name] = sleeps.get(name, True) and origin in WAIT_SLEEPS
        for name in modules:
            self._output_names.discard(name)
            if modules[name]:
                self._wait_modules.add(name)
            else:
                self._wait_modules.discard(name)
            if sleeps[name]:
                self._sleep_names.add(name)
            else:
                self._sleep_names.discard(name)

    def trim(self, code: str) -> tuple[str | None, int]:
        """``code`` without its statements that only wait or show output, and how many were dropped;
        None when nothing else is left. Plain Python only (other code is returned as it is, and so
        is code whose trimmed form cannot be written back or would not compile)."""
        tree, plain = _parse(code)
        if tree is None or not plain:
            return code, 0
        dropped = _drop_time_only(tree.body, self._only_time)
        if not dropped:
            return code, 0
        if all(isinstance(node, ast.Pass) for node in tree.body):
            return None, dropped
        try:
            trimmed = ast.unparse(tree)
            compile(trimmed, "<replay>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, TypeError):
            return code, 0
        return trimmed, dropped

    def _only_time(self, statement: ast.stmt) -> bool:
        """A statement whose only effect is time: a wait, or output of values that call nothing."""
        if not isinstance(statement, ast.Expr):
            return False
        value = statement.value
        if isinstance(value, ast.Await):
            value = value.value
        if isinstance(value, (ast.Name, ast.Attribute, ast.Constant)) and _calls_nothing(value):
            return True  # left to be displayed
        if not isinstance(value, ast.Call) or not all(_calls_nothing(a) for a in [*value.args, *value.keywords]):
            return False
        if any(isinstance(a, ast.Starred) for a in value.args) or any(k.arg is None for k in value.keywords):
            return False  # ``*args``/``**kwargs`` may hold ``file=``, or anything
        func = value.func
        if isinstance(func, ast.Name):
            if func.id in self._output_names:
                return not value.keywords  # ``file=`` writes a file; ``sep``/``end``/``flush`` are kept too
            return func.id in self._sleep_names
        return (
            isinstance(func, ast.Attribute)
            and func.attr == "sleep"
            and isinstance(func.value, ast.Name)
            and func.value.id in self._wait_modules
        )

    def not_run(self, code: str) -> None:
        """A step that is not run again for another reason (it failed, or was cancelled)."""
        tree, _ = _parse(code)
        if tree is not None:
            self.missing |= _bound_names(tree)

    def _reaches_plugin(self, tree: ast.Module) -> Skip | None:
        named = sorted(self.plugins & _identifiers(tree)) or sorted(p for p in self.plugins if _in_literals(tree, p))
        if named:
            return Skip(SkipKind.PLUGIN, tuple(named))
        dynamic = sorted(set(_dynamic_uses(tree, self._sys_names)))
        if dynamic:
            return Skip(SkipKind.DYNAMIC, tuple(dynamic))
        return None

    def _uses_missing(self, tree: ast.Module) -> Skip | None:
        used: set[str] = set()
        for statement in tree.body:
            used |= _loaded_names(statement) & self.missing
            self.missing -= _bound_names(ast.Module(body=[statement], type_ignores=[]))
        if used:  # ``check`` marks everything the step binds as missing again
            return Skip(SkipKind.FROM_SKIPPED, tuple(sorted(used)))
        return None


def bound_names(code: str) -> set[str]:
    """The module-level names ``code`` binds (none when it cannot be read)."""
    tree, _ = _parse(code)
    return _bound_names(tree) if tree is not None else set()


def _parse(code: str) -> tuple[ast.Module | None, bool]:
    """The code as Python, and whether it was plain Python; IPython lines (``%magic``,
    ``!shell``) are read as the kernel would run them, to learn what they bind."""
    try:
        return ast.parse(code), True
    except (SyntaxError, ValueError):
        pass
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return ast.parse(TransformerManager().transform_cell(code)), False
    except Exception:
        return None, False


def _identifiers(tree: ast.AST) -> set[str]:
    """Every name, attribute and imported name the code mentions."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.update(node.name.split("."))
            if node.asname:
                found.add(node.asname)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.update(node.module.split("."))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            found.add(node.arg)
    return found


def _in_literals(tree: ast.AST, name: str) -> bool:
    """Whether a string or bytes literal holds ``name`` as a word (``_`` and ``.`` count as breaks,
    so ``'_weaver_plugin_send_mail'`` and ``'@send_mail(1)'`` hold ``send_mail``)."""
    word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            value = node.value
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if isinstance(text, str) and word.search(text):
                return True
    return False


def _is_text(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _dynamic_uses(tree: ast.AST, sys_names: set[str]) -> Iterator[str]:
    """What in the code looks names up at run time, each as the code spells it."""
    literal_getattr = {  # ``getattr(x, "name")``: its own Name node is fine
        id(node.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2
        if _is_text(node.args[1])
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in DYNAMIC_NAMES:
                yield node.id
            elif node.id == "getattr" and id(node) not in literal_getattr:
                yield "getattr with a computed name"
        elif isinstance(node, ast.Attribute):
            yield from _dynamic_attribute(node, sys_names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in EXPRESSION_METHODS:
                first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "expr"), None)
                if first is not None and not _is_text(first):
                    yield f".{node.func.attr} with a computed expression"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from _blocked_imports(node)


def _dynamic_attribute(node: ast.Attribute, sys_names: set[str]) -> Iterator[str]:
    attr = node.attr
    dunder = attr.startswith("__") and attr.endswith("__")
    if attr in DYNAMIC_ATTRIBUTES or (dunder and attr not in HARMLESS_DUNDERS):
        yield attr
    elif attr in SYS_LOOKUPS and (
        (isinstance(node.value, ast.Name) and node.value.id in sys_names)
        or (isinstance(node.value, ast.Attribute) and node.value.attr == "sys")  # os.sys.modules
    ):
        yield f"sys.{attr}"


def _blocked_imports(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    for module in modules:
        top = module.split(".")[0]
        if top in BLOCKED_MODULES or top.startswith("_weaver"):
            yield f"import {module}"
    if isinstance(node, ast.ImportFrom) and node.module == "sys":
        for alias in node.names:
            if alias.name in SYS_LOOKUPS or alias.name == "*":
                yield f"sys.{alias.name}"


def _aliases_of(tree: ast.AST, module: str) -> set[str]:
    """The names ``import module as x`` binds in the code."""
    return {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == module and alias.asname
    }


_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


def _top_level(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of ``node`` that run in the module's scope (not inside functions, classes or
    comprehensions, whose names are their own), with the scope nodes themselves."""
    yield node
    if isinstance(node, _SCOPES):
        return
    for child in ast.iter_child_nodes(node):
        yield from _top_level(child)


def _bound_names(tree: ast.AST) -> set[str]:
    """The module-level names the code binds (or deletes)."""
    return {name for name, _ in _bindings(tree)}


def _bindings(tree: ast.AST) -> Iterator[tuple[str, str]]:
    """Each module-level binding (or deletion) in the code, as the name and its origin: for an
    import, the module it binds (``import time as t``: ``time``) or the module's name
    (``from time import sleep``: ``time.sleep``); otherwise ``""``."""
    for node in _top_level(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            yield node.id, ""
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name, ""
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield (alias.asname, alias.name) if alias.asname else (alias.name.split(".")[0], alias.name)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                origin = f"{node.module}.{alias.name}" if node.module and not node.level else ""
                yield alias.asname or alias.name, origin
        elif isinstance(node, ast.ExceptHandler) and node.name:
            yield node.name, ""
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            yield node.name, ""
        elif isinstance(node, ast.MatchMapping) and node.rest:
            yield node.rest, ""
    for node in ast.walk(tree):  # ``global x`` in a function binds the module's x when it runs
        if isinstance(node, ast.Global):
            for name in node.names:
                yield name, ""


def _loaded_names(tree: ast.AST) -> set[str]:
    """Every name the code reads, inside functions too (they run when called)."""
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def _drop_time_only(body: list[ast.stmt], only_time: Callable[[ast.stmt], bool]) -> int:
    """Replace, in place, the statements ``only_time`` picks by nothing (``pass`` where a block would
    be left empty), in this block and the ``if``/``with`` blocks nested in it; never in a loop (a
    wait there may pace it: ``while not ready(): sleep(1)``), a ``try`` or a function or class
    (their bodies run later, when called, and are kept as written); returns how many were dropped."""
    dropped = 0
    kept: list[ast.stmt] = []
    for statement in body:
        if only_time(statement):
            dropped += 1
            continue
        if isinstance(statement, ast.If):
            dropped += _drop_time_only(statement.body, only_time)
            if statement.orelse:
                dropped += _drop_time_only(statement.orelse, only_time)
        elif isinstance(statement, (ast.With, ast.AsyncWith)):
            dropped += _drop_time_only(statement.body, only_time)
        kept.append(statement)
    body[:] = kept or [ast.Pass()]
    return dropped


def _calls_nothing(node: ast.AST) -> bool:
    """No call, await, yield or assignment anywhere in the expression (reading it changes nothing
    the replay needs; a property is trusted to only read)."""
    return not any(
        isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr, ast.Lambda))
        for n in ast.walk(node)
    )
