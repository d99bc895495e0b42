"""The Prefect flows end to end on the `tiny` profile: real Prefect flow runs (prefect_test_harness), a real DVC stage,
a real sqlite MLflow store, tiny random models trained in worker processes, the real evaluation on BFCL entries.

One project folder serves three flow runs in order: the first pipeline run trains, evaluates, registers four model
versions and promotes them (no champion yet); a second run with nothing changed is served from the caches; then
retrain_role retrains the caller on changed caller data and registers only umi-caller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).resolve().parent
MAKE_DATA = f"""\
import sys
from pathlib import Path
import json
sys.path.insert(0, {str(TESTS_DIR)!r})
from conftest import role_records

extra = int(Path("caller_extra.txt").read_text())
for role in ("global", "planner", "caller", "summarizer"):
    out = Path("artifacts/datasets") / role
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 8 + (extra if role == "caller" else 0)), ("dev", 2)):
        with (out / f"{{split}}.jsonl").open("w") as f:
            for record in role_records(role, n):
                f.write(json.dumps(record) + "\\n")
"""
DVC_YAML = """\
stages:
  reorganize:
    cmd: python make_data.py
    deps: [make_data.py, caller_extra.txt]
    outs: [artifacts/datasets]
"""
EVAL = dict(eval_settings="cpu", eval_limit=2, live_limit=1, toolbench_ood=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_backbone):
    """A project folder like the checkout: dvc.yaml (its stage writes tiny role datasets), params.yaml, BFCL test
    data in data/ for the evaluation, a sqlite MLflow store; the working directory while the flows run."""
    from umi.data.bfcl import import_bfcl
    from umi.data.importing import write_import

    root = tmp_path_factory.mktemp("project")
    (root / "make_data.py").write_text(MAKE_DATA)
    (root / "caller_extra.txt").write_text("0\n")
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("reorganize:\n  doc_style: compact\n")
    for category in ("multi_turn_base", "simple_python"):
        write_import(import_bfcl([category]), root / "data" / "bfcl" / f"{category}.jsonl")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def environment(project):
    """cwd = the project, MLflow on its sqlite store, Prefect on a temporary server, PATH with the venv (dvc's
    `python` is the test interpreter)."""
    import mlflow
    import torch
    from prefect.testing.utilities import prefect_test_harness

    saved_env, saved_cwd, saved_threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    torch.set_num_threads(1)  # the evaluation runs here: a tiny model only loses to thread contention
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    os.chdir(project)
    try:
        with prefect_test_harness(server_startup_timeout=120):
            yield project
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        mlflow.set_tracking_uri(None)
        torch.set_num_threads(saved_threads)


def _pipeline(tiny_backbone, **options):
    from flows.glpft_pipeline import glpft_pipeline

    return glpft_pipeline(profile="tiny", backbone_source=str(tiny_backbone), **EVAL, **options)


def _runs(**tags) -> list:
    import mlflow

    experiment = mlflow.get_experiment_by_name("umi-pipeline")
    runs = mlflow.MlflowClient().search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]


def _artifact_markdown(key: str) -> str:
    """The latest version of a Prefect artifact. (A plain API request: the 3.8 client's read_artifacts sends the
    filters it is not given as null, which the server refuses, and empty task-run filters drop flow-level artifacts.)"""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": [key]}}, "sort": "UPDATED_DESC", "limit": 1, "offset": 0},
        )
    return found.json()[0]["data"] if found.json() else ""


def _task_runs(flow_run_id: str) -> dict[str, dict]:
    """name -> the task run (state_name, start_time, end_time, ...) of a flow run, as the Prefect API has it once
    every task run's final state has reached it (the client reports task states as events, which the server records
    a moment later: read at once, the last task can still say Pending; seen in CI)."""
    from prefect.client.orchestration import get_client

    final = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            found = client.request(
                "POST",
                "/task_runs/filter",
                json={"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200, "offset": 0},
            ).json()
            if all(r["state_type"] in final for r in found) or time.monotonic() > deadline:
                return {r["name"]: r for r in found}
            time.sleep(0.5)


def test_bad_parameters_and_a_retrain_without_champions_fail_with_a_clear_error(environment, tiny_backbone):
    from flows.retrain_role import retrain_role

    with pytest.raises(ValueError, match=r"retrain_role retrains one of \['planner', 'caller', 'summarizer'\]"):
        retrain_role(role="global", profile="tiny")
    with pytest.raises(ValueError, match="local_concurrency must be >= 1, got 0"):
        _pipeline(tiny_backbone, local_concurrency=0)
    with pytest.raises(LookupError, match="no champion for umi-global, umi-planner, umi-caller, umi-summarizer"):
        retrain_role(role="caller", profile="tiny", **EVAL)
    [failed] = _runs(**{"umi.kind": "retrain_role"})
    assert failed.info.status == "FAILED"  # the parent run says so too


def test_pipeline_trains_evaluates_registers_promotes_then_caches_and_retrains_one_role(environment, tiny_backbone):
    import mlflow

    from umi.registry import store as registry

    # --- first run: everything is trained, four versions registered and promoted (no champion before) ---
    first = _pipeline(tiny_backbone, local_concurrency=3)  # the three local stages at once, in three processes
    assert set(first["stages"]) == {"global", "planner", "caller", "summarizer", "single-matched"}
    control = first["stages"]["single-matched"]  # the compute-matched control: global trained on for the locals' steps
    assert control["init_from"] == first["stages"]["global"]["checkpoint"] and control["metrics"]["global_step"] == 6
    assert not any(s["cached"] or s["skipped"] for s in first["stages"].values())
    tasks = _task_runs(first["flow_run"]["id"])
    local = [tasks[f"train-{r}"] for r in ("planner", "caller", "summarizer")]
    assert max(t["start_time"] for t in local) < min(t["end_time"] for t in local)  # they did run at the same time
    assert first["versions"] == {"global": "1", "planner": "1", "caller": "1", "summarizer": "1"}
    # tiny random models on 2 dev trajectories: nothing is better than the single LLM and the rules beyond noise
    assert not first["promotion"]["promote"], first["promotion"]
    assert all(registry.champion_version(r) is None for r in registry.ROLES)
    assert "umi.promotion_evidence" in registry.get_version("planner", "1").tags  # the decision is on the versions
    from umi.registry.promote import promote

    promote(first["versions"], reason="test: promoted by hand to go on")  # what `umi models promote --yes` does
    for role in registry.ROLES:
        [version] = registry.list_versions(role)
        assert version.aliases == [registry.CHAMPION]
        assert version.tags["umi.data_version"] == first["datasets"][role]
        assert json.loads(version.tags["umi.config"])["profile"] == "tiny"
        evaluation = json.loads(version.tags["umi.evaluation"])
        assert evaluation["live"]["entries"] == 1 and "bfcl-test" in evaluation["static"]
    # the locals started from the global model the run trained
    for role in ("planner", "caller", "summarizer"):
        assert first["stages"][role]["init_from"] == first["stages"]["global"]["checkpoint"]

    report = first["evaluation"]
    assert set(report["agents"]) == {
        "backbone",
        "single-llm",
        "single-matched",
        "alpha-umi",
        "rule: last turn",
        "rule: always caller",
        "no call",
        "constant answer",
    }  # no champion to compare with yet
    alpha = report["agents"]["alpha-umi"]
    assert alpha["live"]["entries"] == 1 and alpha["live_dev"]["entries"] >= 1
    assert "bfcl-dev" in alpha["static"] and "bfcl-dev" not in report["agents"]["backbone"]["static"]
    assert {"single-llm", "rule: last turn", "no call"} <= set(alpha["static"]["bfcl-test"]["paired"])
    assert Path(report["files"]["table"]).is_file() and Path(report["files"]["chart"]).is_file()

    # MLflow: one parent run, a child per stage and one for the evaluation; loss curves and the chart are there
    [parent] = _runs(**{"umi.kind": "pipeline"})
    assert parent.info.run_id == first["mlflow_run_id"] and parent.info.status == "FINISHED"
    children = _runs(**{"mlflow.parentRunId": parent.info.run_id})
    assert sorted(r.data.tags.get("umi.stage", r.data.tags.get("umi.kind")) for r in children) == [
        "caller",
        "evaluation",
        "global",
        "global-matched",
        "planner",
        "summarizer",
    ]
    stage_run = next(r for r in children if r.data.tags.get("umi.stage") == "caller")
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(stage_run.info.run_id, "loss")] == [1, 2]
    parent_files = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "evaluation")}
    assert {"evaluation/eval.md", "evaluation/eval.png"} <= parent_files
    assert "alpha-umi.live.pass_rate" in parent.data.metrics

    markdown = _artifact_markdown("glpft-pipeline")
    assert "alpha-umi" in markdown and "not promoted" in markdown
    assert f"/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in markdown

    # --- second run, nothing changed: every stage and the evaluation come from the cache; nothing new registered ---
    stage_runs_before = len([r for r in _runs() if "umi.stage" in r.data.tags])
    second = _pipeline(tiny_backbone)
    assert all(s["cached"] for s in second["stages"].values())
    tasks = _task_runs(second["flow_run"]["id"])
    assert {tasks[f"train-{r}"]["state_name"] for r in registry.ROLES} == {"Cached"}
    assert [t["state_name"] for name, t in tasks.items() if name.startswith("evaluate_agents")] == ["Cached"]
    assert second["evaluation"]["run_id"] == report["run_id"]  # the cached evaluation, not a new one
    assert second["versions"] == first["versions"]
    assert not second["promotion"]["promote"] and "already the champions" in second["promotion"]["reason"]
    assert len([r for r in _runs() if "umi.stage" in r.data.tags]) == stage_runs_before
    assert all(len(registry.list_versions(r)) == 1 for r in registry.ROLES)

    # --- the caller's data changes: retrain_role trains and registers the caller only ---
    Path("caller_extra.txt").write_text("4\n")
    from flows.retrain_role import retrain_role

    retrained = retrain_role(role="caller", profile="tiny", **EVAL)
    stage = retrained["stage"]
    assert not stage["cached"] and not stage["skipped"]
    assert Path(stage["init_from"]) == Path("artifacts/champion/global")  # the champion global checkpoint
    assert stage["metrics"]["data_examples"] == 12  # 8 + 4 new caller examples
    assert retrained["versions"] == {"caller": "2"}
    assert [len(registry.list_versions(r)) for r in registry.ROLES] == [1, 1, 2, 1]
    assert set(retrained["evaluation"]["agents"]) == {
        "candidate",
        "champion",
        "rule: last turn",
        "rule: always caller",
        "no call",
        "constant answer",
    }
    assert "champion" in retrained["evaluation"]["agents"]["candidate"]["static"]["bfcl-dev"]["paired"]
    decision = retrained["promotion"]
    champion_caller = str(registry.champion_version("caller").version)
    assert champion_caller == ("2" if decision["promote"] else "1"), decision
    assert all(str(registry.champion_version(r).version) == "1" for r in ("global", "planner", "summarizer"))
    assert "Retrain caller" in _artifact_markdown("retrain-caller")
