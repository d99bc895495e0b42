"""The compute-matched single-LLM control: the global stage's settings with the three local stages' budget."""

from __future__ import annotations

from umi.train.config import dataset_role, load_config
from umi.vocabulary import CONTROL_STAGE, LOCAL_STAGES


def test_control_gets_the_local_stages_token_budget_on_the_global_data():
    config = load_config("cpu")
    control = config.stage_settings(CONTROL_STAGE)
    local = [config.stages[s] for s in LOCAL_STAGES]
    glob = config.stages["global"]
    if all(s.max_tokens for s in local):
        assert control.max_tokens == sum(s.max_tokens for s in local)
    else:
        assert control.max_examples == sum(s.max_examples for s in local)
    assert control.learning_rate == glob.learning_rate and control.warmup_ratio == glob.warmup_ratio
    assert dataset_role(CONTROL_STAGE) == "global" and dataset_role("caller") == "caller"
    assert config.stage_settings("planner") == config.stages["planner"]


def test_control_of_a_step_budgeted_profile_sums_the_steps():
    config = load_config("tiny")
    assert config.stage_settings(CONTROL_STAGE).max_steps == sum(config.stages[s].max_steps for s in LOCAL_STAGES)


def test_control_of_an_epoch_profile_runs_the_local_epochs():
    config = load_config("paper")
    control = config.stage_settings(CONTROL_STAGE)
    assert control.epochs == max(config.stages[s].epochs for s in LOCAL_STAGES)
    assert control.learning_rate == config.stages["global"].learning_rate
