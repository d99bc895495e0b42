"""The planner's decision weighting (StageSettings.decision_weight): which tokens it weighs, the loss it gives, that
it trains the decision harder, and that at weight 1 nothing changes (the fingerprint included)."""

from __future__ import annotations

import pydantic
import pytest
import torch
from test_train_packing import write_multi_turn_datasets
from transformers import AutoModelForCausalLM, AutoTokenizer

from umi.prompts import planner_target
from umi.train.config import load_config
from umi.train.engine import (
    DecisionWeights,
    completion_loss,
    dev_decision_choices,
    encode_role_dataset,
    encode_role_dataset_packed,
)
from umi.train.packing import PackedCollator
from umi.train.stages import stage_fingerprint, train_stage
from umi.train.tokenize import IGNORE_INDEX, CompletionCollator, encode_example


def _planner_batch(tok, decisions):
    feats = []
    for i, d in enumerate(decisions):
        enc = encode_example(tok, f"user: task {i}</s>assistant: ", planner_target(f"think {i}", d), [0, 0], 256)
        feats.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return CompletionCollator(tok.pad_token_id)(feats)


def test_the_weights_mark_exactly_each_decision(tiny_backbone):
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    batch = _planner_batch(tok, ["caller", "conclusion", "give up"])
    weights = DecisionWeights(tok, 4.0)(batch["labels"][:, 1:])
    for row, d in enumerate(["caller", "conclusion", "give up"]):
        marked = (weights[row] == 4.0).nonzero().squeeze(-1).tolist()
        span = len(tok(planner_target("", d), add_special_tokens=False)["input_ids"])
        assert len(marked) == span and marked == list(range(marked[0], marked[0] + span))
        labels = batch["labels"][row, 1:]
        eos = (labels == tok.eos_token_id).nonzero().squeeze(-1).tolist()
        assert marked[-1] + 1 == eos[-1]  # the decision ends right before EOS, which keeps weight 1
        assert tok.decode(labels[marked]).strip() == planner_target("", d).strip()
    assert int((weights != 1.0).sum()) == sum(
        len(tok(planner_target("", d), add_special_tokens=False)["input_ids"])
        for d in ["caller", "conclusion", "give up"]
    )


def test_weighted_loss_is_the_weighted_token_sum_while_training_only(tiny_backbone):
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_backbone))
    batch = _planner_batch(tok, ["caller", "give up"])
    decision = DecisionWeights(tok, 3.0)
    model.train()
    with torch.no_grad():
        plain, _ = completion_loss(model, batch)
        weighted, _ = completion_loss(model, batch, token_weights=decision)
        unit, _ = completion_loss(model, batch, token_weights=DecisionWeights(tok, 1.0))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        expected = (ce * decision(labels)).sum() / (labels != IGNORE_INDEX).sum()
    assert torch.allclose(weighted, expected, atol=1e-5) and weighted > plain
    assert torch.allclose(unit, plain, atol=1e-6)
    model.eval()  # evaluation: the plain loss, comparable across weights
    with torch.no_grad():
        assert torch.allclose(completion_loss(model, batch, token_weights=decision)[0], plain, atol=1e-5)


def test_packed_rows_find_every_decision(tiny_backbone, tmp_path):
    """Tree-packed micro-batches (shared docs and history): each example's decision is marked once, the shared
    prefixes nowhere."""
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    path = write_multi_turn_datasets(tmp_path) / "planner" / "train.jsonl"
    packed = encode_role_dataset_packed(path, "planner", tok, 1024, examples_per_row=4, pack_length=4096)
    batch = PackedCollator(tok.pad_token_id)(list(packed.dataset))
    marked = DecisionWeights(tok, 2.0)(batch["labels"][:, 1:]) == 2.0
    starts = int(marked[:, 0].sum()) + int((marked[:, 1:] & ~marked[:, :-1]).sum())
    assert starts == len(packed.example_lengths) > 4  # several examples share each packed sequence
    assert not (marked & (batch["labels"][:, 1:] == IGNORE_INDEX)).any()


def test_decision_weight_is_the_planners_and_neutral_at_one(tiny_backbone, role_datasets, tmp_path):
    config = load_config("tiny")
    stages = config.model_dump()["stages"]
    stages["caller"]["decision_weight"] = 2.0
    with pytest.raises(pydantic.ValidationError, match="planner"):
        load_config("tiny", stages=stages)
    plain, src = stage_fingerprint("planner", config, role_datasets, tiny_backbone)
    assert all("decision_weight" not in s for s in src["config"]["stages"].values())  # runs on record stay resumable
    weighted_config = config.model_copy(deep=True)
    weighted_config.stages["planner"].decision_weight = 5.0
    weighted, _ = stage_fingerprint("planner", weighted_config, role_datasets, tiny_backbone)
    assert weighted != plain


def test_a_weighted_planner_learns_its_decisions_faster(tiny_backbone, role_datasets, tmp_path):
    """Same data, seed and steps: weight 8 leaves the decision tokens' loss lower than weight 1 does."""
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    enc = encode_role_dataset(role_datasets / "planner" / "train.jsonl", "planner", tok, 256)
    batch = CompletionCollator(tok.pad_token_id)(list(enc.dataset))
    decision = DecisionWeights(tok, 2.0)

    def decision_loss(model_dir) -> float:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        marked = decision(labels) == 2.0
        return float(ce[marked].mean())

    losses = {}
    for weight in (1.0, 8.0):
        config = load_config("tiny")
        config.stages["planner"].decision_weight = weight
        config.stages["planner"].max_steps = 6
        result = train_stage("planner", config, role_datasets, tmp_path / f"w{weight:g}", tiny_backbone, tracking=False)
        losses[weight] = decision_loss(result.checkpoint)
    assert losses[8.0] < losses[1.0] - 0.05, losses


def test_dev_decision_choices_score_the_gold_decision_against_the_other_two(tiny_backbone, role_datasets, tmp_path):
    """A planner trained hard on its decisions ranks the gold one first more often than the untrained one; every
    planner dev example is scored, each 0 or 1."""
    untrained = dev_decision_choices(tiny_backbone, role_datasets, 256, 64)
    assert len(untrained) == 4 and {c for _, c in untrained} <= {0.0, 1.0}
    config = load_config("tiny")
    config.stages["planner"].decision_weight = 8.0
    config.stages["planner"].max_steps = 8
    config.stages["planner"].learning_rate = 1e-2
    trained = train_stage("planner", config, role_datasets, tmp_path / "p", tiny_backbone, tracking=False)
    after = dev_decision_choices(trained.checkpoint, role_datasets, 256, 64)
    assert [t for t, _ in after] == [t for t, _ in untrained]  # the same examples, in the same order
    assert sum(c for _, c in after) == len(after) > sum(c for _, c in untrained)  # measured: 4 of 4, from 0 of 4
