"""params.yaml, the parameters of the DVC data stage (DVC tracks the file; `dvc.yaml`'s stages name the sections
they use; evaluation reads the split fractions and the doc style the datasets were built with): the one module that
reads it. A missing file or section means the defaults (umi.prompts.DEFAULT_DOC_STYLE,
umi.data.splits.DEFAULT_FRACTIONS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from umi.prompts import DEFAULT_DOC_STYLE, DocStyle

__all__ = ["PARAMS", "section", "reorganize_params", "dataset_doc_style", "split_fractions"]

PARAMS = Path("params.yaml")


def section(name: str, path: str | Path | None = PARAMS) -> dict[str, Any]:
    """One top-level section of params.yaml ({} when the file or the section is missing)."""
    if path is None or not Path(path).is_file():
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    found = data.get(name) or {}
    if not isinstance(found, dict):
        raise ValueError(f"{path}: section {name!r} must be a mapping, got {type(found).__name__}")
    return dict(found)


def reorganize_params(path: str | Path | None = PARAMS) -> dict[str, Any]:
    """The `reorganize` section: umi.data.reorganize.ReorganizeOptions fields (doc_style, observation_limit,
    max_reject_share, split_fractions)."""
    return section("reorganize", path)


def dataset_doc_style(path: str | Path | None = PARAMS) -> DocStyle:
    """The tool-doc style the role datasets are built with."""
    style = reorganize_params(path).get("doc_style") or DEFAULT_DOC_STYLE
    if style not in ("reference", "compact"):
        raise ValueError(f"{path}: reorganize.doc_style must be 'reference' or 'compact', got {style!r}")
    return style  # type: ignore[return-value]


def split_fractions(path: str | Path | None = PARAMS) -> dict[str, float]:
    """The train/dev/test shares the reorganisation splits by."""
    from umi.data.splits import DEFAULT_FRACTIONS

    fractions = reorganize_params(path).get("split_fractions")
    return dict(fractions) if fractions else dict(DEFAULT_FRACTIONS)
