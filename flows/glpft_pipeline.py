"""The GLPFT pipeline as a Prefect flow:

    role datasets (DVC stage) -> backbone -> global fine-tune -> planner | caller | summarizer (concurrent up to
    `local_concurrency`) -> evaluation (static + live; backbone, single-LLM, α-UMi, [one-stage], [champion])
    -> registration (umi-global/planner/caller/summarizer) -> promotion (umi.promotion's rule)

Orchestration only: every task calls one umi library function (flows/tasks.py). One MLflow parent run per flow run;
each stage and the evaluation are its children. A re-run with unchanged data, config and code skips what is done
(Prefect task cache keyed on the stage fingerprints; see flows/tasks.py). Each run publishes the Prefect artifact
`glpft-pipeline`: the evaluation table, the stages and the registered versions, with links to their MLflow runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tasks import (
    PIPELINE_EXPERIMENT,
    RESULTS_DIR,
    ParentRun,
    agent_spec,
    build_datasets,
    default_local_concurrency,
    doc_style,
    download_champions,
    evaluation_key,
    evaluation_metrics,
    evaluation_task,
    flow_run_info,
    import_backbone,
    promote_models,
    publish,
    register_models,
    stage_fingerprint,
    training_task,
)
from umi.train.config import CONTROL_STAGE, LOCAL_STAGES, dataset_role

SINGLE_MATCHED = "single-matched"  # the compute-matched single-LLM control (umi.eval.run.REFERENCES)

ARTIFACT_KEY = "glpft-pipeline"


def _train(stage, name, *, profile, datasets_dir, out_dir, init_from, data_version, parent, results_dir, slots,
           runner=None):  # fmt: skip
    """Run (or, with a runner, submit) one training task; returns its state or future."""
    fingerprint = stage_fingerprint(stage, profile, datasets_dir, init_from, data_version)
    task = training_task(results_dir, out_dir, fingerprint, name)
    params = dict(stage=stage, profile=profile, datasets_dir=datasets_dir, out_dir=str(out_dir),
                  init_from=str(init_from), data_version=data_version, fingerprint=fingerprint,
                  parent_run_id=parent.run_id, experiment=parent.experiment, slots=slots)  # fmt: skip
    if runner is not None:
        return runner.submit(task, params)
    return task(**params, return_state=True)


def _stage_result(state) -> dict:
    result = dict(state.result())
    result["cached"] = state.name == "Cached"
    return result


def eval_options(profile: str, static: bool, live: bool, settings: str | None, limit: int | None,
                 live_limit: int | None, toolbench_ood: bool, selection: tuple[str, ...]) -> dict:  # fmt: skip
    """The evaluation's settings: the eval profile defaults to `full` for the paper profile, else `cpu`. `selection`:
    the agents also evaluated on the dev split, where promotion decides."""
    return {"static": static, "live": live, "settings": settings or ("full" if profile == "paper" else "cpu"),
            "limit": limit, "live_limit": live_limit, "toolbench_ood": toolbench_ood,
            "doc_style": doc_style(), "selection": list(selection)}  # fmt: skip


@flow(name="glpft_pipeline", log_prints=True)
def glpft_pipeline(
    profile: str = "cpu",
    data_dir: str = "data",
    datasets_dir: str = "artifacts/datasets",
    dvc_stage: str | None = "reorganize",
    backbone_source: str | None = None,
    backbone_dir: str = "artifacts/backbone",
    runs_dir: str = "artifacts/runs",
    one_stage_ablation: bool = False,
    one_stage_runs_dir: str = "artifacts/runs-one-stage",
    compute_matched_control: bool = True,
    local_concurrency: int | None = None,
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
    """Datasets -> backbone -> global -> the three local stages -> evaluation -> registration -> promotion.

    profile: training profile (cpu, paper, tiny or a YAML path). dvc_stage: the DVC stage that builds `datasets_dir`
    (None: use the folder as it is). one_stage_ablation: also train the locals straight from the backbone (the
    paper's one-stage ablation, in `one_stage_runs_dir`) and evaluate them. compute_matched_control: also train the
    single-LLM control with the total token budget of the GLPFT stages (the global model trained on for the local
    stages' tokens, umi.train.config.CONTROL_STAGE) and evaluate it as `single-matched`. local_concurrency: local stages trained
    at once (default: one per GPU, on CPU one per 8 cores, at least 1). eval_settings: umi.eval profile (cpu, full;
    default full for the paper profile, else cpu); eval_limit / live_limit: static trajectories per test set / live
    entries. toolbench_ood: also score the ToolBench out-of-domain set (its fixture must be there; False switches it off). promote: apply the
    promotion rule (umi.promotion) to the new models.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    run = flow_run_info()
    slots = default_local_concurrency() if local_concurrency is None else local_concurrency
    if slots < 1:
        raise ValueError(f"local_concurrency must be >= 1, got {local_concurrency}")
    params = {k: v for k, v in locals().items() if k not in ("logger", "started", "run")}
    with ParentRun(experiment, f"glpft-{profile}-{run['name'] or 'local'}", params,
                   {"umi.kind": "pipeline", "umi.profile": profile, "prefect.flow_run_id": str(run["id"]),
                    "prefect.flow_run_name": str(run["name"])}) as parent:  # fmt: skip
        versions = build_datasets(datasets_dir, dvc_stage)
        backbone = import_backbone(backbone_source, backbone_dir)
        common = dict(profile=profile, datasets_dir=datasets_dir, parent=parent, results_dir=results_dir)

        stages: dict[str, dict] = {}
        state = _train("global", "global", out_dir=Path(runs_dir) / "global", init_from=backbone,
                       data_version=versions.get("global"), slots=1, **common)  # fmt: skip
        stages["global"] = _stage_result(state)
        global_model = stages["global"]["checkpoint"]

        # The local stages (and the ablation's) at most `slots` at a time, each in its own process on its own slot.
        jobs = [(s, s, Path(runs_dir) / s, global_model) for s in LOCAL_STAGES]
        if compute_matched_control:  # the global model trained on for the locals' tokens: the fair single LLM
            jobs.append((CONTROL_STAGE, SINGLE_MATCHED, Path(runs_dir) / SINGLE_MATCHED, global_model))
        if one_stage_ablation:
            jobs += [(s, f"one-stage-{s}", Path(one_stage_runs_dir) / s, backbone) for s in LOCAL_STAGES]
        logger.info("training %d local stage(s), %d at a time", len(jobs), slots)
        with ThreadPoolTaskRunner(max_workers=slots) as runner:
            futures = {name: _train(stage, name, out_dir=out, init_from=init,
                                    data_version=versions.get(dataset_role(stage)),
                                    slots=slots, runner=runner, **common)
                       for stage, name, out, init in jobs}  # fmt: skip
            for name, future in futures.items():
                future.wait()
                stages[name] = _stage_result(future.state)

        # Evaluation: the candidate α-UMi agent against the baselines and the current champion, on the same data.
        candidate = {r: stages[r]["checkpoint"] for r in LOCAL_STAGES}
        agents = [agent_spec("backbone", "multi", planner=backbone, caller=backbone, summarizer=backbone),
                  agent_spec("single-llm", "single", model=global_model),
                  agent_spec("alpha-umi", "multi", **candidate)]  # fmt: skip
        if compute_matched_control:
            agents.append(agent_spec(SINGLE_MATCHED, "single", model=stages[SINGLE_MATCHED]["checkpoint"]))
        if one_stage_ablation:
            agents.append(agent_spec("one-stage", "multi", **{r: stages[f"one-stage-{r}"]["checkpoint"]
                                                               for r in LOCAL_STAGES}))  # fmt: skip
        champions = download_champions(LOCAL_STAGES, champion_dir)
        from umi.model_registry import checkpoint_fingerprint

        same_as_candidate = all(c is not None and c["fingerprint"] == checkpoint_fingerprint(candidate[r])
                                for r, c in champions.items())  # fmt: skip
        if all(c is not None for c in champions.values()) and not same_as_candidate:
            agents.append(agent_spec("champion", "multi", **{r: c["path"] for r, c in champions.items()}))
        report = None
        if evaluate_static or evaluate_live:
            options = eval_options(profile, evaluate_static, evaluate_live, eval_settings, eval_limit, live_limit,
                                   toolbench_ood, ("alpha-umi", "single-llm", "champion"))  # fmt: skip
            key = evaluation_key(agents, options, data_dir)
            out = str(Path(eval_dir) / f"pipeline-{key[:12]}")
            state = evaluation_task(results_dir, out)(agents, out, key, options, data_dir, parent_run_id=parent.run_id,
                                                      experiment=parent.experiment, return_state=True)  # fmt: skip
            report = {**state.result(), "cached": state.name == "Cached"}
            parent.log_metrics(evaluation_metrics(report))
            parent.log_artifact(report["files"]["table"], "evaluation")
            parent.log_artifact(report["files"]["chart"], "evaluation")

        evals = (report or {}).get("agents", {})
        alpha = evals.get("alpha-umi")
        registered = register_models(
            {r: {"checkpoint": s["checkpoint"], "data_version": versions.get(r), "run_id": s.get("run_id")}
             for r, s in stages.items() if r in ("global", *LOCAL_STAGES)},
            _config(profile),
            {**{r: alpha for r in LOCAL_STAGES}, "global": {**(alpha or {}), "single_llm": evals.get("single-llm")}},
        )  # fmt: skip
        champion_eval = evals.get("champion") if "champion" in evals else (alpha if same_as_candidate else None)
        decided_on = {r: (c["version"] if c else None) for r, c in champions.items()}  # compare-and-set
        decision = promote_models(registered, alpha, champion_eval, promote, decided_on)
        parent.set_tags({"umi.promoted": decision["promote"], "umi.promotion_reason": decision["reason"][:5000],
                         "umi.promotion_evidence": json.dumps(decision.get("evidence") or {}, default=str)[:5000],
                         **{f"umi.version.{r}": v for r, v in registered.items()}})  # fmt: skip
        minutes = (time.perf_counter() - started) / 60
        publish(key=ARTIFACT_KEY, title=f"GLPFT pipeline ({profile})", parent=parent, stages=stages, report=report,
                versions=registered, decision=decision,
                extra=[f"Prefect flow run `{run['name']}` ({run['id']}), {minutes:.1f} min. Data versions: "
                       + ", ".join(f"{r} `{v}`" for r, v in versions.items())])  # fmt: skip
        return {"flow_run": run, "mlflow_run_id": parent.run_id, "experiment": parent.experiment,
                "datasets": versions, "stages": stages, "evaluation": report, "versions": registered,
                "promotion": decision, "minutes": minutes}  # fmt: skip


def _config(profile: str) -> dict:
    from umi.train.config import load_config

    return load_config(profile).model_dump(mode="json")


if __name__ == "__main__":
    glpft_pipeline()
