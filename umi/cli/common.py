"""What several command groups share: the default folders and the default MLflow tracking store."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA = Path("data")  # imported trajectories
DEFAULT_DATASETS = Path("artifacts/datasets")  # the role datasets
DEFAULT_TRACKING = "sqlite:///mlflow.db"


def default_tracking(uri: str | None = None) -> str:
    """MLflow: `uri` when given, else MLFLOW_TRACKING_URI if set, else a sqlite store beside the checkout (artifacts
    in ./mlruns); set in the environment, for this process and the ones it starts."""
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.setdefault("MLFLOW_TRACKING_URI", DEFAULT_TRACKING)
    return os.environ["MLFLOW_TRACKING_URI"]
