"""No import circles in core/ and ui/: a module that imports another which imports it back (even
from inside a function) starts half-initialised, and which name is missing then depends on who
was imported first. The graph is read from the source with ``ast``, so a circle fails here before
it fails at run time."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "ui")


def _modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its own name, not ``__init__``)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Imports at any depth (module, function, class) except those only a type checker runs."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _with_parents(name: str, modules: dict[str, Path]) -> set[str]:
    """``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: those are imported too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    """A package's names imported on first use (PEP 562): its ``_EXPORTS = {name: module}``."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    return {}


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules importing it runs, at run time."""
    modules = _modules()
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in modules.items()}
    lazy = {name: _lazy_exports(tree) for name, tree in trees.items()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _runtime_imports(trees[name]):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets |= _with_parents(alias.name, modules)
                continue
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets |= _with_parents(source, modules)
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                if f"{source}.{alias.name}" in modules:
                    targets.add(f"{source}.{alias.name}")
                elif alias.name in lazy.get(source, {}):  # ``from core import Session``
                    targets |= _with_parents(lazy[source][alias.name], modules)
        # A module's own packages are imported before it, never by it.
        graph[name] = targets - _with_parents(name, modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := walk(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_the_graph_sees_the_imports_it_must() -> None:
    graph = import_graph()
    # top-level, function-level and parent-package edges, and not a TYPE_CHECKING-only import
    assert "core.errors" in graph["core.session"]
    assert "core.roles.prompts.templates" in graph["core.config"]
    assert "core.roles.prompts" in graph["core.config"]  # the package runs before its module
    assert "core.execution.kernel_rpc" not in graph["core.execution.handle"]
    assert "core.events" in graph["ui.bridge"]  # through core's lazy exports


def test_a_planted_circle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_and_ui_have_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
