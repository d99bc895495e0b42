"""Fine-tune one α-UMi role again, without retraining the rest: the modularity the paper argues for (new or changed
tools mean a new caller, not a new planner and summarizer).

    role datasets (DVC stage) -> champion global checkpoint (umi-global@champion) -> fine-tune <role> from it
    -> register umi-<role> -> evaluate the agent with the new role and the two other champion roles, against the
    champion agent, on the same data -> promote umi-<role> only when the agent improves (umi.registry.promote.judge)
    -> the agent Bento of the new champions (when it was promoted)

Publishes the Prefect artifact `retrain-<role>` with the evaluation table and links to the MLflow runs.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from flows import tasks
from umi.eval.pipeline import evaluation_options
from umi.inference.agent_specs import AgentSpec
from umi.registry.tracking import ParentRun
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
    bento: bool = True,
    bentofile: str = "bentofile.yaml",
    results_dir: str = tasks.RESULTS_DIR,
    experiment: str = tasks.PIPELINE_EXPERIMENT,
) -> dict:
    """Retrain `role` (planner, caller or summarizer) from the champion global model on the current role dataset,
    evaluate it inside the champion agent, and promote it when the agent beats the champion agent. Needs champions
    (a promoted glpft_pipeline run). bento: build the agent Bento of `bentofile` when the new role was promoted."""
    if role not in LOCAL_STAGES:
        raise ValueError(f"retrain_role retrains one of {list(LOCAL_STAGES)}, not {role!r}")
    logger = get_run_logger()
    started = time.perf_counter()
    params = {k: v for k, v in locals().items() if k not in ("logger", "started")}
    tags = {"umi.kind": "retrain_role", "umi.role": role, "umi.profile": profile}
    with ParentRun.of_flow_run(experiment, f"retrain-{role}-{profile}", params, tags) as parent:
        run = parent.flow_run
        versions = tasks.build_datasets(datasets_dir, dvc_stage)
        champions = tasks.download_champions(["global", *LOCAL_STAGES], champion_dir)
        missing = [f"umi-{r}" for r, c in champions.items() if c is None]
        if missing:
            first = "run glpft_pipeline (and promote) before retraining one role"
            raise LookupError(f"no champion for {', '.join(missing)}: {first}")
        job = dict(out_dir=f"{runs_dir}/{role}", init_from=champions["global"]["path"], data_version=versions.get(role))
        common = dict(profile=profile, datasets_dir=datasets_dir, parent=parent, results_dir=results_dir)
        stage = tasks.stage_result(tasks.train(role, role, slots=1, **job, **common))
        registered = tasks.register_models({role: stage}, versions, profile, {})
        report = None
        # a version that is the champion already (same start weights, data and config) needs no evaluation
        if registered[role] != champions[role]["version"] and (evaluate_static or evaluate_live):
            roles = {r: champions[r]["path"] for r in LOCAL_STAGES}
            candidate = AgentSpec.multi("candidate", **{**roles, role: stage["checkpoint"]})
            limits = (eval_settings, eval_limit, live_limit, toolbench_ood, ("candidate", "champion"))
            options = evaluation_options(profile, evaluate_static, evaluate_live, *limits)
            specs = [candidate.params(), AgentSpec.multi("champion", **roles).params()]
            report = tasks.evaluate(specs, options, data_dir, f"{eval_dir}/retrain-{role}", results_dir, parent)
            tasks.register_models({role: stage}, versions, profile, {role: report["agents"].get("candidate")})
        decision = tasks.promote_models(registered, (report or {}).get("agents", {}), "candidate", champions, promote)
        logger.info("retrain %s: %s", role, decision["reason"])
        parent.record_promotion(decision, registered)
        bento_built = tasks.bento_after(decision, bento, bentofile)
        minutes = (time.perf_counter() - started) / 60
        started_from = f"umi-global version {champions['global']['version']}; data `{versions.get(role)}`"
        extra = [f"Prefect flow run `{run['name']}` ({run['id']}), {minutes:.1f} min. Started from {started_from}."]
        summary = dict(stages={role: stage}, report=report, versions=registered, decision=decision, bento=bento_built)
        tasks.publish(key=f"retrain-{role}", title=f"Retrain {role} ({profile})", parent=parent, extra=extra, **summary)
        return {
            "flow_run": run,
            "mlflow_run_id": parent.run_id,
            "experiment": parent.experiment,
            "role": role,
            "datasets": versions,
            "stage": stage,
            "evaluation": report,
            "versions": registered,
            "promotion": decision,
            "bento": bento_built,
            "minutes": minutes,
        }
