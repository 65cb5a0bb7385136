"""Code verification before execution (``code_interpreter.code_verification_on``), as TaskWeaver has it.

The generated code is parsed and walked: an ``import`` of a module outside ``allowed_modules``, and
any use of a name in ``blocked_functions`` (a call, or the bare name handed on, ``f = eval``), is an
error; so are IPython magics and shell escapes (a plain ``!pip install``/``%pip install`` line
passes, as in TaskWeaver), reaching for interpreter internals through dunder attributes
(``().__class__.__subclasses__()``) or dunder keys (``d['__class__']``), calls through a subscript
(``d['f']()``) or of anything but a name, an attribute or a call, and the dynamic attribute functions
(``getattr``, ``vars``, ``globals``...) whatever ``blocked_functions`` says, as TaskWeaver's checker
(``taskweaver/code_interpreter/code_verification.py``) does. The model gets the errors and revises
its code.

This is a guard rail that keeps a well-meaning model inside the rules the app asked for; it is not a
sandbox. Python has too many ways around a static check (``importlib``, attributes of allowed
modules, ``pandas.read_pickle``...). What isolates users from each other and from the server is the
kernel's bubblewrap sandbox (``execution.sandbox``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence

# TaskWeaver's defaults (code_interpreter.allowed_modules / blocked_functions). Its current source
# also blocks the dynamic attribute functions; its docs list only the first nine.
DEFAULT_ALLOWED_MODULES: tuple[str, ...] = (
    "pandas",
    "matplotlib",
    "numpy",
    "sklearn",
    "scipy",
    "seaborn",
    "datetime",
    "typing",
)
DEFAULT_BLOCKED_FUNCTIONS: tuple[str, ...] = (
    "eval",
    "exec",
    "execfile",
    "compile",
    "open",
    "input",
    "raw_input",
    "reload",
    "__import__",
    "getattr",
    "setattr",
    "delattr",
    "vars",
    "globals",
    "locals",
    "__getattribute__",
    "__setattr__",
    "__delattr__",
)
# Blocked whatever ``blocked_functions`` says: they look attributes up by a computed name, which
# takes any check of names around (TaskWeaver's DANGEROUS_BUILTINS, its function names).
ALWAYS_BLOCKED = frozenset(
    {"getattr", "setattr", "delattr", "vars", "globals", "locals", "__getattribute__", "__setattr__", "__delattr__"}
)
# Attributes that lead from any object to the interpreter's internals; refused whatever the lists say.
INTERNAL_ATTRIBUTES = frozenset(
    {
        "__dict__",
        "__class__",
        "__bases__",
        "__base__",
        "__subclasses__",
        "__mro__",
        "__globals__",
        "__builtins__",
        "__code__",
        "__closure__",
        "__getattribute__",
        "__loader__",
        "__spec__",
        "__import__",
    }
)
_MAGIC = re.compile(r"^\s*(%|!)")
_CELL_MAGIC = re.compile(r"^\s*%%")
# A package install and nothing else: TaskWeaver lets these through (they run in the sandboxed
# kernel, where without execution.network they fail with pip's own message). No shell operators, so
# ``!pip install x; curl ...`` is still a shell command.
_INSTALL = re.compile(r"^\s*[!%]\s*(pip3?|conda|mamba)\s+install\s[^;&|`$<>()\n]*$")
MAGIC_ERROR = "Magic commands except package install are not allowed"


def verify_code(code: str, allowed_modules: Sequence[str] | None, blocked_functions: Iterable[str]) -> list[str]:
    """Every rule the code breaks, one sentence each with its line; an empty list when it passes.

    ``allowed_modules=None`` allows any import; an empty list allows none (TaskWeaver's reading).
    """
    errors: list[str] = []
    lines = code.splitlines()
    kept: list[str] = []
    magics: list[str] = []
    in_cell_magic = False  # a %%cell magic takes the rest of the cell
    for number, line in enumerate(lines, 1):
        if in_cell_magic or _CELL_MAGIC.match(line):
            in_cell_magic = True
            if line.strip():
                magics.append(f"line {number} `{line.strip()}`")
            kept.append("")  # keep the line numbers of the rest
        elif _INSTALL.match(line):
            kept.append("")
        elif _MAGIC.match(line):
            magics.append(f"line {number} `{line.strip()}`")
            kept.append("")
        else:
            kept.append(line)
    if magics:  # one error for them all, as TaskWeaver's checker gives
        errors.append(f"{MAGIC_ERROR} (IPython magics and shell commands): {', '.join(magics)}")
    try:
        tree = ast.parse("\n".join(kept))
    except SyntaxError as exc:
        return errors + [f"line {exc.lineno}: syntax error: {exc.msg}"]
    checker = _Checker(lines, allowed_modules, frozenset(blocked_functions) | ALWAYS_BLOCKED)
    checker.visit(tree)
    return errors + checker.errors


def describe_rules(allowed_modules: Sequence[str] | None, blocked_functions: Iterable[str]) -> str:
    """The rules in one paragraph, for the model's system prompt."""
    blocked = ", ".join(sorted(set(blocked_functions) | ALWAYS_BLOCKED))
    if allowed_modules is None:
        imports = "any module may be imported"
    elif allowed_modules:
        imports = "import only these modules (and their submodules): " + ", ".join(allowed_modules)
    else:
        imports = "do not import any module"
    return (
        "Code verification is on: your code is checked before it runs and refused if it breaks a rule. "
        f"Rules: {imports}; do not use these functions: {blocked}; no IPython magics or shell commands "
        "(a `!pip install` line alone is allowed); no dunder attributes such as __class__ or __dict__; "
        "call functions by name or attribute, not through a subscript such as d['f']()."
    )


class _Checker(ast.NodeVisitor):
    def __init__(self, lines: list[str], allowed: Sequence[str] | None, blocked: frozenset[str]) -> None:
        self.lines = lines
        self.allowed = None if allowed is None else frozenset(allowed)
        self.blocked = blocked
        self.errors: list[str] = []

    def _error(self, node: ast.AST, why: str) -> None:
        number = getattr(node, "lineno", 0)
        source = self.lines[number - 1].strip() if 0 < number <= len(self.lines) else ""
        self.errors.append(f"line {number}: `{source}`: {why}")

    def _check_module(self, node: ast.AST, module: str) -> None:
        top = module.split(".")[0]
        if self.allowed is not None and top not in self.allowed:
            self._error(node, f"importing module '{top}' is not allowed")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._check_module(node, node.module)
            if node.module == "builtins":
                for alias in node.names:
                    if alias.name in self.blocked or alias.name == "*":
                        self._error(node, f"function '{alias.name}' is not allowed")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        # Any use, not just a call: ``run = exec; run(...)`` is the same call.
        if node.id in self.blocked:
            self._error(node, f"function '{node.id}' is not allowed")
        elif node.id == "__builtins__":
            self._error(node, "'__builtins__' is not allowed")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in INTERNAL_ATTRIBUTES:
            self._error(node, f"attribute '{node.attr}' is not allowed")
        elif node.attr in self.blocked and isinstance(node.ctx, ast.Load):
            self._error(node, f"function '{node.attr}' is not allowed")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Subscript):
            self._error(node, "calling through a subscript (such as d['f']()) is not allowed")
        elif not isinstance(func, (ast.Name, ast.Attribute, ast.Call)):
            self._error(node, "only a function's name, an attribute or a call's result may be called")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            if key.value.startswith("__") or key.value in self.blocked:
                self._error(node, f"'{key.value}' is not allowed")
        self.generic_visit(node)


def code_snippet_verification(
    code_snippet: str,
    code_verification_on: bool = False,
    allowed_modules: Sequence[str] | None = None,
    blocked_functions: Iterable[str] | None = None,
) -> list[str] | None:
    """TaskWeaver's entry point, with the two lists its CodeInterpreter passes: None when
    verification is off, else the errors (``allowed_modules=None``: any import; ``blocked_functions=
    None``: only the always-blocked ones)."""
    if not code_verification_on:
        return None
    return verify_code(code_snippet, allowed_modules, blocked_functions or ())
