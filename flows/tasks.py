"""Prefect tasks shared by the flows (glpft_pipeline, retrain_role): each wraps one umi library call.

Caching: a training task's cache key is the stage fingerprint that `umi.train.stages` itself records in
`stage_state.json` (config, start weights, training data, data version) plus its output folder, so Prefect's cache and
the stage's own skip agree; an evaluation's key is the fingerprints of every checkpoint evaluated, the test data and
the evaluation settings. Results are persisted under `results_dir` (default `artifacts/prefect-results`). A cached
entry whose files are gone (a deleted stage folder or report) is not trusted: the task runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE

PIPELINE_EXPERIMENT = "umi-pipeline"
RESULTS_DIR = "artifacts/prefect-results"
MLFLOW_UI = "http://127.0.0.1:5000"  # what `mlflow ui` serves by default


# --- machine ----------------------------------------------------------------------------------------------------------
def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no torch / no driver: no GPU
        return 0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_local_concurrency() -> int:
    """How many of the three local stages to train at once: one per GPU (at most three); on CPU one per 8 cores (a
    stage already uses every core it gets; below 8 cores two stages only contend) and per 8 GB of memory."""
    gpus = gpu_count()
    if gpus:
        return min(3, gpus)
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gb = 8.0
    return max(1, min(3, cpu_count() // 8, int(memory_gb // 8)))


_pools: dict[tuple, queue.Queue] = {}
_pools_lock = threading.Lock()


def _device_pool(key: tuple, slots: int) -> queue.Queue:
    """One pool of device slots per (flow run, concurrency): GPU ids when there are GPUs (round-robin when there are
    more slots than GPUs), else CPU slots that split the cores evenly."""
    with _pools_lock:
        if key not in _pools:
            gpus = gpu_count()
            pool: queue.Queue = queue.Queue()
            for i in range(slots):
                pool.put(i % gpus if gpus else None)
            _pools[key] = pool
        return _pools[key]


# --- MLflow -----------------------------------------------------------------------------------------------------------
def mlflow_ui_base() -> str:
    import mlflow

    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else MLFLOW_UI


def run_link(run_id: str | None) -> str:
    """A link to an MLflow run in the UI (`mlflow ui` on this machine, or the tracking server)."""
    if not run_id:
        return "-"
    from mlflow import MlflowClient

    try:
        experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    except Exception:  # a run of another store
        return f"`{run_id}`"
    return f"[{run_id[:8]}]({mlflow_ui_base()}/#/experiments/{experiment_id}/runs/{run_id})"


class ParentRun:
    """The pipeline's MLflow run, opened with the client API (no fluent active run, so stages in other processes and
    threads nest under it by id): FINISHED on success, FAILED on an exception."""

    def __init__(self, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]):
        from mlflow import MlflowClient

        from umi.model_registry import ensure_experiment

        self.client = MlflowClient()
        self.experiment_id = ensure_experiment(experiment)
        self.experiment = experiment
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:6000])

    def __enter__(self) -> "ParentRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if exc_type else "FINISHED")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value)[:5000])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


def flow_run_info() -> dict[str, str | None]:
    from prefect.runtime import flow_run

    return {"id": str(flow_run.id) if flow_run.id else None, "name": flow_run.name}


# --- data and backbone ------------------------------------------------------------------------------------------------
def _env_with_venv() -> dict[str, str]:
    """dvc.yaml's command is `umi ...`: the interpreter's own bin directory goes on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def build_datasets(datasets_dir: str, dvc_stage: str | None = "reorganize") -> dict[str, str]:
    """`dvc repro <dvc_stage>`: DVC rebuilds the role datasets only when data/, the code or params.yaml changed.
    dvc_stage None: use `datasets_dir` as it is. Returns {role: data version} (umi.data.versions)."""
    from umi.data.versions import dataset_versions

    logger = get_run_logger()
    if dvc_stage:
        done = subprocess.run([sys.executable, "-m", "dvc", "repro", dvc_stage], env=_env_with_venv(),
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"dvc repro {dvc_stage} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
        logger.info("dvc repro %s: %s", dvc_stage, done.stdout.strip().splitlines()[-1:] or "")
    if not Path(datasets_dir).is_dir():
        raise FileNotFoundError(f"role datasets folder {datasets_dir} not found (run `umi data reorganize` or dvc)")
    versions = dataset_versions(datasets_dir)
    missing = [r for r in ("global", "planner", "caller", "summarizer") if r not in versions]
    if missing:
        raise FileNotFoundError(f"{datasets_dir} has no train.jsonl for {', '.join(missing)}")
    logger.info("dataset versions: %s", versions)
    return versions


@task(retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def import_backbone(source: str | None, out_dir: str) -> str:
    """The backbone as a plain checkpoint (a no-op when `out_dir` already holds an import of `source`)."""
    from umi.train.backbone import import_backbone as _import

    return str(_import(source, out_dir))


# --- training ---------------------------------------------------------------------------------------------------------
def stage_fingerprint(stage: str, profile: str, datasets_dir: str, init_from: str, data_version: str | None) -> str:
    from umi.train.config import load_config
    from umi.train.stages import stage_fingerprint as fingerprint

    return fingerprint(stage, load_config(profile), datasets_dir, init_from, data_version)[0]


def stage_complete(out_dir: str | Path, fingerprint: str) -> bool:
    """Whether `out_dir` holds the finished stage of that fingerprint (what train_stage would skip)."""
    from umi.train.stages import STAGE_MANIFEST, STATE_FILE

    out_dir = Path(out_dir)
    try:
        state = json.loads((out_dir / STATE_FILE).read_text())
        manifest = json.loads((out_dir / "model" / STAGE_MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return bool(state.get("complete")) and state.get("fingerprint") == fingerprint == manifest.get("fingerprint")


@task(retries=1, retry_delay_seconds=10, persist_result=True,
      cache_policy=INPUTS - "parent_run_id" - "experiment" - "slots")  # fmt: skip
def train_stage(
    stage: str,
    profile: str,
    datasets_dir: str,
    out_dir: str,
    init_from: str,
    data_version: str | None,
    fingerprint: str,
    parent_run_id: str | None = None,
    experiment: str = PIPELINE_EXPERIMENT,
    slots: int = 1,
) -> dict:
    """One GLPFT stage in its own process (flows/stage_worker.py says why), on a device slot of this flow run.
    `fingerprint` (the stage's own, see stage_fingerprint) is part of the cache key. Returns StageResult.to_json()."""
    import mlflow
    from prefect.runtime import flow_run

    logger = get_run_logger()
    pool = _device_pool((flow_run.id, slots), slots)
    device = pool.get()
    try:
        env = _env_with_venv()
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()  # the same store, whatever set it in this process
        threads = max(1, cpu_count() // slots)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"umi-{stage}-") as tmp:
            request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
            request.write_text(json.dumps({"stage": stage, "profile": profile, "datasets_dir": datasets_dir,
                                           "out_dir": out_dir, "init_from": init_from, "data_version": data_version,
                                           "parent_run_id": parent_run_id, "experiment": experiment}))  # fmt: skip
            where = f"GPU {device}" if device is not None else f"{env['OMP_NUM_THREADS']} CPU threads"
            logger.info("training %s from %s into %s (%s)", stage, init_from, out_dir, where)
            returncode = run_stage_process([sys.executable, "-m", "flows.stage_worker", str(request), str(result)],
                                           env)  # fmt: skip
            if returncode != 0:
                raise RuntimeError(f"training stage {stage} failed (exit {returncode}); its output is above")
            out = json.loads(result.read_text())
    finally:
        pool.put(device)
    if out.get("skipped"):
        logger.info("%s was already trained (same fingerprint): %s", stage, out["checkpoint"])
    logger.info("%s: train loss %s, checkpoint %s", stage, out["metrics"].get("train_loss"), out["checkpoint"])
    return out


def run_stage_process(command: Sequence[str], env: Mapping[str, str], stop_timeout_s: float = 30.0) -> int:
    """Run a stage worker and wait for it; it never outlives this flow. The worker asks the kernel for SIGTERM when
    this process dies (flows.stage_worker.die_with_parent, told this pid); when the wait here ends any other way
    (the task cancelled, an exception, Ctrl-C in this thread), it is sent SIGTERM, then SIGKILL after
    `stop_timeout_s`. It stays in this process group, so a terminal's Ctrl-C reaches it too."""
    from flows.stage_worker import PARENT_PID_ENV

    proc = subprocess.Popen(list(command), env={**env, PARENT_PID_ENV: str(os.getpid())})
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def training_task(results_dir: str, out_dir: str, fingerprint: str, name: str):
    """train_stage with results persisted in `results_dir`; the cache is refreshed when the stage folder does not
    hold the finished stage any more."""
    return train_stage.with_options(
        result_storage=Path(results_dir).resolve(),
        refresh_cache=not stage_complete(out_dir, fingerprint),
        task_run_name=f"train-{name}",
    )


# --- registry ---------------------------------------------------------------------------------------------------------
@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def download_champions(roles: Sequence[str], dst_root: str) -> dict[str, dict | None]:
    """{role: {"path", "version", "fingerprint"} of its champion downloaded under dst_root/<role>, or None}."""
    from umi.champions import reconcile
    from umi.model_registry import TAG_FINGERPRINT, champion_version, download_role

    reconcile()  # a promotion a dead process left halfway is put back first: never evaluate a mixed champion set
    out: dict[str, dict | None] = {}
    for role in roles:
        version = champion_version(role)
        if version is None:
            out[role] = None
            continue
        path = download_role(role, Path(dst_root) / role, str(version.version))
        out[role] = {"path": str(path), "version": str(version.version),
                     "fingerprint": version.tags.get(TAG_FINGERPRINT)}  # fmt: skip
    return out


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_models(candidates: Mapping[str, Mapping[str, Any]], config: dict, evaluations: Mapping[str, Any]) -> dict:
    """Register each role's checkpoint (`{"checkpoint", "data_version", "run_id"}`) with the config and its
    evaluation; {role: version}."""
    from umi.model_registry import register_role_model

    versions = {}
    for role, c in candidates.items():
        v = register_role_model(role, c["checkpoint"], data_version=c.get("data_version"), config=config,
                                evaluation=evaluations.get(role), run_id=c.get("run_id"))  # fmt: skip
        versions[role] = str(v.version)
    get_run_logger().info("registered versions: %s", versions)
    return versions


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def promote_models(
    versions: Mapping[str, str],
    candidate: dict | None,
    champion: dict | None,
    enabled: bool,
    expected_champions: Mapping[str, str | None] | None = None,
) -> dict:
    """The promotion rule of umi.promotion for these versions; {"promote", "reason", "moved", ...}.
    expected_champions: {role: version or None} the champion evaluation was made on (compare-and-set: when they are
    no longer the champions, nothing moves and the task fails with umi.champions.PromotionConflict)."""
    from umi.promotion import decide, promote_if_better

    if not enabled:
        d = decide(candidate, champion, has_champion=True)
        return {"promote": False, "reason": "promotion switched off", "moved": {}, "rule_said": d.reason,
                "evidence": d.evidence}  # fmt: skip
    decision, moved = promote_if_better(versions, candidate, champion, expected_champions=expected_champions)
    get_run_logger().info("promotion: %s (%s)", "promoted" if decision.promote else "not promoted", decision.reason)
    return {**decision.to_dict(), "moved": {r: list(m) for r, m in moved.items()}}


# --- evaluation -------------------------------------------------------------------------------------------------------
def _files_sha(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path).encode())
        if path.is_file():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def evaluation_key(agents: Sequence[Mapping[str, str]], options: Mapping[str, Any], data_dir: str) -> str:
    """What decides an evaluation's result: the weights of every checkpoint (stage fingerprints), the test data
    (data_dir's JSONL and params.yaml, whose split fractions pick the test split) and the options."""
    from umi.vocabulary import checkpoint_fingerprint as weights_fingerprint

    weights = {a["name"]: {role: weights_fingerprint(path) for role, path in a.items() if role not in ("name", "kind")}
               for a in agents}  # fmt: skip
    data = _files_sha(sorted(Path(data_dir).rglob("*.jsonl")) + [Path("params.yaml")])
    blob = json.dumps({"agents": list(agents), "weights": weights, "data": data, "options": options},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


@task(persist_result=True, cache_policy=INPUTS - "parent_run_id" - "experiment")
def evaluate_agents(
    agents: list[dict],
    out_dir: str,
    key: str,
    options: dict,
    data_dir: str,
    parent_run_id: str | None = None,
    experiment: str = PIPELINE_EXPERIMENT,
) -> dict:
    """umi.eval.run.evaluate on the agents (AgentSpec dicts); returns the report (to_dict) and its Markdown table.
    `key` (evaluation_key) is part of the cache key."""
    from umi.eval.agents import AgentSpec
    from umi.eval.run import DEFAULT_TOOLBENCH_OOD, evaluate

    specs = [AgentSpec(**a) for a in agents]
    ood = DEFAULT_TOOLBENCH_OOD if options.get("toolbench_ood") else None
    report = evaluate(specs, out_dir=out_dir, static=options["static"], live=options["live"], data_dir=data_dir,
                      toolbench_ood=ood, limit=options.get("limit"), live_limit=options.get("live_limit"),
                      doc_style=options.get("doc_style", "compact"), settings=options.get("settings"),
                      selection=options.get("selection", ()), tracking=True, experiment=experiment,
                      parent_run_id=parent_run_id)  # fmt: skip
    return {**report.to_dict(), "table": report.table_markdown()}


def evaluation_task(results_dir: str, out_dir: str):
    return evaluate_agents.with_options(
        result_storage=Path(results_dir).resolve(),
        refresh_cache=not (Path(out_dir) / "eval.json").exists(),
    )


def doc_style(params: str | Path = "params.yaml") -> str:
    """The tool-doc style the role datasets were built with (umi.params)."""
    from umi.params import dataset_doc_style

    return dataset_doc_style(params)


def agent_spec(name: str, kind: str, **roles: str) -> dict:
    """An AgentSpec as a plain dict (a task input Prefect can hash and persist)."""
    from umi.eval.agents import AgentSpec

    spec = AgentSpec(name=name, kind=kind, **{k: str(v) for k, v in roles.items()})  # validated here
    return {k: v for k, v in {"name": spec.name, "kind": spec.kind, "planner": spec.planner, "caller": spec.caller,
                              "summarizer": spec.summarizer, "model": spec.model}.items() if v is not None}  # fmt: skip


# --- reporting --------------------------------------------------------------------------------------------------------
def evaluation_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's numbers as flat MLflow metric names: <agent>.<test set>.<metric>, <agent>.live.<metric>."""
    from umi.eval.report import metric_key

    out: dict[str, float] = {}
    for name, result in (report.get("agents") or {}).items():
        sections = [(t, m) for t, m in (result.get("static") or {}).items()] + [("live", result.get("live") or {})]
        for section, metrics in sections:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[metric_key(name, section, key)] = float(value)
    return out


def publish(
    *,
    key: str,
    title: str,
    parent: ParentRun,
    stages: Mapping[str, Mapping[str, Any]],
    report: Mapping[str, Any] | None,
    versions: Mapping[str, str],
    decision: Mapping[str, Any],
    extra: Sequence[str] = (),
) -> str:
    """The run's Prefect artifact (the evaluation table, the stages and registered versions with links to their
    MLflow runs, the promotion decision), also logged to the parent MLflow run. Returns the Markdown."""
    from prefect.artifacts import create_markdown_artifact

    lines = [f"## {title}", "", *extra, "",
             f"MLflow: pipeline run {run_link(parent.run_id)} (experiment `{parent.experiment}`); "
             f"open the UI with `mlflow ui --backend-store-uri {_tracking_for_ui()}`.", ""]  # fmt: skip
    if stages:
        lines += ["### Training", "", "| stage | train loss | cached | MLflow run | checkpoint |",
                  "|---|---|---|---|---|"]
        for name, r in stages.items():
            loss = r.get("metrics", {}).get("train_loss")
            lines.append(f"| {name} | {'-' if loss is None else f'{loss:.4f}'} | "
                         f"{'yes' if r.get('cached') or r.get('skipped') else 'no'} | {run_link(r.get('run_id'))} | "
                         f"`{r.get('checkpoint')}` |")  # fmt: skip
        lines.append("")
    if report is not None:
        cached = " (cached: these checkpoints, data and settings were evaluated before)" if report.get("cached") else ""
        lines += ["### Evaluation", "", report.get("table", "").strip(), "",
                  f"Evaluation run {run_link(report.get('run_id'))}{cached}; report `{report['files']['table']}`, "
                  f"chart `{report['files']['chart']}`.", ""]  # fmt: skip
        if report.get("skipped"):
            lines += [f"Not evaluated: {json.dumps(report['skipped'])}", ""]
    if versions:
        lines += ["### Registered models", "", "| model | version |", "|---|---|"]
        lines += [f"| umi-{role} | {v} |" for role, v in versions.items()] + [""]
    verdict = "promoted to champion" if decision.get("promote") else "not promoted"
    lines += ["### Promotion", "", f"**{verdict}**: {decision.get('reason', '-')}", ""]
    markdown = "\n".join(lines)
    create_markdown_artifact(key=key, markdown=markdown, description=title)
    parent.log_text(markdown, "summary.md")
    return markdown


def _tracking_for_ui() -> str:
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        try:  # the relative form when the store is in the working directory (sqlite:///mlflow.db)
            return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve().relative_to(Path.cwd()))
        except ValueError:
            return uri
    return uri
