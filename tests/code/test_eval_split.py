"""The split travels with the data (issue 25, item 8): the dataset layout records the split rule, a checkpoint
records the layout's, and evaluation refuses a params.yaml that would split the test set otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umi.data.reorganize import ReorganizeOptions, reorganize
from umi.data.splits import GROUP_RULE, MIN_TEST_SHARE, split_differences, split_rule
from umi.eval.agents import check_split
from umi.inference.agent_specs import AgentSpec
from umi.schema import Step, ToolSpec, Trajectory, write_trajectories
from umi.vocabulary import DATASET_LAYOUT, STAGE_MANIFEST


def _trajectory(k: int) -> Trajectory:
    steps = [
        Step(role="user", content=f"question {k}"),
        Step(role="assistant", content="done", decision="conclusion"),
        Step(role="conclusion", content="fine"),
    ]
    tools = [ToolSpec(name="f", description="f")]
    return Trajectory(id=f"t{k}", source="test", instruction=f"question {k}", tools=tools, steps=steps)


def test_the_layout_records_the_fractions_and_the_group_rule(tmp_path):
    write_trajectories(tmp_path / "in" / "t.jsonl", [_trajectory(k) for k in range(5)])
    fractions = {"train": 0.6, "dev": 0.2, "test": 0.2}
    reorganize(tmp_path / "in", tmp_path / "out", ReorganizeOptions(split_fractions=fractions))
    layout = json.loads((tmp_path / "out" / DATASET_LAYOUT).read_text())
    assert layout["split"]["fractions"] == fractions
    assert layout["split"]["min_test_share"] == MIN_TEST_SHARE and layout["split"]["group_rule"] == GROUP_RULE
    assert layout["split"] == split_rule(fractions)


def test_split_differences_name_what_changed():
    same = split_rule({"train": 0.8, "dev": 0.1, "test": 0.10000000000})
    assert split_differences(split_rule(None), same) == []
    other = split_rule({"train": 0.7, "dev": 0.1, "test": 0.2})
    assert [d.split()[0] for d in split_differences(split_rule(None), other)] == ["fractions"]
    regrouped = {**split_rule(None), "group_rule": "by id"}
    assert [d.split()[0] for d in split_differences(split_rule(None), regrouped)] == ["group_rule"]


def _checkpoint(path: Path, split: dict | None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / STAGE_MANIFEST).write_text(json.dumps({"stage": "global", "split": split}))
    return path


def test_a_checkpoint_trained_on_another_split_is_refused(tmp_path):
    trained = _checkpoint(tmp_path / "global", split_rule({"train": 0.8, "dev": 0.1, "test": 0.1}))
    spec = AgentSpec.single("single-llm", trained)
    check_split(spec, split_rule(None))  # the same split: fine
    with pytest.raises(ValueError, match="another split"):
        check_split(spec, split_rule({"train": 0.7, "dev": 0.1, "test": 0.2}))
    unrecorded = AgentSpec.single("old", _checkpoint(tmp_path / "old", None))
    check_split(unrecorded, split_rule({"train": 0.7, "dev": 0.1, "test": 0.2}))  # nothing recorded: not checked


def test_evaluate_refuses_a_params_yaml_that_splits_otherwise_before_it_runs(tmp_path):
    from umi.eval.run import EvalRun, evaluate

    trained = _checkpoint(tmp_path / "global", split_rule(None))
    params = tmp_path / "params.yaml"
    params.write_text("reorganize:\n  split_fractions: {train: 0.7, dev: 0.1, test: 0.2}\n")
    with pytest.raises(ValueError, match="another split than params.yaml gives now"):
        evaluate(
            [AgentSpec.single("single-llm", trained)],
            EvalRun(
                out_dir=tmp_path / "eval",
                live=False,
                toolbench_ood=None,
                data_dir=tmp_path / "no-data",
                params=params,
                tracking=False,
                progress=False,
            ),
        )
    assert not (tmp_path / "eval").exists()  # refused before anything was written
