"""Promotion and rollback of the `champion` alias on a real sqlite MLflow registry, and `umi models`."""

from __future__ import annotations

import pytest
from test_model_registry import make_checkpoint, store  # noqa: F401  (the store fixture; tests/model is on sys.path)
from typer.testing import CliRunner

from umi.registry import store as registry
from umi.registry.aliases import PREVIOUS_CHAMPION
from umi.registry.promote import latest_promotion_roles, promote, promote_if_better, rollback
from umi.registry.tags import TAG_PROMOTED_FROM

REFERENCES = ("champion", "single-llm", "rule: last turn", "rule: always caller")


def evaluation(ci_low, plan_acc=50.0, act_em=50.0, arg_f1=50.0):
    """A candidate's dev evaluation whose paired difference with every reference has this interval lower bound
    (umi.eval.evidence's shape; the rule itself is tested on real paired statistics in tests/code)."""
    entry = {
        "difference": ci_low + 5.0,
        "ci_low": ci_low,
        "ci_high": ci_low + 10.0,
        "p_value": 0.01 if ci_low > 0 else 0.4,
        "n": 40,
        "clusters": 10,
    }
    section = {
        "steps": 40,
        "plan_acc": plan_acc,
        "act_em": act_em,
        "arg_f1": arg_f1,
        # the plan rules are compared on Plan ACC (umi.registry.rule), the agents on the mean of the three
        "paired": {r: {"mean_static": entry, "plan_acc": entry} for r in REFERENCES},
    }
    return {"static": {"bfcl-dev": section}, "live": None}


def champions() -> dict[str, str | None]:
    return {r: (str(v.version) if (v := registry.champion_version(r)) else None) for r in registry.ROLES}


def register_generation(tiny_backbone, tmp_path, generation: int, roles=registry.ROLES) -> dict[str, str]:
    return {
        role: str(
            registry.register_role_model(
                role,
                make_checkpoint(
                    tiny_backbone, tmp_path / f"g{generation}-{role}", f"fp-{role}-{generation}", scale=1.0 + generation
                ),
            ).version
        )
        for role in roles
    }


def test_better_agents_are_promoted_worse_ones_not_and_rollback_walks_back(store, tiny_backbone, tmp_path):  # noqa: F811
    first = register_generation(tiny_backbone, tmp_path, 1)
    decision, moved = promote_if_better(first, evaluation(0.2), None)
    assert decision.promote and decision.reason.startswith("beats the single LLM and the baselines")
    assert champions() == first and moved == {r: (None, v) for r, v in first.items()}

    worse = register_generation(tiny_backbone, tmp_path, 2)
    decision, moved = promote_if_better(worse, evaluation(-4.0), None)
    assert not decision.promote and moved == {} and champions() == first  # nothing moved

    better = register_generation(tiny_backbone, tmp_path, 3)
    decision, moved = promote_if_better(better, evaluation(0.3), None)
    assert decision.promote and champions() == better
    for role in registry.ROLES:
        champion = registry.champion_version(role)
        assert champion.tags[TAG_PROMOTED_FROM] == first[role]
        assert "beats the champion on bfcl-dev.mean_static" in champion.tags["umi.promotion_reason"]
        assert '"ci_low":0.3' in champion.tags["umi.promotion_evidence"]
        assert str(registry.alias_version(role, PREVIOUS_CHAMPION).version) == first[role]

    # the same candidates again: already champions, nothing to decide
    decision, moved = promote_if_better(better, evaluation(0.3), None)
    assert not decision.promote and "already the champions" in decision.reason and moved == {}

    # retrain_role-like: only the caller, better than the champion beyond noise
    caller = register_generation(tiny_backbone, tmp_path, 4, roles=("caller",))
    decision, moved = promote_if_better(caller, evaluation(1.0), None)
    assert decision.promote and list(moved) == ["caller"]
    assert champions() == {**better, **caller}
    assert latest_promotion_roles() == ["caller"]

    assert rollback() == {"caller": (caller["caller"], better["caller"])}  # the latest promotion only
    assert champions() == better
    assert sorted(rollback()) == sorted(registry.ROLES)  # then the pipeline's promotion, all four together
    assert champions() == first
    assert registry.alias_version("caller", PREVIOUS_CHAMPION) is None
    with pytest.raises(LookupError, match="first champion: nothing to roll back to"):
        rollback()
    assert champions() == first


def test_umi_models_list_promote_rollback(store, tiny_backbone, tmp_path):  # noqa: F811
    from umi.cli.main import app

    runner = CliRunner()
    first = register_generation(tiny_backbone, tmp_path, 1, roles=("planner",))
    second = register_generation(tiny_backbone, tmp_path, 2, roles=("planner",))
    registry.register_role_model(
        "caller", make_checkpoint(tiny_backbone, tmp_path / "c", "fp-c"), evaluation=evaluation(0.25, 10.0, 20.0, 30.0)
    )

    result = runner.invoke(app, ["models", "promote", f"planner={first['planner']}", "--yes"])
    assert result.exit_code == 0, result.output
    assert champions()["planner"] == first["planner"]
    result = runner.invoke(app, ["models", "promote", f"planner={second['planner']}", "--yes"])
    assert result.exit_code == 0 and f"planner: champion {first['planner']} -> {second['planner']}" in result.output

    result = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    planner_rows = [line for line in result.output.splitlines() if "planner" in line and "champion" in line]
    assert len(planner_rows) == 2  # champion and previous-champion
    assert "bfcl-dev mean_static 20 (n=40)" in result.output  # the caller's evaluation, summarised
    assert "not registered" in result.output  # global and summarizer

    result = runner.invoke(app, ["models", "rollback"])
    assert result.exit_code == 0 and champions()["planner"] == first["planner"]

    for bad, message in (
        (["models", "promote", "planner"], "expected ROLE=VERSION"),
        (["models", "promote", "critic=1"], "unknown role"),
        (["models", "promote", "planner=99"], "has no version 99"),
        (["models", "rollback", "--role", "caller"], "has no champion"),
    ):
        result = runner.invoke(app, bad)
        assert result.exit_code != 0 and message in result.output, (bad, result.output)
    assert champions()["planner"] == first["planner"]

    result = runner.invoke(app, ["models", "show", "planner"])
    assert result.exit_code == 0 and f'"version": "{first["planner"]}"' in result.output


def test_promote_checks_every_version_before_moving_anything(store, tiny_backbone, tmp_path):  # noqa: F811
    versions = register_generation(tiny_backbone, tmp_path, 1, roles=("planner", "caller"))
    with pytest.raises(LookupError):
        promote({**versions, "summarizer": "7"})
    assert champions() == {r: None for r in registry.ROLES}


def test_judge_is_the_whole_promotion_decision_of_a_flow_run(store, tiny_backbone, tmp_path):  # noqa: F811
    from umi.registry.aliases import PromotionConflict
    from umi.registry.promote import judge

    none = {r: None for r in ("planner", "caller", "summarizer")}  # what download_champions found: no champion
    first = register_generation(tiny_backbone, tmp_path, 1)
    off = judge(first, {"alpha-umi": evaluation(0.2)}, "alpha-umi", none, enabled=False)
    assert not off["promote"] and off["reason"] == "promotion switched off" and off["moved"] == {}
    assert off["rule_said"].startswith("beats the single LLM and the baselines")  # what the rule would have done
    unmeasured = judge(first, {"single-llm": evaluation(0.2)}, "alpha-umi", none)  # the candidate was not evaluated
    assert not unmeasured["promote"] and "no evaluation on the dev split" in unmeasured["reason"]
    assert champions() == {r: None for r in registry.ROLES}

    decided = judge(first, {"alpha-umi": evaluation(0.2)}, "alpha-umi", none)
    assert decided["promote"] and decided["moved"] == {r: [None, v] for r, v in first.items()}
    assert champions() == first and decided["evidence"]["single-llm"]["ci_low"] == 0.2
    downloaded = {r: {"version": v} for r, v in first.items()}
    again = judge(first, {"alpha-umi": evaluation(0.3)}, "alpha-umi", downloaded)
    assert not again["promote"] and "already the champions" in again["reason"] and again["moved"] == {}

    # compare-and-set: the evaluation was measured when there was no champion; there is one now
    second = register_generation(tiny_backbone, tmp_path, 2)
    with pytest.raises(PromotionConflict):
        judge(second, {"alpha-umi": evaluation(0.5)}, "alpha-umi", none)
    assert champions() == first
    caller = register_generation(tiny_backbone, tmp_path, 3, roles=("caller",))  # a retrain_role candidate
    worse = judge(caller, {"candidate": evaluation(-4.0)}, "candidate", downloaded)
    assert not worse["promote"] and worse["reason"].startswith("not better than champion") and champions() == first


def test_the_champion_agent_is_compared_unless_it_is_the_candidate_itself(tiny_backbone, tmp_path):
    from umi.registry.promote import champion_to_compare

    roles = ("planner", "caller", "summarizer")
    candidate = {r: str(make_checkpoint(tiny_backbone, tmp_path / r, f"fp-{r}")) for r in roles}
    same = {r: {"path": f"champion/{r}", "fingerprint": f"fp-{r}", "version": "1"} for r in roles}
    assert champion_to_compare(same, candidate) is None
    older = {**same, "caller": {"path": "champion/caller", "fingerprint": "fp-older", "version": "1"}}
    assert champion_to_compare(older, candidate) == {r: f"champion/{r}" for r in roles}
    assert champion_to_compare({**older, "caller": None}, candidate) is None  # no full champion agent
