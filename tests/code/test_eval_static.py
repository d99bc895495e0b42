"""Static evaluation's routing with oracle backends: a model that writes the gold output for each training prompt
must score perfectly (so the prompts the evaluation renders are the training prompts, for every role and both
formats); a planner that always gives up, or prompts that do not fit, score what the metrics say they should."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from tests.support.fixtures import TOOLBENCH_OOD_TEST
from umi.data.alpha_umi import import_alpha_umi
from umi.data.bfcl import import_category
from umi.data.reorganize import role_examples
from umi.eval.settings import EvalSettings
from umi.eval.static import run_static
from umi.inference.protocol import Generation, GenerationRequest
from umi.inference.tokens import TooLong
from umi.schema import Trajectory

PERFECT = {"plan_acc": 100.0, "act_em": 100.0, "hallu": 0.0, "arg_f1": 100.0, "rouge_l": 100.0}


@dataclass
class OracleBackend:
    """Answers each prompt with the training target for it; `fixed` overrides every answer; `too_long` prompts raise
    TooLong as a real backend's prompt fitting does."""

    targets: dict[str, str]
    fixed: str | None = None
    too_long: set[str] = field(default_factory=set)
    batches: list[int] = field(default_factory=list)

    def prompt_ids(self, request: GenerationRequest):
        if request.prompt in self.too_long:
            raise TooLong(request.record_id, 10_000, 100)
        return [1] * (len(request.prompt) // 4 + 1), 0

    def generate_batch(self, requests, batch_size: int = 8):
        assert len(requests) <= batch_size
        self.batches.append(len(requests))
        out = []
        for r in requests:
            assert r.prompt not in self.too_long
            text = self.fixed if self.fixed is not None else self.targets[r.prompt]
            out.append(Generation.of_text(text, prompt_tokens=1, new_tokens=3))
        return out

    def generate_many(self, requests, *, max_rows=None, done=None):
        """Static evaluation's continuous path (its default), answered `max_rows` at a time."""
        rows = max_rows or max(len(requests), 1)
        out = [
            g
            for start in range(0, len(requests), rows)
            for g in self.generate_batch(requests[start : start + rows], rows)
        ]
        for i, g in enumerate(out):
            if done is not None:
                done(i, g)
        return out


def oracle(trajectories, roles) -> OracleBackend:
    targets = {}
    for traj in trajectories:
        for role, example in role_examples(traj, "compact"):
            if role in roles:
                targets[example["prompt"]] = example["target"]
    return OracleBackend(targets)


@pytest.fixture(scope="module")
def bfcl() -> list[Trajectory]:
    out = []
    for category, n in (("simple_python", 3), ("parallel", 2), ("irrelevance", 2), ("multi_turn_base", 1)):
        out += [t for t in itertools.islice(import_category(category), n)]
    assert all(isinstance(t, Trajectory) for t in out)
    return out


def headline(result) -> dict:
    s = result.summary()
    return {k: s[k] for k in PERFECT}


def test_multi_oracle_is_perfect_and_batched(bfcl):
    backend = oracle(bfcl, {"planner", "caller", "summarizer"})
    result = run_static(
        {"planner": backend, "caller": backend, "summarizer": backend}, bfcl, settings=EvalSettings(batch_size=4)
    )
    assert headline(result) == PERFECT
    m = result.metrics
    assert m.steps == m.call_steps + m.finish_steps + m.give_up_steps and m.give_up_steps == 2
    assert result.generations == m.steps + m.call_steps + m.finish_steps  # planner every step, then caller / summarizer
    assert max(backend.batches) == 4 and sum(backend.batches) == result.generations
    assert len(result.records) == m.steps and result.too_long == 0


def test_single_oracle_is_perfect(bfcl):
    backend = oracle(bfcl, {"global"})
    result = run_static({"global": backend}, bfcl)
    assert headline(result) == PERFECT
    assert result.generations == result.metrics.steps


@pytest.mark.skipif(not TOOLBENCH_OOD_TEST.is_file(), reason="shared fixtures not present")
def test_multi_oracle_is_perfect_on_real_toolbench_steps():
    trajectories = [t for t in itertools.islice(import_alpha_umi(TOOLBENCH_OOD_TEST), 6) if isinstance(t, Trajectory)]
    backend = oracle(trajectories, {"planner", "caller", "summarizer"})
    result = run_static({r: backend for r in ("planner", "caller", "summarizer")}, trajectories)
    assert headline(result) == PERFECT and result.metrics.steps > 15


def test_planner_that_always_gives_up(bfcl):
    backend = OracleBackend({}, fixed="Nothing fits.\n Next: give up.")
    result = run_static({r: backend for r in ("planner", "caller", "summarizer")}, bfcl)
    m = result.metrics
    assert result.generations == m.steps  # neither caller nor summarizer ran
    assert m.plan_acc == pytest.approx(100 * m.give_up_steps / m.steps)
    assert (m.act_em, m.arg_f1, m.rouge_l, m.hallu) == (0.0, 0.0, 0.0, 0.0)


def test_planner_without_decision_goes_on_as_caller(bfcl):
    backend = OracleBackend({}, fixed="Action: not_a_tool\nAction Input: {}")
    result = run_static({r: backend for r in ("planner", "caller", "summarizer")}, bfcl)
    m = result.metrics
    assert m.plan_missing == m.steps and m.plan_acc == 0.0
    assert result.generations == 2 * m.steps  # every step went on to the caller
    assert m.hallu == 100.0 and m.hallucinated_steps == m.steps


def test_steps_whose_prompts_do_not_fit_are_not_prompted_and_not_scored(bfcl):
    """Not prompted is not wrong: the oracle stays perfect on the steps it was asked, the others are counted."""
    backend = oracle(bfcl, {"planner", "caller", "summarizer"})
    first = bfcl[0]
    planner_prompts = [ex["prompt"] for role, ex in role_examples(first, "compact") if role == "planner"]
    backend.too_long = set(planner_prompts)
    result = run_static({r: backend for r in ("planner", "caller", "summarizer")}, bfcl)
    assert result.too_long == len(planner_prompts)
    assert headline(result) == PERFECT and result.metrics.plan_missing == 0
    left_out = [r for r in result.records if not r["prompted"]]
    assert len(left_out) == len(planner_prompts) and all(r["score"] is None for r in left_out)
    assert {r["not_prompted_role"] for r in left_out} == {"planner"} and {r["trajectory_id"] for r in left_out} == {
        first.id
    }
    s = result.summary()
    assert s["steps"] == len(result.records) - len(planner_prompts)
    assert s["prompts"] == {
        "cut": 0,
        "not_fitting": len(planner_prompts),
        "steps_not_prompted": len(planner_prompts),
        "steps": len(result.records),
    }


def test_a_caller_prompt_that_does_not_fit_leaves_its_step_unprompted(bfcl):
    backend = oracle(bfcl, {"planner", "caller", "summarizer"})
    caller_prompts = [ex["prompt"] for t in bfcl for role, ex in role_examples(t, "compact") if role == "caller"]
    backend.too_long = {caller_prompts[0]}
    result = run_static({r: backend for r in ("planner", "caller", "summarizer")}, bfcl)
    (left_out,) = [r for r in result.records if not r["prompted"]]
    assert left_out["not_prompted_role"] == "caller" and left_out["call_source"] is None
    assert headline(result) == PERFECT


def test_alpha_umi_calls_are_split_by_why_the_caller_ran(bfcl):
    """A planner that writes no decision still sends the step to the caller (as the live loop does); the summary
    counts those calls, their exact actions and hallucinations apart from the ones the planner decided."""
    oracle_backend = oracle(bfcl, {"planner", "caller", "summarizer"})
    undecided = OracleBackend(oracle_backend.targets)
    first_planner = next(ex for t in bfcl for role, ex in role_examples(t, "compact") if role == "planner")
    undecided.targets = dict(oracle_backend.targets)
    gold = undecided.targets[first_planner["prompt"]]
    assert gold.endswith(" Next: caller.")
    undecided.targets[first_planner["prompt"]] = gold.removesuffix(" Next: caller.")  # the same thought, no decision
    result = run_static({r: undecided for r in ("planner", "caller", "summarizer")}, bfcl)
    sources = result.summary()["call_sources"]
    assert sources["caller after an undecided planner"] == {"calls": 1, "exact_actions": 1, "hallucinations": 0}
    decided = sources["planner decided caller"]
    assert decided["calls"] == decided["exact_actions"] == result.metrics.call_steps - 1
    assert run_static({"global": oracle(bfcl, {"global"})}, bfcl).summary()["call_sources"] is None


def test_backends_must_be_a_known_set(bfcl):
    with pytest.raises(ValueError, match="planner\\+caller\\+summarizer or global"):
        run_static({"planner": OracleBackend({})}, bfcl)


def test_oracle_is_perfect_bfcl_grade_too_and_per_item(bfcl):
    """The gold calls (first acceptable values) are acceptable to BFCL's rules; items and categories add up."""
    backend = oracle(bfcl, {"planner", "caller", "summarizer"})
    result = run_static({"planner": backend, "caller": backend, "summarizer": backend}, bfcl)
    s = result.summary()
    assert (s["act_em_bfcl"], s["arg_f1_bfcl"], s["ast_acc_bfcl"]) == (100.0, 100.0, 100.0)
    single_turn_calls = sum(len(t.meta["possible_answer"]) for t in bfcl if "possible_answer" in t.meta)
    assert s["bfcl_graded_steps"] == single_turn_calls > 0  # multi-turn calls keep the paper's rules
    from umi.eval import evidence

    items = evidence.static_items(result.records)  # the report's per-trajectory clusters, from the records
    ev = evidence.summary(items, "trajectories")
    assert ev["n"] == {"items": s["steps"], "trajectories": len(bfcl), "clusters": len(bfcl), "not_prompted": 0}
    for name in ("plan_acc", "act_em", "arg_f1", "act_em_bfcl"):
        assert ev["intervals"][name]["value"] == pytest.approx(s[name])
    by_cat = evidence.by_category(items, "trajectories")
    assert set(by_cat) == {"simple_python", "parallel", "irrelevance", "multi_turn_base"}
    assert by_cat["irrelevance"]["n"]["items"] == 2
    assert sum(c["n"]["items"] for c in by_cat.values()) == s["steps"]
    record = result.records[0]
    assert record["category"] == "simple_python" and record["score"]["arg_f1_bfcl"] in (1.0, None)
