"""The check that makes a cell plugin calls only: what TaskWeaver's plugin-only role allows
(its function calls made into ``r = plugin(**args)`` lines and a last line naming the results)."""

from __future__ import annotations

import ast


def plugin_call_problems(code: str, plugins: set[str]) -> list[str]:
    """What in ``code`` is not a plugin call (empty: the code may run). Allowed statements:
    ``name = plugin(...)``, ``plugin(...)`` and a last line of earlier results' names; arguments are
    literals or earlier results."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"line {exc.lineno}: not valid Python ({exc.msg})"]
    results: set[str] = set()
    problems: list[str] = []
    for statement in tree.body:
        where = f"line {statement.lineno}"
        call: ast.expr | None = None
        target: str | None = None
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            if isinstance(statement.targets[0], ast.Name):
                target, call = statement.targets[0].id, statement.value
        elif isinstance(statement, ast.Expr):
            if _names_of(statement.value, results):
                continue  # the results returned at the end
            call = statement.value
        if not isinstance(call, ast.Call):
            problems.append(f"{where}: {ast.unparse(statement)[:80]!r} is not a plugin call")
            continue
        if not (isinstance(call.func, ast.Name) and call.func.id in plugins):
            problems.append(f"{where}: {ast.unparse(call.func)[:60]!r} is not a plugin of this app")
            continue
        for value in [*call.args, *(k.value for k in call.keywords)]:
            if not (_is_literal(value) or (isinstance(value, ast.Name) and value.id in results)):
                problems.append(f"{where}: argument {ast.unparse(value)[:60]!r} is neither a value nor a result")
        if target is not None:
            results.add(target)
    return problems


def _names_of(node: ast.expr, results: set[str]) -> bool:
    items = node.elts if isinstance(node, ast.Tuple) else [node]
    return bool(items) and all(isinstance(i, ast.Name) and i.id in results for i in items)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True
