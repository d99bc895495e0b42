"""Runs one GLPFT stage in a process of its own, for the flows: `python -m flows.stage_worker REQUEST.json RESULT.json`.

REQUEST holds train_stage's arguments (stage, profile, datasets_dir, out_dir, init_from, data_version, experiment,
parent_run_id); RESULT receives the StageResult as JSON. Training output (progress bars, logs) goes to the
inherited stdout/stderr.

Why a process per stage rather than a thread of the flow: the Trainer, accelerate and torch keep process-wide state
(the global RNG that `set_seed` reseeds, accelerate's shared AcceleratorState, torch's thread pool), so two stages
in threads of one process would disturb each other's randomness and cores; a process also hands its memory back
when the stage ends, gets its own GPU through CUDA_VISIBLE_DEVICES, and a crash (an out-of-memory kill) fails one
task, which Prefect can retry, instead of the whole flow. The price is the imports, a few seconds per stage.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m flows.stage_worker REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from umi.train.stages import train_stage

    result = train_stage(
        request["stage"],
        request["profile"],
        request["datasets_dir"],
        request["out_dir"],
        request["init_from"],
        data_version=request.get("data_version"),
        tracking=request.get("tracking", True),
        experiment=request.get("experiment", "umi-train"),
        parent_run_id=request.get("parent_run_id"),
    )
    Path(argv[1]).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
