"""Fine-tune one α-UMi role again, without retraining the rest: the modularity the paper argues for (new or changed
tools mean a new caller, not a new planner and summarizer).

    role datasets (DVC stage) -> champion global checkpoint (umi-global@champion) -> fine-tune <role> from it
    -> register umi-<role> -> evaluate the agent with the new role and the two other champion roles, against the
    champion agent, on the same data -> promote umi-<role> only when the agent improves (umi.promotion's rule)

Publishes the Prefect artifact `retrain-<role>` with the evaluation table and links to the MLflow runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.glpft_pipeline import _config, _stage_result, _train, eval_options
from flows.tasks import (
    PIPELINE_EXPERIMENT,
    RESULTS_DIR,
    ParentRun,
    agent_spec,
    build_datasets,
    download_champions,
    evaluation_key,
    evaluation_metrics,
    evaluation_task,
    flow_run_info,
    promote_models,
    publish,
    register_models,
)
from umi.train.config import LOCAL_STAGES


@flow(name="retrain_role", log_prints=True)
def retrain_role(
    role: str = "caller",
    profile: str = "cpu",
    data_dir: str = "data",
    datasets_dir: str = "artifacts/datasets",
    dvc_stage: str | None = "reorganize",
    runs_dir: str = "artifacts/retrain",
    evaluate_static: bool = True,
    evaluate_live: bool = True,
    eval_settings: str | None = None,
    eval_limit: int | None = None,
    live_limit: int | None = None,
    toolbench_ood: bool = True,
    eval_dir: str = "artifacts/eval",
    champion_dir: str = "artifacts/champion",
    promote: bool = True,
    results_dir: str = RESULTS_DIR,
    experiment: str = PIPELINE_EXPERIMENT,
) -> dict:
    """Retrain `role` (planner, caller or summarizer) from the champion global model on the current role dataset,
    evaluate it inside the champion agent, and promote it when the agent beats the champion agent. Needs champions
    (a promoted glpft_pipeline run)."""
    if role not in LOCAL_STAGES:
        raise ValueError(f"retrain_role retrains one of {list(LOCAL_STAGES)}, not {role!r}")
    logger = get_run_logger()
    started = time.perf_counter()
    run = flow_run_info()
    params = {k: v for k, v in locals().items() if k not in ("logger", "started", "run")}
    with ParentRun(experiment, f"retrain-{role}-{profile}-{run['name'] or 'local'}", params,
                   {"umi.kind": "retrain_role", "umi.role": role, "umi.profile": profile,
                    "prefect.flow_run_id": str(run["id"]),
                    "prefect.flow_run_name": str(run["name"])}) as parent:  # fmt: skip
        versions = build_datasets(datasets_dir, dvc_stage)
        champions = download_champions(("global", *LOCAL_STAGES), champion_dir)
        missing = [r for r, c in champions.items() if c is None]
        if missing:
            raise LookupError(f"no champion for {', '.join('umi-' + r for r in missing)}: run glpft_pipeline (and "
                              "promote) before retraining one role")  # fmt: skip
        state = _train(role, role, profile=profile, datasets_dir=datasets_dir, out_dir=Path(runs_dir) / role,
                       init_from=champions["global"]["path"], data_version=versions.get(role), parent=parent,
                       results_dir=results_dir, slots=1)  # fmt: skip
        stage = _stage_result(state)
        registered = register_models({role: {"checkpoint": stage["checkpoint"], "data_version": versions.get(role),
                                             "run_id": stage.get("run_id")}}, _config(profile), {})  # fmt: skip
        report, decision = None, None
        if registered[role] == champions[role]["version"]:
            decision = {"promote": False, "reason": f"umi-{role} version {registered[role]} is the champion already "
                                                    "(same start weights, data and config)", "moved": {}}  # fmt: skip
        elif evaluate_static or evaluate_live:
            roles = {r: champions[r]["path"] for r in LOCAL_STAGES}
            agents = [agent_spec("candidate", "multi", **{**roles, role: stage["checkpoint"]}),
                      agent_spec("champion", "multi", **roles)]  # fmt: skip
            options = eval_options(profile, evaluate_static, evaluate_live, eval_settings, eval_limit, live_limit,
                                   toolbench_ood, ("candidate", "champion"))  # fmt: skip
            key = evaluation_key(agents, options, data_dir)
            out = str(Path(eval_dir) / f"retrain-{role}-{key[:12]}")
            state = evaluation_task(results_dir, out)(agents, out, key, options, data_dir, parent_run_id=parent.run_id,
                                                      experiment=parent.experiment, return_state=True)  # fmt: skip
            report = {**state.result(), "cached": state.name == "Cached"}
            parent.log_metrics(evaluation_metrics(report))
            parent.log_artifact(report["files"]["table"], "evaluation")
            parent.log_artifact(report["files"]["chart"], "evaluation")
            cand = report["agents"].get("candidate")
            register_models({role: {"checkpoint": stage["checkpoint"], "data_version": versions.get(role),
                                    "run_id": stage.get("run_id")}}, _config(profile), {role: cand})  # fmt: skip
            decision = promote_models(registered, cand, report["agents"].get("champion"), promote,
                                      {r: c["version"] for r, c in champions.items()})  # compare-and-set
        else:
            decision = {"promote": False, "reason": "no evaluation: a role is only promoted on measured improvement",
                        "moved": {}}  # fmt: skip
        logger.info("retrain %s: %s", role, decision["reason"])
        parent.set_tags({"umi.promoted": decision["promote"], "umi.promotion_reason": decision["reason"][:5000],
                         "umi.promotion_evidence": json.dumps(decision.get("evidence") or {}, default=str)[:5000],
                         f"umi.version.{role}": registered[role]})  # fmt: skip
        minutes = (time.perf_counter() - started) / 60
        publish(key=f"retrain-{role}", title=f"Retrain {role} ({profile})", parent=parent, stages={role: stage},
                report=report, versions=registered, decision=decision,
                extra=[f"Prefect flow run `{run['name']}` ({run['id']}), {minutes:.1f} min. Started from umi-global "
                       f"version {champions['global']['version']}; data `{versions.get(role)}`."])  # fmt: skip
        return {"flow_run": run, "mlflow_run_id": parent.run_id, "experiment": parent.experiment, "role": role,
                "datasets": versions, "stage": stage, "evaluation": report, "versions": registered,
                "promotion": decision, "minutes": minutes}  # fmt: skip


if __name__ == "__main__":
    retrain_role()
