"""One training stage per process, for distributed launchers (DeepSpeed, torchrun). Every rank runs this module.

    deepspeed --hostfile hostfile --module umi.train.launch --stage global --profile paper \
        --datasets artifacts/datasets --out artifacts/models/global --init artifacts/backbone
    torchrun --nproc_per_node 8 -m umi.train.launch --stage planner ... --init artifacts/models/global/model

A `--local_rank` argument (the DeepSpeed launcher appends one) is accepted and ignored: ranks come from the
environment (RANK, LOCAL_RANK, WORLD_SIZE). Prints the StageResult as JSON on rank 0. See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from umi.train.config import load_config
from umi.vocabulary import TRAINABLE_STAGES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m umi.train.launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stage", required=True, choices=TRAINABLE_STAGES)
    p.add_argument("--profile", default="paper", help="profile name (paper, cpu, tiny) or a YAML file")
    p.add_argument("--datasets", required=True, help="directory holding <role>/train.jsonl")
    p.add_argument("--out", required=True, help="the stage directory (checkpoints/, model/)")
    p.add_argument("--init", required=True, help="starting weights: the backbone, or the global stage's model/")
    p.add_argument("--data-version", default=None, help="the dataset's DVC hash, recorded in MLflow")
    p.add_argument("--experiment", default="umi-train", help="MLflow experiment name")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-resume", action="store_true", help="ignore existing Trainer checkpoints")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    from umi.train.stages import train_stage

    result = train_stage(
        args.stage,
        load_config(args.profile),
        args.datasets,
        args.out,
        args.init,
        data_version=args.data_version,
        tracking=not args.no_tracking,
        experiment=args.experiment,
        resume=not args.no_resume,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
