"""Training profiles: the paper's numbers exactly, strict validation, and how a profile becomes Trainer arguments."""

from __future__ import annotations

import pydantic
import pytest

from umi.train.config import available_profiles, load_config
from umi.train.engine import training_arguments, training_precision, use_gradient_checkpointing
from umi.vocabulary import CONTROL_STAGE


def test_profiles_exist():
    assert {"paper", "cpu", "tiny"} <= set(available_profiles())
    for name in ("paper", "cpu", "tiny"):
        assert load_config(name).profile == name


def test_paper_profile_is_the_papers_recipe():
    c = load_config("paper")
    assert (c.max_length, c.global_batch_size, c.lr_scheduler) == (4096, 48, "cosine")
    s = c.stages
    assert (s["global"].learning_rate, s["global"].epochs, s["global"].warmup_ratio) == (5e-5, 2, 0.4)
    assert (s["planner"].learning_rate, s["planner"].epochs, s["planner"].warmup_ratio) == (1e-5, 1, 0.2)
    assert (s["caller"].learning_rate, s["caller"].epochs, s["caller"].warmup_ratio) == (1e-5, 1, 0.2)
    assert (s["summarizer"].learning_rate, s["summarizer"].epochs, s["summarizer"].warmup_ratio) == (1e-5, 2, 0.4)
    assert all(s[k].weight_decay == 0.01 for k in ("planner", "caller", "summarizer"))
    assert all(st.max_examples is None and st.max_tokens is None and st.max_steps is None for st in s.values())
    assert c.deepspeed == "zero3" and c.lora is None
    assert (c.precision, c.gradient_checkpointing) == ("auto", "auto")
    # 48 = 6 per device x 8 devices; fewer devices accumulate gradients instead
    assert [c.gradient_accumulation(n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ValueError, match="cannot be split"):
        c.gradient_accumulation(3)


def test_profiles_are_validated_strictly(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="learning_rat"):
        load_config("tiny", stages={"global": {"learning_rat": 1e-4, "epochs": 1, "warmup_ratio": 0}})
    with pytest.raises(pydantic.ValidationError, match="missing"):
        load_config("tiny", stages={"global": {"learning_rate": 1e-4, "epochs": 1, "warmup_ratio": 0}})
    with pytest.raises(pydantic.ValidationError, match="LoRA with DeepSpeed"):
        load_config("paper", lora={"r": 8, "alpha": 16})
    with pytest.raises(pydantic.ValidationError, match="multiple"):
        load_config("paper", per_device_batch_size=5)
    with pytest.raises(FileNotFoundError, match="known"):
        load_config("no-such-profile")
    with pytest.raises(FileNotFoundError):
        load_config("tiny", deepspeed="no-such-file").deepspeed_path()


def test_stage_settings_become_trainer_arguments(tmp_path):
    c = load_config("paper", deepspeed=None)  # DeepSpeed args would register a global ZeRO-3 hook in this process
    args = training_arguments(c, c.stages["planner"], tmp_path)
    assert args.learning_rate == 1e-5 and args.num_train_epochs == 1 and args.weight_decay == 0.01
    assert args.lr_scheduler_type == "cosine"  # a str enum
    assert args.get_warmup_steps(100) == 20  # warmup ratio 0.2 of the steps
    # packed (the default): a train row is a whole micro-batch of 6 examples; evaluation stays per-step
    assert args.per_device_train_batch_size == 1 and args.per_device_eval_batch_size == 1  # dev loss: per example
    assert args.gradient_accumulation_steps == 8
    per_step = training_arguments(load_config("paper", deepspeed=None, packing=False), c.stages["planner"], tmp_path)
    assert per_step.per_device_train_batch_size == 6 and per_step.gradient_accumulation_steps == 8
    assert args.train_sampling_strategy == "group_by_length" and args.length_column_name == "length"
    assert args.report_to in ([], None, "none", ["none"])
    assert load_config("paper", deepspeed=None).stages["global"].warmup_ratio == 0.4
    global_args = training_arguments(c, c.stages["global"], tmp_path)
    assert global_args.get_warmup_steps(100) == 40 and global_args.num_train_epochs == 2


def test_packing_is_on_by_default_and_one_switch_per_profile():
    from umi.train.config import TrainConfig

    assert TrainConfig.model_fields["packing"].default is True
    for name in available_profiles():
        c = load_config(name)
        assert c.packing, name
        assert c.pack_budget() >= c.max_length, name
        assert load_config(name, packing=not c.packing).packing != c.packing
    bench = load_config("bench")
    assert all(s.max_tokens is None and s.max_examples is None and s.epochs == 1 for s in bench.stages.values())
    assert load_config("tiny").pack_budget() == 2 * 256  # default: per_device_batch_size x max_length
    with pytest.raises(pydantic.ValidationError, match="pack_length"):
        load_config("tiny", pack_length=100)


def test_a_stage_may_keep_its_own_batch(tmp_path):
    c = load_config("cpu", deepspeed=None)
    planner, summarizer = c.for_stage("planner"), c.for_stage("summarizer")
    assert (planner.per_device_batch_size, planner.global_batch_size) == (8, 8)
    assert (summarizer.per_device_batch_size, summarizer.global_batch_size, summarizer.pack_budget()) == (1, 4, 1024)
    assert summarizer.for_stage("summarizer") == summarizer  # idempotent: the fingerprint hashes this
    args = training_arguments(summarizer, summarizer.stages["summarizer"], tmp_path)
    assert args.per_device_train_batch_size == 1 and args.gradient_accumulation_steps == 4
    assert c.for_stage(CONTROL_STAGE).global_batch_size == 8  # the control trains as the global stage does
    stages = {name: s.model_dump() for name, s in c.stages.items()}
    stages["caller"].update(packing=False)
    assert not load_config("cpu", stages=stages).for_stage("caller").packing
    assert load_config("cpu", stages=stages).for_stage("planner").packing
    stages["caller"].update(per_device_batch_size=3)
    with pytest.raises(pydantic.ValidationError, match="stage caller: global_batch_size 8 is not a multiple"):
        load_config("cpu", stages=stages)


def test_precision_policy_without_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import umi.inference.devices

    monkeypatch.setattr(umi.inference.devices, "cpu_has_native_bf16", lambda: False)
    paper = load_config("paper")
    assert training_precision(paper) == "fp32" and not use_gradient_checkpointing(paper)  # auto: only where a GPU is
    forced = load_config("paper", precision="bf16", gradient_checkpointing="on")
    assert training_precision(forced) == "bf16" and use_gradient_checkpointing(forced)


def test_with_epochs_sets_every_stage_to_one_budget():
    """A learning curve's point: the profile's recipe with every stage trained for the same fraction of an epoch."""
    config = load_config("cpu")
    assert any(s.max_steps or s.max_examples or s.max_tokens for s in config.stages.values())  # budgets to replace
    eighth = config.with_epochs(0.125)
    for name, s in eighth.stages.items():
        assert (s.epochs, s.max_steps, s.max_examples, s.max_tokens) == (0.125, None, None, None), name
        assert s.learning_rate == config.stages[name].learning_rate  # the recipe otherwise unchanged
    assert eighth.control_by_epochs() and eighth.max_length == config.max_length
    assert config.stages["global"].max_tokens == 40000  # the profile itself untouched
    with pytest.raises(pydantic.ValidationError):
        config.with_epochs(0)
