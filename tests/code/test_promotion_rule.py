"""The promotion rule (umi.promotion.decide) on evaluation dicts in the shape umi.eval reports."""

from __future__ import annotations

import math

import pytest

from umi.promotion import DEFAULT_RULE, PromotionRule, decide, scores


def evaluation(pass_rate=None, plan_acc=None, act_em=None, arg_f1=None, test_set="bfcl-test", live=True):
    static = {test_set: {"plan_acc": plan_acc, "act_em": act_em, "hallu": 1.0, "arg_f1": arg_f1, "rouge_l": 30.0,
                         "steps": 40}}  # fmt: skip
    return {"static": static, "live": {"pass_rate": pass_rate, "entries": 10} if live else None}


GOOD = evaluation(0.4, 60.0, 40.0, 50.0)


def test_no_champion_promotes_a_fully_evaluated_candidate():
    d = decide(GOOD, None, has_champion=False)
    assert d.promote and d.reason == "no champion yet"
    assert d.candidate.static_mean == pytest.approx(50.0)


@pytest.mark.parametrize(
    "candidate, missing",
    [
        (evaluation(None, 60.0, 40.0, 50.0), "live pass_rate"),
        (evaluation(0.4, 60.0, 40.0, 50.0, live=False), "live pass_rate"),
        (evaluation(0.4, 60.0, None, 50.0), "static act_em on bfcl-test"),
        (evaluation(0.4, 60.0, 40.0, 50.0, test_set="toolbench-ood"), "static plan_acc on bfcl-test"),
        (evaluation(0.4, 60.0, 40.0, math.nan), "static arg_f1 on bfcl-test"),
        ({}, "live pass_rate"),
        (None, "live pass_rate"),
    ],
)
def test_missing_metrics_never_promote_even_without_a_champion(candidate, missing):
    d = decide(candidate, None, has_champion=False)
    assert not d.promote and missing in d.reason


def test_a_champion_that_could_not_be_evaluated_blocks_promotion():
    d = decide(GOOD, None, has_champion=True)
    assert not d.promote and "champion's evaluation lacks" in d.reason
    d = decide(GOOD, evaluation(0.1, 10.0, None, 10.0), has_champion=True)
    assert not d.promote and "act_em" in d.reason


def test_live_pass_rate_decides_first_whatever_the_static_metrics():
    better_live_worse_static = evaluation(0.5, 10.0, 10.0, 10.0)
    assert decide(better_live_worse_static, GOOD, has_champion=True).promote
    worse_live_better_static = evaluation(0.3, 99.0, 99.0, 99.0)
    d = decide(worse_live_better_static, GOOD, has_champion=True)
    assert not d.promote and "lower" in d.reason


def test_equal_pass_rates_fall_back_to_the_static_mean_with_a_margin():
    margin = DEFAULT_RULE.static_margin
    just_enough = evaluation(0.4, 60.0 + 3 * margin, 40.0, 50.0)  # mean +margin
    not_enough = evaluation(0.4, 60.0 + 3 * margin * 0.9, 40.0, 50.0)  # mean +0.9 margin
    worse = evaluation(0.4, 59.0, 40.0, 50.0)
    assert decide(just_enough, GOOD, has_champion=True).promote
    assert not decide(not_enough, GOOD, has_champion=True).promote
    assert not decide(worse, GOOD, has_champion=True).promote
    assert not decide(GOOD, GOOD, has_champion=True).promote  # the same agent again is no improvement


def test_the_rule_is_configurable():
    rule = PromotionRule(static_test_set="toolbench-ood", static_metrics=("plan_acc",), static_margin=0.0)
    cand = evaluation(0.4, 61.0, None, None, test_set="toolbench-ood")
    champ = evaluation(0.4, 60.0, None, None, test_set="toolbench-ood")
    assert scores(cand, rule).missing == []
    assert decide(cand, champ, has_champion=True, rule=rule).promote
