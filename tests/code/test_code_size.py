"""Size limits (issue 26): no class over 250 lines and no function over 80 anywhere in umi/, with no exceptions
list."""

from __future__ import annotations

import ast
from pathlib import Path

import umi

UMI = Path(umi.__file__).resolve().parent
CHECKED = (UMI,)
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 80


def oversized(source: str) -> list[str]:
    """'<line> <kind> <name> (<n> lines)' for each class or function (methods and nested ones included) over its
    limit; a definition counts from its first decorator to its last line, docstring and comments included."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            kind, limit = "class", MAX_CLASS_LINES
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kind, limit = "function", MAX_FUNCTION_LINES
        else:
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        lines = node.end_lineno - start + 1
        if lines > limit:
            out.append(f"{start} {kind} {node.name} ({lines} lines)")
    return out


def test_no_class_or_function_is_over_its_limit():
    found = [
        f"{path.relative_to(UMI.parent)}:{o}"
        for root in CHECKED
        for path in sorted(root.rglob("*.py"))
        for o in oversized(path.read_text(encoding="utf-8"))
    ]
    assert not found, "over the size limits:\n" + "\n".join(found)


def test_the_check_counts_methods_nested_functions_and_decorators():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    short = f"def fits():\n{body}"  # 80 lines: at the limit
    long = f"@decorated\ndef long():\n{body}    return 0\n"  # 82 lines with its decorator
    method = "class C:\n    def method(self):\n" + body.replace("    ", "        ") + "        return 0\n"
    assert oversized(short) == []
    assert oversized(long) == ["1 function long (82 lines)"]
    assert oversized(method) == ["2 function method (81 lines)"]
    huge = "class Big:\n" + "".join(f"    def f{i}(self):\n        return {i}\n" for i in range(125))
    assert oversized(huge) == ["1 class Big (251 lines)"]
