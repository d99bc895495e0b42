"""A GLPFT run carried out in pieces (tiny profile): stopped between two stages, then in the middle of one, the same
command started again ends with the weights of a run that was never stopped, stage by stage through the
compute-matched control; `umi train status` says where it stands in between."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_stages import Interrupt, _weights
from transformers import TrainerCallback
from typer.testing import CliRunner

from umi.data.versions import dataset_versions
from umi.train.config import load_config
from umi.train.progress import LOG_FILE, PROGRESS_FILE, run_status
from umi.train.stages import train_glpft
from umi.vocabulary import TRAINABLE_STAGES


class StopBeforeFirstStep(TrainerCallback):
    """Dies as the stage begins, before its first step: the run stops between the previous stage and this one."""

    def on_train_begin(self, args, state, control, **kwargs):
        raise KeyboardInterrupt("stopped between stages")


def _tiny():
    config = load_config("tiny")
    for s in config.stages.values():
        s.max_steps = 3
    return config


def test_a_run_stopped_between_and_within_stages_continues_to_the_same_weights(
    tiny_backbone, role_datasets, tmp_path, mlflow_store
):
    config = _tiny()
    profile = tmp_path / "tiny3.yaml"
    profile.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML: the command reads the same profile
    straight = train_glpft(
        config, role_datasets, tmp_path / "straight", tiny_backbone, stages=TRAINABLE_STAGES, tracking=False
    )
    runs = tmp_path / "pieces"
    versions = dataset_versions(role_datasets)  # as the command passes them: part of each stage's fingerprint

    def run(callbacks):
        stages = TRAINABLE_STAGES
        train_glpft(
            config, role_datasets, runs, tiny_backbone, stages=stages, data_version=versions, callbacks=callbacks
        )

    with pytest.raises(KeyboardInterrupt):  # global done, planner not begun
        run({"planner": [StopBeforeFirstStep()]})
    status = {r["stage"]: r for r in run_status(runs, TRAINABLE_STAGES)["stages"]}
    assert status["global"]["state"] == "done" and status["global"]["step"] == 3
    assert status["caller"]["state"] == "not started"

    with pytest.raises(KeyboardInterrupt):  # planner done, caller stopped after its step 1 checkpoint
        run({"caller": [Interrupt(at=1)]})
    status = {r["stage"]: r for r in run_status(runs, TRAINABLE_STAGES)["stages"]}
    assert status["planner"]["state"] == "done"
    caller = status["caller"]
    assert (caller["state"], caller["step"], caller["max_steps"], caller["examples_seen"]) == ("training", 1, 3, 4)
    assert caller["elapsed_s"] > 0 and caller["left_s"] is not None

    # the same command again: `umi train all` on the same folders, which also trains the control
    from umi.cli.main import app

    args = ["train", "all", "--profile", str(profile), "--datasets", str(role_datasets), "--runs", str(runs)]
    result = CliRunner().invoke(app, [*args, "--backbone", str(tiny_backbone)])
    assert result.exit_code == 0, result.output
    for stage in TRAINABLE_STAGES:
        a, b = _weights(straight[stage].checkpoint), _weights(runs / stage / "model")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage

    log = (runs / "caller" / LOG_FILE).read_text()
    assert "started: 3 steps" in log and "resumed at step 1" in log and "step 3/3 (100.0%)" in log
    done = json.loads((runs / "caller" / PROGRESS_FILE).read_text())
    assert done["state"] == "trained" and done["examples_seen"] == done["examples_total"] == 12

    status = CliRunner().invoke(app, ["train", "status", "--profile", str(profile), "--runs", str(runs)])
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    assert [line.split()[:2] for line in lines[1:6]] == [[s, "done"] for s in TRAINABLE_STAGES]
    assert lines[-1].startswith("spent ") and "left 0:00:00" in lines[-1]


def test_the_control_under_epochs_runs_over_the_tokens_the_local_stages_run_over(
    tiny_backbone, role_datasets, tmp_path
):
    from umi.train.stages import CONTROL_BUDGET_FILE, control_settings
    from umi.vocabulary import CONTROL_STAGE, LOCAL_STAGES

    config = load_config("tiny")
    for s in config.stages.values():  # an epoch each, as the bench profile trains
        s.max_steps = None
    assert config.control_by_epochs()
    results = train_glpft(config, role_datasets, tmp_path, tiny_backbone, stages=TRAINABLE_STAGES, tracking=False)
    local = sum(results[s].metrics["tokens_trained"] for s in LOCAL_STAGES)
    control = results[CONTROL_STAGE].metrics
    # the same compute within one optimiser step of the control (its epochs are fractional; steps are whole)
    per_step = results["global"].metrics["tokens_trained"] / results["global"].metrics["global_step"]
    assert abs(control["tokens_trained"] - local) <= per_step
    assert control["global_step"] > results["global"].metrics["global_step"]  # the locals hold more than global
    budget = json.loads((tmp_path / CONTROL_STAGE / CONTROL_BUDGET_FILE).read_text())
    assert budget["epochs"] == pytest.approx(budget["local_tokens"] / budget["tokens_per_epoch"][CONTROL_STAGE])
    again = control_settings(config, role_datasets, tiny_backbone, tmp_path / CONTROL_STAGE)  # from the file
    assert again.epochs == budget["epochs"]


def test_a_damaged_progress_file_is_shown_as_unknown_not_fatal(tmp_path):
    from umi.train.progress import format_status, stage_status

    (tmp_path / "global").mkdir()
    (tmp_path / "global" / PROGRESS_FILE).write_text('{"step": 3, "max_st')  # damaged by a disk or a hand
    assert stage_status(tmp_path / "global", "global").state == "not started"  # no state file: nothing trained
    (tmp_path / "global" / "stage_state.json").write_text('{"fingerprint": "x", "complete": false}')
    row = stage_status(tmp_path / "global", "global")
    assert (row.state, row.step, row.left_s) == ("training", None, None)
    text = format_status(run_status(tmp_path, ("global", "planner")))
    assert text.splitlines()[1].split()[:3] == ["global", "training", "-"] and "left -" in text
