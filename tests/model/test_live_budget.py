"""Live entries passable at the real budget (issue 25, item 2): with SmolLM2's own tokenizer and the evaluation's
default budget (the length `make run` trains with, raised where a prompt's tool docs alone overflow it), every
held-out multi-turn entry's gold path (BFCL's gold calls played turn after turn through the prompt builder) fits,
for the α-UMi roles and the single LLM alike. Without the raise some do not: the check is not vacuous."""

from __future__ import annotations

import pytest

from umi.data.bfcl import DEFAULT_CATEGORIES, import_bfcl
from umi.data.params import dataset_doc_style, split_fractions
from umi.data.splits import split_of
from umi.eval.budget import docs_budget, gold_path_misfits
from umi.eval.settings import EvalSettings
from umi.schema import Trajectory
from umi.train.config import load_config

AGENT_ROLES = {"alpha-umi": ("planner", "caller", "summarizer"), "single-llm": ("global",)}


@pytest.fixture(scope="module")
def bfcl_test() -> list[Trajectory]:
    """The BFCL test split as `make run` evaluates it (params.yaml's fractions, groups across categories)."""
    fractions = split_fractions("params.yaml")
    imported = [t for t in import_bfcl(DEFAULT_CATEGORIES) if isinstance(t, Trajectory)]
    return [t for t in imported if split_of(t.split_key, fractions) == "test"]


@pytest.mark.slow
def test_every_held_out_live_entry_fits_the_evaluation_budget(smollm2_backbone, bfcl_test):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_backbone))
    doc_style = dataset_doc_style("params.yaml")
    settings = EvalSettings()
    budget = load_config("cpu").max_length  # what the evaluated models were trained with (max_prompt_tokens None)
    entries = [t for t in bfcl_test if t.meta.get("category") == "multi_turn_base"]
    assert len(entries) == 71
    for agent, roles in AGENT_ROLES.items():
        needed = docs_budget(tokenizer, bfcl_test, doc_style, roles)
        raised = needed + settings.raised_history_tokens if needed > budget else None
        assert gold_path_misfits(tokenizer, entries, doc_style, roles, budget, raised) == {}, agent
        without_raise = gold_path_misfits(tokenizer, entries, doc_style, roles, budget, None)
        assert raised is not None and len(without_raise) >= 1, agent  # at the training length alone some cannot
