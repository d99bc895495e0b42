"""MLflow tracking of a pipeline run: the parent run its stages and evaluations nest under, links into the MLflow UI,
and the Prefect flow run it belongs to."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from umi.registry.tags import TAG_PROMOTED, TAG_PROMOTION_EVIDENCE, TAG_PROMOTION_REASON, TAG_VERSION_PREFIX

MLFLOW_UI = "http://127.0.0.1:5000"  # what `mlflow ui` serves by default


def mlflow_ui_base() -> str:
    import mlflow

    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else MLFLOW_UI


def tracking_for_ui() -> str:
    """The tracking URI to give `mlflow ui --backend-store-uri`: relative when the store is in the working directory
    (sqlite:///mlflow.db)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        try:
            return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve().relative_to(Path.cwd()))
        except ValueError:
            return uri
    return uri


def run_link(run_id: str | None) -> str:
    """A Markdown link to an MLflow run in the UI (`mlflow ui` on this machine, or the tracking server)."""
    if not run_id:
        return "-"
    from mlflow import MlflowClient

    try:
        experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    except Exception:  # a run of another store
        return f"`{run_id}`"
    return f"[{run_id[:8]}]({mlflow_ui_base()}/#/experiments/{experiment_id}/runs/{run_id})"


def flow_run_info() -> dict[str, str | None]:
    """{"id", "name"} of the Prefect flow run this code runs in (None outside one)."""
    from prefect.runtime import flow_run

    return {"id": str(flow_run.id) if flow_run.id else None, "name": flow_run.name}


class ParentRun:
    """The pipeline's MLflow run, opened with the client API (no fluent active run, so stages in other processes and
    threads nest under it by id): FINISHED on success, FAILED on an exception."""

    def __init__(self, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]):
        from mlflow import MlflowClient

        from umi.registry.store import ensure_experiment

        self.client = MlflowClient()
        self.experiment_id = ensure_experiment(experiment)
        self.experiment = experiment
        self.flow_run: dict[str, str | None] = {"id": None, "name": None}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:6000])

    @classmethod
    def of_flow_run(cls, experiment: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> "ParentRun":
        """The parent run of the Prefect flow run this code runs in: named `<name>-<flow run name>`, tagged with the
        flow run's id and name (also in `.flow_run`, flow_run_info())."""
        info = flow_run_info()
        tags = {**tags, "prefect.flow_run_id": str(info["id"]), "prefect.flow_run_name": str(info["name"])}
        parent = cls(experiment, f"{name}-{info['name'] or 'local'}", params, tags)
        parent.flow_run = info
        return parent

    def __enter__(self) -> "ParentRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if exc_type else "FINISHED")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value)[:5000])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
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

    def record_promotion(self, decision: Mapping[str, Any], versions: Mapping[str, str]) -> None:
        """The promotion decision (umi.registry.promote.judge) and the registered versions, as tags of this run."""
        self.set_tags(
            {
                TAG_PROMOTED: decision["promote"],
                TAG_PROMOTION_REASON: decision["reason"][:5000],
                TAG_PROMOTION_EVIDENCE: json.dumps(decision.get("evidence") or {}, default=str)[:5000],
                **{f"{TAG_VERSION_PREFIX}{r}": v for r, v in versions.items()},
            }
        )
