"""The package layout the code relies on: flows/ holds flows and tasks (and a little glue) only, and imports point
down: nothing in umi/ imports flows/. Read from the source with ast, nothing is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOWS_MAX_LINES = 450  # issue 11: flows only orchestrate; the library logic lives in umi/
GLUE_MAX_LINES = 20  # a plain function in flows/ (no @flow / @task): a few lines that join tasks, no more


def _imported_modules(tree: ast.AST) -> set[str]:
    """Every module an import names, function-level imports included."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _decorator_names(node: ast.FunctionDef) -> set[str]:
    names = set()
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        names.add(target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", ""))
    return names


def test_nothing_in_umi_imports_flows():
    offenders = {}
    for path in sorted((ROOT / "umi").rglob("*.py")):
        imports = _imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        upward = sorted(m for m in imports if m == "flows" or m.startswith("flows."))
        if upward:
            offenders[str(path.relative_to(ROOT))] = upward
    assert offenders == {}, f"umi/ must not import flows/ (imports point down): {offenders}"


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    return {
        id(n.body[0].value)
        for n in nodes
        if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }


def shared_paths(source: str) -> list[str]:
    """String constants (docstrings aside) that name a path into the shared fixtures beside the checkout."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and id(n) not in docs
        and re.match(r"^(\.\./)?shared(/|$)", n.value)
    ]


def test_no_default_in_umi_points_into_the_shared_fixtures():
    """The fixtures beside the checkout (../shared) are test support (tests/support/fixtures.py): umi/ never names
    them in code; the evaluation reads the ToolBench set from the UMI_FIXTURES setting."""
    found = {
        str(path.relative_to(ROOT)): hits
        for path in sorted((ROOT / "umi").rglob("*.py"))
        if (hits := shared_paths(path.read_text(encoding="utf-8")))
    }
    assert found == {}, f"production code names the shared fixtures: {found}"
    assert shared_paths('"""../shared/fixtures"""\nX = Path(a).parents[2] / "shared" / "fixtures"\n') == ["shared"]
    assert shared_paths('X = "../shared/fixtures/alpha-umi"\nY = "the shared fixtures"\n') == [
        "../shared/fixtures/alpha-umi"
    ]


def test_flows_hold_flows_tasks_and_a_little_glue_only():
    files = sorted((ROOT / "flows").glob("*.py"))
    lines = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in files}
    assert sum(lines.values()) < FLOWS_MAX_LINES, f"flows/ has {sum(lines.values())} lines: {lines}"
    too_long = {}
    for path in files:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                too_long[f"{path.name}:{node.name}"] = "a class (library code belongs in umi/)"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > GLUE_MAX_LINES and not {"flow", "task"} & _decorator_names(node):
                    too_long[f"{path.name}:{node.name}"] = f"{length} lines of glue"
    assert too_long == {}, f"flows/ should only orchestrate; move these into umi/: {too_long}"


def test_the_checks_see_what_they_look_for(tmp_path):
    """The import scan finds function-level and dotted imports (an upward import hidden in a function counts)."""
    tree = ast.parse("def f():\n    from flows.tasks import train\n    import flows.glpft_pipeline\n")
    assert _imported_modules(tree) == {"flows.tasks", "flows.glpft_pipeline"}
    node = ast.parse("@task(retries=1)\ndef a(): pass\n@flow\ndef b(): pass\ndef c(): pass\n").body
    assert [_decorator_names(n) for n in node] == [{"task"}, {"flow"}, set()]
