"""params.yaml is read in one place (umi.data.params), with one set of defaults."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from umi.data import params
from umi.data.splits import DEFAULT_FRACTIONS
from umi.prompts import DEFAULT_DOC_STYLE

ROOT = Path(__file__).resolve().parents[2]


def test_sections_and_their_defaults(tmp_path):
    missing = tmp_path / "none.yaml"
    assert params.dataset_doc_style(missing) == DEFAULT_DOC_STYLE
    assert params.split_fractions(missing) == DEFAULT_FRACTIONS
    p = tmp_path / "params.yaml"
    p.write_text("reorganize:\n  doc_style: reference\n  split_fractions: {train: 0.5, dev: 0.25, test: 0.25}\n")
    assert params.dataset_doc_style(p) == "reference"
    assert params.split_fractions(p) == {"train": 0.5, "dev": 0.25, "test": 0.25}
    assert params.section("train", p) == {}
    p.write_text("reorganize:\n  doc_style: fancy\n")
    with pytest.raises(ValueError, match="doc_style"):
        params.dataset_doc_style(p)
    p.write_text("reorganize: [1, 2]\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        params.reorganize_params(p)


def test_the_repository_params_file_names_the_doc_style():
    assert params.dataset_doc_style(ROOT / "params.yaml") in ("reference", "compact")


def test_no_other_module_parses_params_yaml():
    """yaml is parsed outside umi/data/params.py only for other files (training configs, dvc.lock)."""
    allowed = {"umi/data/params.py", "umi/train/config.py", "umi/data/versions.py"}
    offenders = []
    for path in [*(ROOT / "umi").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute)
            and n.attr in ("safe_load", "load")
            and isinstance(n.value, ast.Name)
            and n.value.id == "yaml"
        ]
        if calls and rel not in allowed:
            offenders.append(rel)
    assert offenders == [], f"parse params.yaml through umi.data.params: {offenders}"
