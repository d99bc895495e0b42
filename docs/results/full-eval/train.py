"""Train only the stages a full-evaluation stage needs, as `make run` trains them (flows/glpft_pipeline: the same
data import, `dvc repro`, backbone, stage worker, thread count and out folders), without the rest of `make run`.

    python docs/results/full-eval/train.py global [planner caller summarizer single-matched]

A local stage (and the compute-matched control, `single-matched`) starts from artifacts/runs/global/model: train
`global` first. Called by `run.sh train`, which sets the portable numerics.
"""

from __future__ import annotations

import os
import sys

from umi.cli.common import DEFAULT_DATA
from umi.cli.data import import_bfcl_cmd
from umi.data.versions import reproduce_datasets
from umi.machine import cpu_count, default_local_concurrency, gpu_count
from umi.train.backbone import import_backbone
from umi.train.config import dataset_role
from umi.train.worker import train_in_worker
from umi.vocabulary import CONTROL_STAGE, LOCAL_STAGES, SINGLE_MATCHED

NAMES = ("global", *LOCAL_STAGES, SINGLE_MATCHED)


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in NAMES]
    if not names or unknown:
        sys.exit(f"stages to train: some of {', '.join(NAMES)} (unknown: {', '.join(unknown) or 'none given'})")
    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    import_bfcl_cmd(out=DEFAULT_DATA / "bfcl", category=None, max_reject_share=0.0)
    versions, _ = reproduce_datasets("artifacts/datasets", "reorganize")
    backbone = str(import_backbone(None, "artifacts/backbone"))
    for name in sorted(names, key=NAMES.index):  # global before the stages that start from it
        stage = CONTROL_STAGE if name == SINGLE_MATCHED else name
        request = dict(
            stage=stage,
            profile="cpu",
            datasets_dir="artifacts/datasets",
            out_dir=f"artifacts/runs/{name}",
            init_from=backbone if name == "global" else "artifacts/runs/global/model",
            data_version=versions.get(dataset_role(stage)),
            experiment="full-eval-train",
        )
        slots = 1 if name == "global" else default_local_concurrency()  # as the flow shares the machine out
        device = 0 if gpu_count() else None
        result = train_in_worker(request, device, max(1, cpu_count() // slots))
        print(f"{name}: {result['checkpoint']} {result['metrics'].get('eval_loss')}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
