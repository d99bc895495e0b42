"""The prompt format travels with the checkpoint: read back from the stage manifest, roles that disagree refused."""

from __future__ import annotations

import json

import pytest

from umi import prompts


def checkpoint(path, doc_style: str | None, version: str = prompts.PROMPT_VERSION):
    path.mkdir(parents=True)
    if doc_style is not None:
        fmt = {**prompts.prompt_format(doc_style, 1024), "prompt_version": version}
        (path / "umi_stage.json").write_text(json.dumps({"stage": "planner", prompts.PROMPT_FORMAT_KEY: fmt}))
    return path


def test_the_checkpoints_format_wins_over_the_default(tmp_path):
    roles = {r: checkpoint(tmp_path / r, "reference") for r in ("planner", "caller", "summarizer")}
    fmt = prompts.agreed_prompt_format(roles, prompts.prompt_format("compact", None))
    assert fmt["doc_style"] == "reference" and fmt["observation_limit"] == 1024


def test_a_checkpoint_without_a_manifest_takes_the_default(tmp_path):
    backbone = checkpoint(tmp_path / "backbone", None)
    fmt = prompts.agreed_prompt_format({"planner": backbone}, prompts.prompt_format("compact", None))
    assert fmt["doc_style"] == "compact"


def test_roles_trained_with_different_styles_are_refused(tmp_path):
    roles = {"planner": checkpoint(tmp_path / "p", "reference"), "caller": checkpoint(tmp_path / "c", "compact")}
    with pytest.raises(ValueError, match="different prompt formats.*planner.*reference.*caller.*compact"):
        prompts.agreed_prompt_format(roles, prompts.prompt_format("compact", None))


def test_another_prompt_version_is_refused(tmp_path):
    roles = {"planner": checkpoint(tmp_path / "p", "compact", version="alpha-umi-0")}
    with pytest.raises(ValueError, match="prompt version 'alpha-umi-0'"):
        prompts.agreed_prompt_format(roles, prompts.prompt_format("compact", None))
