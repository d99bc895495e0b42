"""The evaluation's statistics against hand computations: baselines, cluster-bootstrap intervals, paired p-values."""

from __future__ import annotations

import math

import pytest

from umi.eval import evidence
from umi.eval.baselines import RULE_ALWAYS_CALLER, RULE_LAST_TURN, rule_records
from umi.eval.stats import DEFAULT_RESAMPLES, Clusters, holm, interval, normal_halfwidth, p_text, paired
from umi.schema import Step, ToolSpec, Trajectory


def traj(tid: str, n_calls: int) -> Trajectory:
    """user, then n_calls x (planner caller, caller, observation), then planner conclusion, conclusion."""
    steps = [Step(role="user", content="do it")]
    for k in range(n_calls):
        steps += [
            Step(role="assistant", content=f"call {k}", decision="caller"),
            Step(role="caller", tool_name="f", arguments_text='{"x": 1}'),
            Step(role="observation", content="ok"),
        ]
    steps += [Step(role="assistant", content="done", decision="conclusion"), Step(role="conclusion", content="fine")]
    return Trajectory(
        id=tid, source="test", instruction="do it", tools=[ToolSpec(name="f", description="f")], steps=steps
    )


def test_rule_baselines_on_known_trajectories():
    # one call: steps = [call after user, finish after observation]; two calls: [call, call after obs, finish]
    trajs = [traj("a", 1), traj("b", 2)]
    last, m_last = rule_records(trajs, RULE_LAST_TURN)
    always, m_always = rule_records(trajs, RULE_ALWAYS_CALLER)
    assert [r["predicted"]["plan"] for r in last] == ["call", "finish", "call", "finish", "finish"]
    assert [r["score"]["plan_correct"] for r in last] == [True, True, True, False, True]
    assert m_last.plan_acc == pytest.approx(80.0) and m_last.steps == 5
    assert m_always.plan_acc == pytest.approx(60.0)  # 3 call steps of 5
    # a plan rule names no tool: its other metrics are undefined, and its records carry the plan only
    assert m_last.act_em is None and m_last.arg_f1 is None and m_last.hallu is None and m_last.rouge_l is None
    assert all(set(r["score"]) == {"plan_correct"} for r in last)


def test_interval_of_two_clusters_is_the_exhaustive_bootstrap():
    # clusters 0 and 1: resamples {0,0}, {0,1}, {1,0}, {1,1} -> means 0, .5, .5, 1 -> the 2.5/97.5 percentiles are 0, 100
    iv = interval(Clusters(("a", "b"), (0.0, 1.0), (1.0, 1.0)))
    assert iv.value == 50.0 and iv.ci_low == 0.0 and iv.ci_high == 100.0 and iv.n == 2 and iv.clusters == 2


def test_interval_matches_the_normal_approximation_for_many_clusters():
    n, p = 400, 0.7
    values = [1.0] * int(n * p) + [0.0] * (n - int(n * p))
    iv = interval(Clusters.from_items([(f"t{k}", v) for k, v in enumerate(values)]), resamples=4000)
    half = normal_halfwidth(p, n)  # 4.49 points
    assert iv.value == pytest.approx(70.0)
    assert iv.ci_low == pytest.approx(70.0 - half, abs=0.8) and iv.ci_high == pytest.approx(70.0 + half, abs=0.8)


def test_interval_resamples_trajectories_not_steps():
    # 20 trajectories of 10 steps each, all-right or all-wrong: the steps are not independent, so the interval must be
    # as wide as for 20 items (normal approx +-21.9 points at p=.5), not as for 200 (+-6.9).
    items = [(f"t{k}", float(k % 2)) for k in range(20) for _ in range(10)]
    iv = interval(Clusters.from_items(items))
    assert iv.n == 200 and iv.clusters == 20
    assert iv.ci_high - iv.ci_low > 2 * normal_halfwidth(0.5, 20) * 0.8


def test_paired_p_value_is_the_exact_sign_flip_probability():
    # A is right on 3 clusters where B is wrong, equal elsewhere: 2 of the 2**3 sign patterns are as extreme -> p=0.25
    a = Clusters(("1", "2", "3", "4"), (1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0))
    b = Clusters(("1", "2", "3", "4"), (0.0, 0.0, 0.0, 1.0), (1.0, 1.0, 1.0, 1.0))
    result = paired(a, b)
    assert result.difference == pytest.approx(75.0)
    assert result.p_value == pytest.approx(0.25) and result.exact
    assert result.n == 4 and result.clusters == 4


def test_paired_one_step_better_is_not_significant():
    # 27 steps over 6 trajectories; the candidate wins one step: a +3.7-point difference, interval contains 0
    ids = [f"t{k}" for k in range(6)]
    den = (5.0, 5.0, 5.0, 4.0, 4.0, 4.0)
    b = Clusters(tuple(ids), (3.0, 2.0, 4.0, 2.0, 3.0, 2.0), den)
    a = Clusters(tuple(ids), (4.0, 2.0, 4.0, 2.0, 3.0, 2.0), den)
    result = paired(a, b)
    assert result.difference == pytest.approx(100 / 27)
    assert result.ci_low <= 0 <= result.ci_high and not result.significant_gain
    assert result.p_value == pytest.approx(1.0)  # one cluster differs: both sign patterns are as extreme


def test_paired_large_consistent_gain_is_significant():
    ids = tuple(f"t{k}" for k in range(60))
    a = Clusters(ids, tuple(1.0 for _ in ids), tuple(1.0 for _ in ids))
    b = Clusters(ids, tuple(float(k % 3 == 0) for k in range(60)), tuple(1.0 for _ in ids))
    result = paired(a, b, resamples=3000)
    assert result.significant_gain and not result.exact
    # 40 clusters differ, all in A's favour: the Monte Carlo p is at its floor 1/(1+resamples)
    assert result.p_value == pytest.approx(1 / 3001)


def test_paired_refuses_different_items():
    a = Clusters(("1",), (1.0,), (2.0,))
    b = Clusters(("1",), (1.0,), (1.0,))
    with pytest.raises(ValueError, match="same items"):
        paired(a, b)


def test_mean_of_metrics_difference_is_the_mean_of_differences():
    ids = ("1", "2")
    plan_a, plan_b = Clusters(ids, (2.0, 1.0), (2.0, 2.0)), Clusters(ids, (1.0, 1.0), (2.0, 2.0))  # 75 vs 50
    em_a, em_b = Clusters(ids, (1.0, 0.0), (1.0, 1.0)), Clusters(ids, (1.0, 1.0), (1.0, 1.0))  # 50 vs 100
    result = paired([plan_a, em_a], [plan_b, em_b])
    assert result.difference == pytest.approx(((75 - 50) + (50 - 100)) / 2)


def test_evidence_from_records_groups_steps_by_trajectory_and_category():
    records = [
        {
            "id": "x/1#1",
            "score": {
                "plan_correct": True,
                "action_correct": True,
                "hallucinated": False,
                "arg_f1": 1.0,
                "rouge_l": None,
            },
        },
        {
            "id": "x/1#4",
            "score": {
                "plan_correct": False,
                "action_correct": None,
                "hallucinated": False,
                "arg_f1": None,
                "rouge_l": 0.5,
            },
        },
        {
            "id": "x/2#1",
            "score": {
                "plan_correct": True,
                "action_correct": False,
                "hallucinated": True,
                "arg_f1": 0.0,
                "rouge_l": None,
            },
        },
    ]
    items = evidence.static_items(records, {"x/1": "simple", "x/2": "multiple"})
    s = evidence.summary(items, "trajectories")
    assert s["n"] == {"items": 3, "trajectories": 2, "clusters": 2, "not_prompted": 0}
    assert s["intervals"]["plan_acc"]["value"] == pytest.approx(200 / 3)
    assert s["intervals"]["act_em"]["n"] == 2 and s["intervals"]["rouge_l"]["n"] == 1
    cats = evidence.by_category(items, "trajectories")
    assert cats["simple"]["intervals"]["plan_acc"]["value"] == 50.0
    assert cats["multiple"]["n"] == {"items": 1, "trajectories": 1, "clusters": 1, "not_prompted": 0}


def test_live_evidence_counts_entries_and_turns():
    records = [
        {"entry_id": "e1", "passed": True, "bfcl_checker": {"valid": True}, "turns": 2, "turns_passed": 2},
        {"entry_id": "e2", "passed": False, "bfcl_checker": {"valid": False}, "turns": 3, "turns_passed": 1},
    ]
    s = evidence.summary(evidence.live_items(records), "entries")
    assert s["n"]["entries"] == 2
    assert s["intervals"]["pass_rate"]["value"] == 50.0
    assert s["intervals"]["turn_pass_rate"]["value"] == pytest.approx(60.0)
    assert math.isclose(s["intervals"]["bfcl_checker_pass_rate"]["value"], 50.0)


def test_training_budget_sums_the_stage_lineage_once(tmp_path):
    from umi.eval.agents import training_budget
    from umi.inference.agent_specs import AgentSpec

    def stage(name, init_from, tokens, steps, epoch=1.0):
        d = tmp_path / name / "model"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        manifest = {
            "stage": name,
            "init_from": str(init_from),
            "config": {"stages": {name: {"epochs": 1}}},
            "metrics": {"data_tokens": tokens, "global_step": steps, "epoch": epoch},
        }
        (d / "umi_stage.json").write_text(__import__("json").dumps(manifest))
        return d

    backbone = tmp_path / "backbone"
    backbone.mkdir()
    glob = stage("global", backbone, 1000, 10, epoch=2.0)
    locals_ = [stage(r, glob, t, s) for r, t, s in (("planner", 300, 3), ("caller", 200, 2), ("summarizer", 100, 1))]
    multi = training_budget(AgentSpec.multi("a", *locals_))
    assert multi == {"tokens": 2600, "optimizer_steps": 16, "stages": ["caller", "global", "planner", "summarizer"]}
    assert training_budget(AgentSpec.single("s", glob))["tokens"] == 2000  # 1000 tokens x 2 epochs
    assert training_budget(AgentSpec.multi("b", backbone, backbone, backbone)) == {
        "tokens": 0,
        "optimizer_steps": 0,
        "stages": [],
    }


def test_two_agreeing_clusters_are_not_significant():
    """Two trajectories that both favour A: the percentile interval has zero width above 0, but the exact sign-flip
    p is 0.5, so `significant` says nothing (and neither may the report or the promotion rule)."""
    from umi.eval.stats import significant

    a = Clusters(("1", "2"), (1.0, 1.0), (2.0, 2.0))
    b = Clusters(("1", "2"), (0.0, 0.0), (2.0, 2.0))
    result = paired(a, b)
    assert result.ci_low == result.ci_high == pytest.approx(50.0) and result.p_value == pytest.approx(0.5)
    assert significant(result.to_dict()) is None and not result.significant_gain
    big = paired(
        Clusters(tuple("abcdefgh"), (1.0,) * 8, (1.0,) * 8), Clusters(tuple("abcdefgh"), (0.0,) * 8, (1.0,) * 8)
    )
    assert big.p_value == pytest.approx(2 / 256) and significant(big.to_dict()) == "better"


def _steps(agent_right: dict[str, bool], prompted: set[str] | None = None) -> list[dict]:
    """Static records of one call step per id `<trajectory>#0`; `prompted`: the ids the agent was prompted on."""
    out = []
    for rid, ok in agent_right.items():
        asked = prompted is None or rid in prompted
        score = {"plan_correct": ok, "action_correct": ok, "hallucinated": False, "arg_f1": float(ok), "rouge_l": None}
        out.append({"id": rid, "prompted": asked, "score": score if asked else None})
    return out


def test_steps_not_prompted_are_left_out_of_the_agent_and_of_its_pairs():
    """A single LLM that could not be prompted on 4 of 10 trajectories (all of which α-UMi got right) is neither
    scored 0 there nor compared there: the pair runs on the 6 both were prompted on and says it left 4 out."""
    ids = [f"t{k}#0" for k in range(10)]
    alpha = _steps({rid: True for rid in ids})
    single = _steps({rid: k < 6 for k, rid in enumerate(ids)}, prompted=set(ids[:6]))
    a_items, s_items = evidence.static_items(alpha), evidence.static_items(single)
    summary = evidence.summary(s_items, "trajectories")
    assert summary["n"]["items"] == 6 and summary["n"]["not_prompted"] == 4
    assert summary["intervals"]["plan_acc"]["value"] == 100.0  # not 60: the unprompted steps are not misses
    cmp = evidence.compare(a_items, s_items, static=True)
    assert cmp["plan_acc"]["difference"] == 0.0 and cmp["plan_acc"]["n"] == 6 and cmp["plan_acc"]["left_out"] == 4
    assert cmp["mean_static"]["left_out"] == 4


def test_twin_trajectories_are_one_cluster():
    """Twins (one split group) are resampled together: 20 trajectories in 10 twin pairs are 10 clusters."""
    records = _steps({f"t{k}#0": k % 4 < 2 for k in range(20)})
    twins = {f"t{k}": f"group{k // 2}" for k in range(20)}
    alone = evidence.summary(evidence.static_items(records), "trajectories")
    paired_up = evidence.summary(evidence.static_items(records, clusters=twins), "trajectories")
    assert alone["n"]["clusters"] == 20 and alone["intervals"]["plan_acc"]["clusters"] == 20
    assert paired_up["n"] == {"items": 20, "trajectories": 20, "clusters": 10, "not_prompted": 0}
    assert paired_up["intervals"]["plan_acc"]["clusters"] == 10
    width = lambda s: s["intervals"]["plan_acc"]["ci_high"] - s["intervals"]["plan_acc"]["ci_low"]  # noqa: E731
    assert width(paired_up) > width(alone)  # identical twins are one observation, not two
    other = _steps({f"t{k}#0": True for k in range(20)})
    cmp = evidence.compare(
        evidence.static_items(other, clusters=twins), evidence.static_items(records, clusters=twins), static=True
    )
    assert cmp["plan_acc"]["clusters"] == 10


def test_live_entries_that_ran_out_of_context_are_not_prompted():
    records = [
        {"entry_id": "e1", "passed": True, "turns": 1, "turns_passed": 1, "prompted": True},
        {"entry_id": "e2", "passed": False, "turns": 2, "turns_passed": 0, "prompted": False},
    ]
    s = evidence.summary(evidence.live_items(records), "entries")
    assert s["n"] == {"items": 1, "entries": 1, "clusters": 1, "not_prompted": 1}
    assert s["intervals"]["pass_rate"]["value"] == 100.0 and s["intervals"]["turn_pass_rate"]["n"] == 1


def test_holm_adjusts_a_family_step_down():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, 0.2]) == pytest.approx([0.4, 0.4]) and holm([0.9, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_p_below_the_resampling_floor_is_printed_as_a_bound():
    floor = 1 / (1 + DEFAULT_RESAMPLES)
    assert p_text(floor) == "p < 0.001" and p_text(0.0009) == "p < 0.001"
    assert p_text(0.0123) == "p = 0.012" and p_text(0.001) == "p = 0.001"
