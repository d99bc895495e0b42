"""The GLPFT pipeline as a Prefect flow: role datasets (DVC stage) -> backbone -> global -> planner, caller, summarizer.

Orchestration only: every task calls one library function of `umi`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from umi.train.config import LOCAL_STAGES


def _env_with_venv() -> dict[str, str]:
    """dvc.yaml's command is `umi ...`: make sure the interpreter's own bin directory is on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@task(retries=1, retry_delay_seconds=5)
def build_datasets(datasets_dir: str) -> dict[str, str]:
    """`dvc repro`: rebuilds the role datasets only when data/, the code or params.yaml changed.
    Returns the DVC hash of each role's dataset folder (the data version recorded with every stage)."""
    logger = get_run_logger()
    subprocess.run([sys.executable, "-m", "dvc", "repro", "reorganize"], check=True, env=_env_with_venv())
    from umi.data.versions import dataset_versions

    versions = dataset_versions(datasets_dir)
    logger.info("dataset versions: %s", versions)
    return versions


@task(retries=2, retry_delay_seconds=10)
def import_backbone(source: str | None, out_dir: str) -> str:
    from umi.train.backbone import import_backbone as _import

    return str(_import(source, out_dir))


@task
def train_stage(stage: str, profile: str, datasets_dir: str, runs_dir: str, init_from: str, data_version: str | None):
    from umi.train.stages import train_stage as _train

    result = _train(stage, profile, datasets_dir, Path(runs_dir) / stage, init_from, data_version=data_version)
    return result.to_json()


@flow(name="glpft_pipeline", log_prints=True)
def glpft_pipeline(
    profile: str = "cpu",
    datasets_dir: str = "artifacts/datasets",
    backbone_source: str | None = None,
    backbone_dir: str = "artifacts/backbone",
    runs_dir: str = "artifacts/runs",
    from_backbone: bool = False,
) -> dict:
    """Datasets -> backbone -> global fine-tune -> the three local fine-tunes (from the global model, or from the
    backbone with `from_backbone`: the paper's one-stage ablation)."""
    versions = build_datasets(datasets_dir)
    backbone = import_backbone(backbone_source, backbone_dir)
    results: dict[str, dict] = {}
    start = backbone
    if not from_backbone:
        results["global"] = train_stage("global", profile, datasets_dir, runs_dir, backbone, versions.get("global"))
        start = results["global"]["checkpoint"]
    for stage in LOCAL_STAGES:  # one after another: on a 2-core machine concurrent stages only contend
        results[stage] = train_stage(stage, profile, datasets_dir, runs_dir, start, versions.get(stage))
    rows = "\n".join(
        f"| {s} | {r['metrics'].get('train_loss', float('nan')):.4f} | {r.get('run_id') or '-'} | `{r['checkpoint']}` |"
        for s, r in results.items()
    )
    create_markdown_artifact(
        key="glpft-stages",
        markdown=f"## GLPFT stages ({profile})\n\n| stage | train loss | MLflow run | checkpoint |\n|---|---|---|---|\n{rows}\n",
        description="Final training loss and checkpoint of each stage",
    )
    return {"datasets": versions, "stages": results}
