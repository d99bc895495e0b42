"""No leakage through BFCL's twins: a question reused across categories (or a reworded question with the same gold
answer) is one group, hence one split; and no test-split question or multi-turn scenario reaches a training file of
the reorganised role datasets. Also: enough held-out multi-turn scenarios for the live check."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from umi import prompts
from umi.data.bfcl import DEFAULT_CATEGORIES, entry_groups, import_bfcl, normalise_question
from umi.data.importing import write_import
from umi.data.reorganize import ReorganizeOptions, read_examples, reorganize
from umi.data.splits import DEFAULT_FRACTIONS, MIN_TEST_SHARE, fractions_for, split_of
from umi.schema import Trajectory
from umi.tools.calls import standardize_string
from umi.vocabulary import ROLES

USER_TURN = re.compile(r"(?:^|\n)user: (.*?)" + re.escape(prompts.TURN_END), re.S)


@pytest.fixture(scope="module")
def trajectories() -> list[Trajectory]:
    out = list(import_bfcl(DEFAULT_CATEGORIES))
    assert all(isinstance(t, Trajectory) for t in out)
    return out


@pytest.fixture(scope="module")
def datasets(trajectories, tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    write_import(iter(trajectories), root / "data" / "bfcl.jsonl")
    reorganize(root / "data", root / "datasets", ReorganizeOptions(doc_style="compact"))
    return root / "datasets"


def _user_turns(t: Trajectory) -> list[str]:
    return [s.content for s in t.steps if s.role == "user"]


def test_known_twins_share_a_group():
    groups = entry_groups()
    # the same question in simple_python and multiple (twice), with slightly different possible answers
    assert (
        groups["simple_python", "simple_python_56"]
        == groups["multiple", "multiple_109"]
        == groups["multiple", "multiple_196"]
    )
    # a reworded question with the same gold call
    assert groups["simple_python", "simple_python_0"] == groups["simple_python", "simple_python_11"]
    # a question BFCL asks as irrelevant with one tool list and answerable with another
    assert groups["irrelevance", "irrelevance_228"] == groups["simple_python", "simple_python_377"]
    # two multi-turn scenarios that open with the same request; the group is named after the first
    assert (
        groups["multi_turn_base", "multi_turn_base_40"]
        == groups["multi_turn_base", "multi_turn_base_43"]
        == ("bfcl/multi_turn_base/multi_turn_base_40")
    )
    # an entry with no twin is its own group, named after its trajectory id
    assert groups["parallel", "parallel_0"] == "bfcl/parallel/parallel_0"


def test_normalisation():
    assert normalise_question("  What's the area,\n of a CIRCLE? ") == "what s the area of a circle"
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024") == "april12024"
    assert standardize_string("R vs. Adams's") == 'rvsadams"s'


def test_every_question_lands_in_one_split(trajectories):
    splits = defaultdict(set)
    for t in trajectories:
        assert t.group is not None
        for text in _user_turns(t):
            splits[normalise_question(text)].add(split_of(t.split_key))
    assert splits and all(len(s) == 1 for s in splits.values())


def test_min_test_share_takes_from_train():
    key = "bfcl/multi_turn_base/multi_turn_base_7"
    assert fractions_for(key) == pytest.approx({"train": 0.55, "dev": 0.1, "test": 0.35})
    assert fractions_for("bfcl/simple_python/simple_python_7") == DEFAULT_FRACTIONS
    assert fractions_for(key, {"train": 0.0, "dev": 0.0, "test": 1.0})["test"] == 1.0
    assert fractions_for(key, {"train": 0.1, "dev": 0.8, "test": 0.1}) == pytest.approx(
        {"train": 0.0, "dev": 0.65, "test": 0.35}
    )
    assert fractions_for(key, min_test_share={}) == DEFAULT_FRACTIONS
    assert MIN_TEST_SHARE["bfcl/multi_turn_base/"] == 0.35


def test_enough_held_out_multi_turn_scenarios(trajectories):
    held_out = [t for t in trajectories if t.meta["category"] == "multi_turn_base" and split_of(t.split_key) == "test"]
    assert len(held_out) >= 60  # 71 with the shipped data: a 95% interval of at most +-11.6 points


def test_no_test_question_or_scenario_reaches_a_training_file(trajectories, datasets):
    by_id = {t.id: t for t in trajectories}
    test_ids = {t.id for t in trajectories if split_of(t.split_key) == "test"}
    assert test_ids
    trained_on: set[str] = set()
    trained_turns: set[str] = set()  # every user turn of every training prompt, normalised
    for role in ROLES:
        for split in ("train", "dev"):
            for ex in read_examples(datasets / role / f"{split}.jsonl"):
                trained_on.add(ex["trajectory_id"])
                for turn in USER_TURN.findall(ex["prompt"]):
                    trained_turns.add(normalise_question(turn))
    assert trained_on and not trained_on & test_ids
    # by content, not only by id: no test question, and no user turn of a held-out scenario, is in any prompt
    assert len(trained_turns) > 1000
    test_questions = {normalise_question(q) for tid in test_ids for q in _user_turns(by_id[tid])}
    assert len(test_questions) > 100 and sorted(test_questions & trained_turns) == []
    scenarios = {json.dumps(by_id[tid].meta["gold_calls"]) for tid in test_ids if "gold_calls" in by_id[tid].meta}
    trained_scenarios = {
        json.dumps(by_id[tid].meta["gold_calls"]) for tid in trained_on if "gold_calls" in by_id[tid].meta
    }
    assert len(scenarios) >= 60 and not scenarios & trained_scenarios
