"""The GLPFT pipeline as a Prefect flow:

    role datasets (DVC stage) -> backbone -> global fine-tune -> planner | caller | summarizer (concurrent up to
    `local_concurrency`) -> evaluation (static + live; backbone, single-LLM, α-UMi, [one-stage], [champion])
    -> registration (umi-global/planner/caller/summarizer) -> promotion (umi.registry.promote.judge)
    -> the agent Bento of the new champions (when the promotion moved them)

Orchestration only: every task calls one umi library function (flows/tasks.py). One MLflow parent run per flow run;
each stage and the evaluation are its children. A re-run with unchanged data, config and code skips what is done
(Prefect task cache keyed on the stage fingerprints; see flows/tasks.py). Each run publishes the Prefect artifact
`glpft-pipeline`: the evaluation table, the stages and the registered versions, with links to their MLflow runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows import tasks
from umi.eval.pipeline import evaluation_options
from umi.inference.agent_specs import AgentSpec
from umi.machine import default_local_concurrency
from umi.registry.promote import champion_to_compare
from umi.registry.tracking import ParentRun
from umi.train.config import CONTROL_STAGE, LOCAL_STAGES, dataset_role
from umi.vocabulary import SINGLE_MATCHED

ARTIFACT_KEY = "glpft-pipeline"


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
    bento: bool = True,
    bentofile: str = "bentofile.yaml",
    results_dir: str = tasks.RESULTS_DIR,
    experiment: str = tasks.PIPELINE_EXPERIMENT,
) -> dict:
    """Datasets -> backbone -> global -> the three local stages -> evaluation -> registration -> promotion -> Bento.

    profile: training profile (cpu, paper, tiny or a YAML path). dvc_stage: the DVC stage that builds `datasets_dir`
    (None: use the folder as it is). one_stage_ablation: also train the locals straight from the backbone (the
    paper's one-stage ablation, in `one_stage_runs_dir`) and evaluate them. compute_matched_control: also train the
    single-LLM control with the total token budget of the GLPFT stages (the global model trained on for the local
    stages' tokens, umi.train.config.CONTROL_STAGE) and evaluate it as `single-matched`. local_concurrency: local
    stages trained at once (default: one per GPU, on CPU one per 8 cores, at least 1). eval_settings: umi.eval
    profile (cpu, full; default full for the paper profile, else cpu); eval_limit / live_limit: static trajectories
    per test set / live entries. toolbench_ood: also score the ToolBench out-of-domain set (the file the UMI_FIXTURES
    setting names must be there; False switches it off). promote: apply the promotion rule (umi.registry.rule) to the
    new models. bento: build the agent Bento of `bentofile` from the champions when the promotion moved them.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    slots = default_local_concurrency() if local_concurrency is None else local_concurrency
    if slots < 1:
        raise ValueError(f"local_concurrency must be >= 1, got {local_concurrency}")
    params = {k: v for k, v in locals().items() if k not in ("logger", "started")}
    tags = {"umi.kind": "pipeline", "umi.profile": profile}
    with ParentRun.of_flow_run(experiment, f"glpft-{profile}", params, tags) as parent:
        run = parent.flow_run
        versions = tasks.build_datasets(datasets_dir, dvc_stage)
        backbone = tasks.import_backbone(backbone_source, backbone_dir)
        common = dict(profile=profile, datasets_dir=datasets_dir, parent=parent, results_dir=results_dir)

        global_run = dict(out_dir=Path(runs_dir) / "global", init_from=backbone, data_version=versions.get("global"))
        stages = {"global": tasks.stage_result(tasks.train("global", "global", slots=1, **global_run, **common))}
        global_model = stages["global"]["checkpoint"]

        # The local stages (and the ablation's) at most `slots` at a time, each in its own process on its own slot.
        jobs = [(s, s, Path(runs_dir) / s, global_model) for s in LOCAL_STAGES]
        if compute_matched_control:  # the global model trained on for the locals' tokens: the fair single LLM
            jobs.append((CONTROL_STAGE, SINGLE_MATCHED, Path(runs_dir) / SINGLE_MATCHED, global_model))
        if one_stage_ablation:
            jobs += [(s, f"one-stage-{s}", Path(one_stage_runs_dir) / s, backbone) for s in LOCAL_STAGES]
        logger.info("training %d local stage(s), %d at a time", len(jobs), slots)
        with ThreadPoolTaskRunner(max_workers=slots) as runner:
            futures = {}
            for stage, name, out_dir, init_from in jobs:
                job = dict(out_dir=out_dir, init_from=init_from, data_version=versions.get(dataset_role(stage)))
                futures[name] = tasks.train(stage, name, slots=slots, runner=runner, **job, **common)
            for name, future in futures.items():
                future.wait()
                stages[name] = tasks.stage_result(future.state)

        # Evaluation: the candidate α-UMi agent against the baselines and the current champion, on the same data.
        candidate = {r: stages[r]["checkpoint"] for r in LOCAL_STAGES}
        agents = [
            AgentSpec.multi("backbone", backbone, backbone, backbone),
            AgentSpec.single("single-llm", global_model),
            AgentSpec.multi("alpha-umi", **candidate),
        ]
        if compute_matched_control:
            agents.append(AgentSpec.single(SINGLE_MATCHED, stages[SINGLE_MATCHED]["checkpoint"]))
        if one_stage_ablation:
            one_stage = {r: stages[f"one-stage-{r}"]["checkpoint"] for r in LOCAL_STAGES}
            agents.append(AgentSpec.multi("one-stage", **one_stage))
        champions = tasks.download_champions(LOCAL_STAGES, champion_dir)
        if (champion := champion_to_compare(champions, candidate)) is not None:
            agents.append(AgentSpec.multi("champion", **champion))
        report = None
        if evaluate_static or evaluate_live:
            limits = (eval_settings, eval_limit, live_limit, toolbench_ood, ("alpha-umi", "single-llm", "champion"))
            options = evaluation_options(profile, evaluate_static, evaluate_live, *limits)
            specs = [a.params() for a in agents]
            report = tasks.evaluate(specs, options, data_dir, f"{eval_dir}/pipeline", results_dir, parent)

        evals = (report or {}).get("agents", {})
        alpha = evals.get("alpha-umi")
        trained = {r: s for r, s in stages.items() if r in ("global", *LOCAL_STAGES)}
        role_evals = {r: alpha for r in LOCAL_STAGES}
        role_evals["global"] = {**(alpha or {}), "single_llm": evals.get("single-llm")}
        registered = tasks.register_models(trained, versions, profile, role_evals)
        decision = tasks.promote_models(registered, evals, "alpha-umi", champions, promote)
        parent.record_promotion(decision, registered)
        bento_built = tasks.bento_after(decision, bento, bentofile)
        minutes = (time.perf_counter() - started) / 60
        data = ", ".join(f"{r} `{v}`" for r, v in versions.items())
        extra = [f"Prefect flow run `{run['name']}` ({run['id']}), {minutes:.1f} min. Data versions: {data}"]
        summary = dict(stages=stages, report=report, versions=registered, decision=decision, bento=bento_built)
        tasks.publish(key=ARTIFACT_KEY, title=f"GLPFT pipeline ({profile})", parent=parent, extra=extra, **summary)
        return {
            "flow_run": run,
            "mlflow_run_id": parent.run_id,
            "experiment": parent.experiment,
            "datasets": versions,
            "stages": stages,
            "evaluation": report,
            "versions": registered,
            "promotion": decision,
            "bento": bento_built,
            "minutes": minutes,
        }
