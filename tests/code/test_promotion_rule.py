"""The promotion rule (umi.registry.rule.decide) on evaluations whose paired sections come from umi.eval.evidence."""

from __future__ import annotations

import pytest

from umi.eval import evidence
from umi.registry.rule import decide, headline


def step_records(correct: list[list[bool]], prefix: str = "t") -> list[dict]:
    """Static records: trajectory k has one call step per entry of correct[k]; right = right plan, tool and args."""
    out = []
    for k, steps in enumerate(correct):
        for i, ok in enumerate(steps):
            out.append(
                {
                    "id": f"{prefix}{k}#{i}",
                    "score": {
                        "plan_correct": ok,
                        "action_correct": ok,
                        "hallucinated": False,
                        "arg_f1": float(ok),
                        "rouge_l": None,
                    },
                }
            )
    return out


def candidate_eval(candidate: list[dict], references: dict[str, list[dict]], test_set: str = "bfcl-dev") -> dict:
    """The candidate's evaluation as umi.eval.run builds it: summary + paired sections against each reference."""
    items = evidence.static_items(candidate)
    section = {"steps": len(candidate), **evidence.summary(items, "trajectories"), "paired": {}}
    for ref, recs in references.items():
        section["paired"][ref] = evidence.compare(items, evidence.static_items(recs), static=True)
    return {"static": {test_set: section}, "live": None}


# 6 trajectories, 27 call steps: the cpu sample's size
BASE = [
    [True, False, True, True, False],
    [True, True, False, False, True],
    [True, True, True, False, True],
    [False, True, True, False],
    [True, False, True, True],
    [True, True, False, False],
]


def flipped(grid: list[list[bool]], cells: list[tuple[int, int]]) -> list[list[bool]]:
    out = [list(row) for row in grid]
    for k, i in cells:
        out[k][i] = True
    return out


def test_a_candidate_better_by_one_step_is_not_promoted():
    champion = step_records(BASE)
    one_better = step_records(flipped(BASE, [(0, 1)]))
    d = decide(candidate_eval(one_better, {"champion": champion}), has_champion=True)
    assert not d.promote and "beyond noise" in d.reason
    ev = d.evidence["champion"]
    assert ev["difference"] == pytest.approx(100 / 27) and ev["ci_low"] <= 0 and ev["n"] == 27


def test_a_candidate_better_everywhere_is_promoted_with_its_evidence():
    n = 60
    champion = step_records([[k % 2 == 0, False] for k in range(n)])
    better = step_records([[True, k % 3 != 0] for k in range(n)])
    d = decide(candidate_eval(better, {"champion": champion}), has_champion=True)
    assert d.promote, d.reason
    ev = d.evidence["champion"]
    assert ev["ci_low"] > 0 and ev["p_value"] < 0.01 and ev["clusters"] == n
    assert d.headline == "bfcl-dev.mean_static"


def test_better_on_the_headline_but_worse_elsewhere_is_not_promoted():
    n = 60
    champion = step_records([[True, False] for _ in range(n)])
    cand = step_records([[True, True] for _ in range(n)])
    ev = candidate_eval(cand, {"champion": champion})
    hallu = {"difference": 20.0, "ci_low": 10.0, "ci_high": 30.0, "p_value": 0.001, "n": 120}  # more hallucination
    ev["static"]["bfcl-dev"]["paired"]["champion"]["hallu"] = hallu
    d = decide(ev, has_champion=True)
    assert not d.promote and "significantly worse on hallu" in d.reason


def test_no_champion_needs_the_single_llm_and_the_baselines_beaten():
    n = 60
    weak = step_records([[False, k % 2 == 0] for k in range(n)])
    strong = step_records([[True, True] for _ in range(n)])
    refs = {"single-llm": weak, "rule: last turn": weak, "rule: always caller": weak}
    assert decide(candidate_eval(strong, refs), has_champion=False).promote
    # tied with the single LLM: not promoted, however far above the rules
    refs_tied = {**refs, "single-llm": strong}
    d = decide(candidate_eval(strong, refs_tied), has_champion=False)
    assert not d.promote and "single-llm" in d.reason
    # a baseline missing from the evaluation: no decision
    d = decide(candidate_eval(strong, {"single-llm": weak}), has_champion=False)
    assert not d.promote and "no paired comparison with rule: last turn" in d.reason


def test_decisions_read_the_dev_split_only():
    n = 60
    champion = step_records([[False, False] for _ in range(n)])
    better = step_records([[True, True] for _ in range(n)])
    on_test = candidate_eval(better, {"champion": champion}, test_set="bfcl-test")
    d = decide(on_test, has_champion=True)
    assert not d.promote and "no evaluation on the dev split" in d.reason
    assert headline(on_test) is None


def test_live_checker_on_dev_is_the_headline_when_it_ran():
    live = {
        "entries": 60,
        "bfcl_checker_pass_rate": 50.0,
        "paired": {
            "champion": {
                "bfcl_checker_pass_rate": {
                    "difference": 5.0,
                    "ci_low": -3.0,
                    "ci_high": 13.0,
                    "p_value": 0.3,
                    "n": 60,
                    "clusters": 60,
                }
            }
        },
    }
    n = 60
    ev = candidate_eval(step_records([[True, True]] * n), {"champion": step_records([[False, False]] * n)})
    ev["live_dev"] = live
    d = decide(ev, has_champion=True)  # static says better, the live headline does not: not promoted
    assert d.headline == "live_dev.bfcl_checker_pass_rate" and not d.promote


def plan_only(records: list[dict], plan_correct: list[bool]) -> list[dict]:
    """A plan rule's records (umi.eval.baselines): the same steps, scored on the plan only."""
    return [{"id": r["id"], "score": {"plan_correct": ok}} for r, ok in zip(records, plan_correct, strict=True)]


def test_the_plan_rules_are_compared_on_plan_acc_not_on_a_mean_of_their_zeros():
    # the candidate gets every tool call right but half of its plans wrong; the rule gets every plan right. On the
    # mean of the three the rule would score 33 (Act. EM and Arg. F1 0 by construction) and lose; on Plan ACC it wins.
    n = 60
    grid = [[k % 2 == 0, True] for k in range(n)]
    cand = step_records(grid)
    for r in cand:
        r["score"].update(action_correct=True, arg_f1=1.0)
    weak = step_records([[False, False]] * n)
    rule = plan_only(cand, [True] * len(cand))
    ev = candidate_eval(cand, {"single-llm": weak, "rule: last turn": rule, "rule: always caller": rule})
    assert "mean_static" not in ev["static"]["bfcl-dev"]["paired"]["rule: last turn"]
    d = decide(ev, has_champion=False)
    assert not d.promote and "not better than rule: last turn on bfcl-dev.plan_acc" in d.reason
    assert d.evidence["rule: last turn"]["metric"] == "plan_acc"
    assert d.evidence["rule: last turn"]["difference"] == pytest.approx(-25.0)  # 90 of 120 plans right vs 120


def test_a_live_headline_does_not_hide_a_static_regression_on_dev():
    """The live checker decides, and says better; the static dev steps say significantly worse: not promoted."""
    n = 60
    live = {
        "entries": n,
        "bfcl_checker_pass_rate": 60.0,
        "paired": {
            "champion": {
                "bfcl_checker_pass_rate": {
                    "difference": 30.0,
                    "ci_low": 15.0,
                    "ci_high": 45.0,
                    "p_value": 0.001,
                    "n": n,
                    "clusters": n,
                }
            }
        },
    }
    ev = candidate_eval(step_records([[False, False]] * n), {"champion": step_records([[True, True]] * n)})
    ev["live_dev"] = live
    d = decide(ev, has_champion=True)
    assert d.headline == "live_dev.bfcl_checker_pass_rate"
    assert not d.promote and "significantly worse on bfcl-dev.plan_acc" in d.reason
    ev["static"]["bfcl-dev"]["paired"]["champion"] = {}  # no static regression: the live gain promotes
    assert decide(ev, has_champion=True).promote


def test_a_comparison_that_errored_blocks_promotion_with_its_reason():
    n = 60
    champion = step_records([[False, False] for _ in range(n)])
    better = step_records([[True, True] for _ in range(n)])
    ev = candidate_eval(better, {"champion": champion})
    assert decide(ev, has_champion=True).promote
    why = "paired() compares the same items: the agents' per-cluster item counts differ"
    ev["static"]["bfcl-dev"]["paired"]["champion"]["hallu"] = {"error": why}
    d = decide(ev, has_champion=True)
    assert not d.promote and "errored" in d.reason and "bfcl-dev.hallu" in d.reason and why in d.reason
