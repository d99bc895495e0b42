"""Promotion under faults, on a real sqlite MLflow registry: a registry call that fails midway (injected into the
client's set-alias call), a writer that dies with a half-done move, a champion that changes under a decision."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from test_model_registry import make_checkpoint, store  # noqa: F401  (the store fixture; tests/model is on sys.path)
from test_promotion import champions, evaluation, register_generation
from typer.testing import CliRunner

from umi.registry import store as registry
from umi.registry.aliases import PREVIOUS_CHAMPION, PROMOTIONS_EXPERIMENT, PromotionConflict, reconcile
from umi.registry.promote import promote, promote_if_better, rollback
from umi.registry.tags import TAG_OUTCOME

REAL_SET_ALIAS = MlflowClient.set_registered_model_alias


def previous_champions() -> dict[str, str | None]:
    return {
        r: (str(v.version) if (v := registry.alias_version(r, PREVIOUS_CHAMPION)) else None) for r in registry.ROLES
    }


def records(status: str | None = None) -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(PROMOTIONS_EXPERIMENT)
    found = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in found if status is None or r.info.status == status]


class FailingRegistry:
    """Makes the client's set-alias call fail: on call number `at` (1-based) and, with `down`, every call after it;
    with `after_write`, the failing call still moves the alias first (a reply lost after the write)."""

    def __init__(self, at: int, *, down: bool = False, after_write: bool = False):
        self.at, self.down, self.after_write, self.calls = at, down, after_write, 0

    def __call__(self, client, name, alias, version):
        self.calls += 1
        if self.calls == self.at or (self.down and self.calls > self.at):
            if self.after_write:
                REAL_SET_ALIAS(client, name, alias, version)
            raise MlflowException(f"injected registry failure on set-alias call {self.calls}")
        return REAL_SET_ALIAS(client, name, alias, version)

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", lambda client, *args: self(client, *args))


@pytest.fixture
def three_generations(store, tiny_backbone, tmp_path):  # noqa: F811
    """gen1 promoted, then gen2 promoted (so champion = gen2 and previous-champion = gen1), gen3 registered."""
    gens = [register_generation(tiny_backbone, tmp_path, g) for g in (1, 2, 3)]
    promote(gens[0])
    promote(gens[1])
    assert champions() == gens[1] and previous_champions() == gens[0]
    return gens


def test_a_failure_midway_puts_every_role_back_and_the_next_run_promotes(three_generations, monkeypatch):
    gen1, gen2, gen3 = three_generations
    # the move is 8 set-alias calls (champion, previous-champion per role); fail at several points, before and after
    # the write, starting with the brief's case: the 3rd call, after the first role's two aliases moved
    for at, after_write in ((3, False), (2, True), (5, False), (6, True), (8, False), (8, True), (1, False)):
        failing = FailingRegistry(at, after_write=after_write)
        failing.install(monkeypatch)
        with pytest.raises(MlflowException, match="injected"):
            promote_if_better(gen3, evaluation(0.9), evaluation(0.2))
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", REAL_SET_ALIAS)
        moved_something = at > 1 or after_write
        assert failing.calls > at if moved_something else failing.calls == at  # it got that far, then put back
        assert champions() == gen2 and previous_champions() == gen1, (at, after_write)
    failed = records("FAILED")
    assert len(failed) == 7 and all("failed and put back" in r.data.tags[TAG_OUTCOME] for r in failed)
    assert records("RUNNING") == []

    decision, moved = promote_if_better(gen3, evaluation(0.9), evaluation(0.2))  # the next run, registry healthy
    assert decision.promote and moved == {r: (gen2[r], gen3[r]) for r in registry.ROLES}
    assert champions() == gen3 and previous_champions() == gen2
    assert records()[-1].info.status == "FINISHED"

    result = CliRunner().invoke(__import__("umi.cli.main").cli.main.app, ["models", "rollback"])
    assert result.exit_code == 0, result.output
    assert champions() == gen2 and previous_champions() == gen1  # exactly the previous four
    assert records()[-1].data.tags["umi.kind"] == "rollback" and records()[-1].info.status == "FINISHED"


def test_a_move_that_could_not_be_put_back_is_reconciled_by_the_next_run(three_generations, monkeypatch):
    gen1, gen2, gen3 = three_generations
    failing = FailingRegistry(3, down=True)  # the registry stays down: nothing can be put back now
    failing.install(monkeypatch)
    with pytest.raises(MlflowException, match="injected"):
        promote_if_better(gen3, evaluation(0.9), evaluation(0.2))
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", REAL_SET_ALIAS)
    mixed = champions()
    assert mixed != gen2 and mixed[registry.ROLES[0]] == gen3[registry.ROLES[0]]  # left halfway ...
    [pending] = records("RUNNING")  # ... with its pending record
    plan = json.loads(pending.data.tags["umi.plan"])
    assert len(plan) == 8 and plan[0] == {
        "role": "global",
        "alias": "champion",
        "before": gen2["global"],
        "after": gen3["global"],
    }

    decision, moved = promote_if_better(gen3, evaluation(0.9), evaluation(0.2))  # the next run
    assert decision.promote and moved == {r: (gen2[r], gen3[r]) for r in registry.ROLES}  # from gen2: reconciled
    assert champions() == gen3 and previous_champions() == gen2
    reconciled = MlflowClient().get_run(pending.info.run_id)
    assert reconciled.info.status == "FAILED" and reconciled.data.tags[TAG_OUTCOME].startswith("reconciled")
    assert reconcile() == [] and records("RUNNING") == []
    assert rollback() == {r: (gen3[r], gen2[r]) for r in registry.ROLES}
    assert champions() == gen2 and previous_champions() == gen1


def test_compare_and_set_refuses_a_decision_on_changed_champions(three_generations, tiny_backbone, tmp_path):
    gen1, gen2, gen3 = three_generations
    # retrain_role-like: the caller was decided on while gen2's caller was champion; meanwhile someone rolled back
    rollback(["caller"])
    assert champions()["caller"] == gen1["caller"]
    before = champions(), previous_champions()
    with pytest.raises(PromotionConflict, match="caller: decided on"):
        promote({"caller": gen3["caller"]}, expected_champions={"caller": gen2["caller"]})
    with pytest.raises(PromotionConflict):
        promote_if_better(
            {"caller": gen3["caller"]}, evaluation(0.9), evaluation(0.2), expected_champions={"caller": gen2["caller"]}
        )
    assert (champions(), previous_champions()) == before
    assert records()[-1].info.status == "FAILED" and "refused" in records()[-1].data.tags[TAG_OUTCOME]
    # on the champions it was decided on, it goes through
    assert promote({"caller": gen3["caller"]}, expected_champions={"caller": gen1["caller"]})
    assert champions()["caller"] == gen3["caller"]


def test_umi_models_promote_asks_and_records_the_reason(three_generations):
    from umi.cli.main import app

    gen1, gen2, gen3 = three_generations
    runner = CliRunner()
    result = runner.invoke(app, ["models", "promote", f"planner={gen3['planner']}"], input="n\n")
    assert result.exit_code == 1 and "nothing moved" in result.output
    assert f"planner: champion {gen2['planner']} -> {gen3['planner']}" in result.output  # the plan was shown
    assert champions() == gen2
    result = runner.invoke(
        app, ["models", "promote", f"planner={gen3['planner']}", "--reason", "hotfix 12"], input="y\n"
    )
    assert result.exit_code == 0, result.output
    assert champions()["planner"] == gen3["planner"]
    tags = registry.champion_version("planner").tags
    assert tags["umi.promotion_reason"] == "manual: umi models promote: hotfix 12"
    result = runner.invoke(app, ["models", "promote", f"caller={gen3['caller']}", "-y"])
    assert result.exit_code == 0 and champions()["caller"] == gen3["caller"]
