"""Imports point one way (issues 11 and 26): one table says, for every package and top-level module of umi/, which
others it may import, and one test walks every module's imports (read with ast, so an import inside a function
counts too) and fails on any other. No per-file exceptions: a new edge is a change to the table, made on purpose.

What the table says, in words: the foundation (schema, vocabulary, atomic, machine) imports nothing of umi and
everything may import it; the α-UMi text contract (prompts, then parsing) sits on it; tools read calls with parsing;
data imports tools; the inference runtime imports neither training, evaluation, the service nor the agent (the
serving image carries no training code); the agent runs on inference and tools, never on data or evaluation;
evaluation rolls agents out without importing them (the CLI and the flows hand it the builder); the service serves
the agent and never imports data, training or evaluation; the registry (the model lifecycle) imports neither
training nor evaluation; only the CLI joins everything, and nothing in umi imports the CLI, flows/ or tests/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import umi

UMI = Path(umi.__file__).resolve().parent

FOUNDATION = frozenset({"schema", "vocabulary", "atomic", "machine"})
# unit (a package or a top-level module of umi/) -> the other units it may import
LAYERS: dict[str, frozenset[str]] = {
    "schema": frozenset(),
    "vocabulary": frozenset(),
    "atomic": frozenset(),
    "machine": frozenset(),
    "prompts": FOUNDATION,
    "parsing": FOUNDATION | {"prompts"},
    "tools": FOUNDATION | {"prompts", "parsing"},
    "data": FOUNDATION | {"prompts", "parsing", "tools"},
    "inference": FOUNDATION | {"prompts"},
    "agent": FOUNDATION | {"prompts", "parsing", "tools", "inference"},
    "train": FOUNDATION | {"prompts", "inference"},
    "registry": FOUNDATION | {"prompts"},
    "eval": FOUNDATION | {"prompts", "parsing", "tools", "data", "inference", "registry"},
    "serve": FOUNDATION | {"prompts", "parsing", "tools", "inference", "agent", "registry"},
}
LAYERS["cli"] = frozenset(LAYERS)  # the command joins everything
NOT_UMI = ("flows", "tests", "benchmarks")  # first-party code outside the library: never imported by it


def _module_name(path: Path) -> str:
    parts = path.relative_to(UMI.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str | None:
    """The unit of umi a module belongs to (`umi.eval.run` -> eval, `umi.prompts` -> prompts); None for `umi`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _known_modules() -> set[str]:
    return {_module_name(p) for p in UMI.rglob("*.py")}


def imported_modules(source: str, package: str, modules: set[str]) -> set[str]:
    """The modules a file's import statements name, at any depth (function-level imports included): `import a.b` ->
    a.b; `from a import b` -> a, and a.b when that is a module; relative imports resolved against `package`."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)
    return out


def forbidden(importer: str, imported: str) -> bool:
    """Whether module `importer` (of umi) may not import `imported` by the table."""
    root = imported.split(".")[0]
    if root in NOT_UMI:
        return True
    if root != "umi":
        return False  # the standard library and third-party packages
    here, there = _unit(importer), _unit(imported)
    if there is None or here == there:
        return False  # the bare `umi` namespace, or a module of its own unit
    if here is None:
        return True  # umi/__init__.py imports nothing
    return there not in LAYERS.get(here, frozenset())


def violations() -> set[tuple[str, str]]:
    modules = _known_modules()
    found = set()
    for path in sorted(UMI.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        rel = path.relative_to(UMI.parent).as_posix()
        for imported in imported_modules(path.read_text(encoding="utf-8"), package, modules):
            if forbidden(name, imported):
                found.add((rel, imported))
    return found


def test_every_import_in_umi_is_one_the_table_allows():
    found = violations()
    assert not found, (
        "imports the layer table does not allow (change the code, or the table on purpose):\n"
        + "\n".join(f"  {rel} imports {imported}" for rel, imported in sorted(found))
    )


def test_the_table_covers_every_unit_of_umi_and_nothing_else():
    """A new package or top-level module joins the table (what it may import, and who may import it) when it is made."""
    units = {u for m in _known_modules() if (u := _unit(m)) is not None}
    assert units == set(LAYERS), (
        f"in umi/ but not in LAYERS: {sorted(units - set(LAYERS))}; gone: {sorted(set(LAYERS) - units)}"
    )
    assert all(allowed <= set(LAYERS) for allowed in LAYERS.values())


def test_the_table_points_one_way():
    """No cycle: the units can be ordered so that each imports only units before it."""
    done: list[str] = []
    left = dict(LAYERS)
    while left:
        ready = sorted(u for u, allowed in left.items() if allowed - {u} <= set(done))
        assert ready, f"a cycle among {sorted(left)}"
        done += ready
        for u in ready:
            del left[u]


def test_the_serving_runtime_carries_no_training_code_and_no_library_code_imports_the_command():
    """Stated on their own: the inference runtime is below training, evaluation, the service and the agent; the agent
    imports neither data nor evaluation; the service neither data, training nor evaluation; only the CLI imports cli."""
    assert not LAYERS["inference"] & {"train", "eval", "serve", "agent", "cli"}
    assert not LAYERS["agent"] & {"data", "eval", "train", "serve", "cli"}
    assert not LAYERS["serve"] & {"data", "train", "eval", "cli"}
    assert not LAYERS["registry"] & {"train", "eval", "cli"}
    assert [u for u, allowed in LAYERS.items() if "cli" in allowed] == []


def test_the_reader_finds_hidden_and_from_imports():
    source = (
        "import umi.tools.calls\n"
        "from umi import agent\n"
        "from . import stats\n"
        "def f():\n"
        "    from umi.agent.loop import AlphaUMiAgent\n"
    )
    modules = {"umi.agent", "umi.agent.loop", "umi.eval.stats", "umi.tools.calls"}
    got = imported_modules(source, "umi.eval", modules)
    assert {"umi.tools.calls", "umi.agent", "umi.agent.loop", "umi.eval.stats"} <= got
    assert "umi.agent.loop.AlphaUMiAgent" not in got  # a class, not a module


def test_the_rule_reads_units_and_first_party_code_outside_the_library():
    assert forbidden("umi.eval.run", "umi.agent.loop")  # evaluation never imports the agent
    assert not forbidden("umi.eval.run", "umi.eval.static")  # its own unit
    assert not forbidden("umi.eval.run", "umi.data.splits")
    assert not forbidden("umi.eval.run", "umi")  # `from umi import prompts` names the namespace too
    assert forbidden("umi.cli.run", "flows.glpft_pipeline") and forbidden("umi.eval.run", "tests.support.fixtures")
    assert forbidden("umi.agent.chat", "umi.cli.main")
    assert not forbidden("umi.cli.main", "umi.serve.bento_build")
    assert not forbidden("umi.serve.app", "fastapi")
