"""Prefect tasks shared by the flows (glpft_pipeline, retrain_role), each a wrap of one umi library call, and the
glue both flows use.

Caching: a training task's cache key is the stage fingerprint that umi.train.stages itself records (config, start
weights, training data, data version) plus its request (output folder included), so Prefect's cache and the stage's
own skip agree; an evaluation's is umi.eval.pipeline.evaluation_key. Results are persisted under `results_dir`. A
cached entry whose files are gone (a deleted stage folder or report) is not trusted: the task runs again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE, Inputs

PIPELINE_EXPERIMENT = "umi-pipeline"
RESULTS_DIR = "artifacts/prefect-results"
TRACKING = ["parent_run_id", "experiment"]  # where a task's MLflow runs go: not part of what it computes


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def build_datasets(datasets_dir: str, dvc_stage: str | None = "reorganize") -> dict[str, str]:
    """The role datasets (`dvc repro`, umi.data.versions.reproduce_datasets); {role: data version}."""
    from umi.data.versions import reproduce_datasets

    versions, dvc_said = reproduce_datasets(datasets_dir, dvc_stage)
    get_run_logger().info("dvc repro %s: %s; dataset versions: %s", dvc_stage, dvc_said, versions)
    return versions


@task(retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def import_backbone(source: str | None, out_dir: str) -> str:
    """The backbone as a plain checkpoint (a no-op when `out_dir` already holds an import of `source`)."""
    from umi.train.backbone import import_backbone

    return str(import_backbone(source, out_dir))


@task(retries=1, retry_delay_seconds=10, persist_result=True, cache_policy=Inputs(exclude=[*TRACKING, "slots"]))
def train_stage(request: dict, fingerprint: str, parent_run_id: str | None, experiment: str, slots: int) -> dict:
    """One GLPFT stage (umi.train.worker's request) in a process of its own, on a device slot of this flow run;
    `fingerprint` (the stage's own) is part of the cache key. Returns StageResult.to_json()."""
    from prefect.runtime import flow_run

    from umi.machine import cpu_count, device_pool
    from umi.train.worker import train_in_worker

    logger, pool = get_run_logger(), device_pool((flow_run.id, slots), slots)
    device = pool.get()
    try:
        tracking = {"parent_run_id": parent_run_id, "experiment": experiment}
        out = train_in_worker({**request, **tracking}, device, max(1, cpu_count() // slots), log=logger)
    finally:
        pool.put(device)
    if out.get("skipped"):
        logger.info("%s was already trained (same fingerprint): %s", request["stage"], out["checkpoint"])
    loss = out["metrics"].get("train_loss")
    logger.info("%s: train loss %s, checkpoint %s", request["stage"], loss, out["checkpoint"])
    return out


def train(stage: str, name: str, *, out_dir, init_from, data_version, slots: int, runner=None, **pipeline):
    """train_stage as train-<name> (`pipeline`: profile, datasets_dir, parent, results_dir), its result persisted in
    results_dir, its cache refreshed when the stage folder does not hold the finished stage any more. With a runner
    it is submitted (its future), else run (its state)."""
    from umi.train.config import load_config
    from umi.train.stages import stage_complete, stage_fingerprint

    profile, datasets_dir, parent = pipeline["profile"], pipeline["datasets_dir"], pipeline["parent"]
    fingerprint = stage_fingerprint(stage, load_config(profile), datasets_dir, init_from, data_version)[0]
    request = dict(stage=stage, profile=profile, datasets_dir=datasets_dir, out_dir=str(Path(out_dir)))
    request.update(init_from=str(init_from), data_version=data_version)
    storage, refresh = Path(pipeline["results_dir"]).resolve(), not stage_complete(out_dir, fingerprint)
    task = train_stage.with_options(result_storage=storage, refresh_cache=refresh, task_run_name=f"train-{name}")
    args = dict(request=request, fingerprint=fingerprint, parent_run_id=parent.run_id, experiment=parent.experiment)
    return runner.submit(task, {**args, "slots": slots}) if runner else task(**args, slots=slots, return_state=True)


def stage_result(state) -> dict:
    """A training task's StageResult JSON, and whether it came from the cache."""
    return {**state.result(), "cached": state.name == "Cached"}


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def download_champions(roles: list[str], dst_root: str) -> dict[str, dict | None]:
    """{role: {"path", "version", "fingerprint"} of its champion downloaded under dst_root/<role>, or None}."""
    from umi.registry.aliases import download_champions

    return download_champions(roles, dst_root)


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_models(stages: dict[str, dict], data_versions: dict, profile: str, evaluations: dict[str, Any]) -> dict:
    """Register the checkpoint of each role's stage (stage_result) with its data version, the training config of
    `profile`, its training run and the role's evaluation; {role: version}."""
    from umi.registry.store import register_role_model
    from umi.train.config import load_config

    config, versions = load_config(profile).model_dump(mode="json"), {}
    for role, stage in stages.items():
        found = dict(data_version=data_versions.get(role), evaluation=evaluations.get(role), run_id=stage.get("run_id"))
        versions[role] = str(register_role_model(role, stage["checkpoint"], config=config, **found).version)
    get_run_logger().info("registered versions: %s", versions)
    return versions


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def promote_models(versions: dict, evaluations: dict, candidate: str, champions: dict, enabled: bool) -> dict:
    """The promotion judgement (umi.registry.promote.judge) and the move when it says so."""
    from umi.registry.promote import judge

    decision = judge(versions, evaluations, candidate, champions, enabled=enabled)
    verdict = "promoted" if decision["promote"] else "not promoted"
    get_run_logger().info("promotion: %s (%s)", verdict, decision["reason"])
    return decision


@task(persist_result=True, cache_policy=Inputs(exclude=TRACKING))
def evaluate_agents(agents: list, out_dir: str, key: str, options: dict, data_dir: str, parent_run_id, experiment):
    """umi.eval.pipeline.evaluate_agents; `key` (umi.eval.pipeline.evaluation_key) is part of the cache key."""
    from umi.agent.loop import build_agent
    from umi.eval.pipeline import evaluate_agents

    return evaluate_agents(agents, out_dir, options, data_dir, parent_run_id, experiment, build_agent)


def evaluate(agents: list[dict], options: dict, data_dir: str, out_prefix: str, results_dir: str, parent) -> dict:
    """evaluate_agents into `<out_prefix>-<key>` (cached on the key unless its eval.json is gone), its numbers, table
    and chart logged to the parent run; the report, and whether it came from the cache."""
    from umi.eval.pipeline import evaluation_key
    from umi.eval.publish import log_evaluation

    key = evaluation_key(agents, options, data_dir)
    out = str(Path(f"{out_prefix}-{key[:12]}"))
    storage, refresh = Path(results_dir).resolve(), not (Path(out) / "eval.json").exists()
    task = evaluate_agents.with_options(result_storage=storage, refresh_cache=refresh)
    state = task(agents, out, key, options, data_dir, parent.run_id, parent.experiment, return_state=True)
    report = {**state.result(), "cached": state.name == "Cached"}
    log_evaluation(parent, report)
    return report


@task(retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def build_bento(bentofile: str, alias: str = "champion") -> str:
    """The agent Bento of the role models with `alias` (umi.serve.bento_build); its tag."""
    from umi.serve.bento_build import build_agent_bento

    tag = build_agent_bento(bentofile, alias=alias).tag
    get_run_logger().info("built the agent Bento %s", tag)
    return tag


def bento_after(decision: dict, enabled: bool, bentofile: str) -> dict | None:
    """build_bento when the promotion moved a champion and a bentofile is there: {"tag"}, or {"error"} (the run's
    results stand when only the Bento failed); None when none was built."""
    if not (enabled and decision.get("moved") and Path(bentofile).is_file()):
        return None
    state = build_bento(bentofile, return_state=True)
    return {"tag": state.result()} if state.is_completed() else {"error": str(state.result(raise_on_failure=False))}


def publish(*, key: str, title: str, parent, **sections: Any) -> str:
    """The run's Prefect artifact (umi.eval.publish.summary_markdown), also logged to the parent run; the Markdown."""
    from prefect.artifacts import create_markdown_artifact

    from umi.eval.publish import summary_markdown

    markdown = summary_markdown(title=title, run_id=parent.run_id, experiment=parent.experiment, **sections)
    create_markdown_artifact(key=key, markdown=markdown, description=title)
    parent.log_text(markdown, "summary.md")
    return markdown
