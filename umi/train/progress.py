"""Where a training run stands: each stage writes its progress as it trains, and `umi train status` reads it back.

A stage folder (`<runs>/<stage>/`, umi.train.stages) gets, from `ProgressCallback`:

    progress.json   the latest figures: step of max_steps, examples seen, time spent (summed over every session that
                    trained this stage, resumes included), seconds per step in this session, time left at that rate
    train.log       one line per logged step (and one per start or resume), appended: `tail -f` follows a run

`run_status(runs_dir, config, datasets_dir)` reads them for every stage of a GLPFT run (and the compute-matched
control), with what the stages not yet started will cost at the rate seen so far; `format_status` prints it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from transformers import TrainerCallback

from umi.atomic import write_json

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
LOG_FILE = "train.log"


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def read_progress(out_dir: str | Path) -> dict | None:
    try:
        value = json.loads((Path(out_dir) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class ProgressCallback(TrainerCallback):
    """Writes `progress.json` and a `train.log` line at every Trainer log step (main process only).

    examples_per_step: examples in one optimiser step (the global batch); examples_total: what the stage will
    see in all (its train examples x epochs, or fewer under max_steps)."""

    def __init__(self, out_dir: str | Path, stage: str, examples_per_step: int, examples_total: int):
        self.out_dir = Path(out_dir)
        self.stage = stage
        self.examples_per_step = examples_per_step
        self.examples_total = examples_total
        self.base_elapsed = 0.0
        self.started = time.monotonic()
        self.start_step = 0

    def _write_line(self, text: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with (self.out_dir / LOG_FILE).open("a", encoding="utf-8") as f:
            f.write(f"{stamp} {self.stage} {text}\n")
        log.info("%s %s", self.stage, text)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.started, self.start_step = time.monotonic(), state.global_step
        previous = read_progress(self.out_dir) if state.global_step > 0 else None
        self.base_elapsed = float(previous.get("elapsed_s", 0.0)) if previous else 0.0
        what = f"resumed at step {state.global_step}" if state.global_step else "started"
        self._write_line(f"{what}: {state.max_steps} steps, {self.examples_total} examples")
        self._record(state, {})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            self._record(state, logs or {})

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._record(state, {}, finished=True)

    def _record(self, state, logs: dict, finished: bool = False) -> None:
        session = time.monotonic() - self.started
        done_here = state.global_step - self.start_step
        per_step = session / done_here if done_here > 0 else None
        left = (state.max_steps - state.global_step) * per_step if per_step is not None else None
        seen = min(state.global_step * self.examples_per_step, self.examples_total)
        progress = {
            "stage": self.stage,
            "state": "trained" if finished else "training",
            "step": state.global_step,
            "max_steps": state.max_steps,
            "examples_seen": seen,
            "examples_total": self.examples_total,
            "elapsed_s": self.base_elapsed + session,
            "seconds_per_step": per_step,
            "left_s": 0.0 if finished else left,
            "loss": logs.get("loss", (read_progress(self.out_dir) or {}).get("loss")),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(self.out_dir / PROGRESS_FILE, progress)
        if logs or finished:
            share = 100 * state.global_step / max(state.max_steps, 1)
            loss = f" loss {progress['loss']:.4f}" if isinstance(progress["loss"], float) else ""
            lr = f" lr {logs['learning_rate']:.2e}" if "learning_rate" in logs else ""
            self._write_line(
                f"step {state.global_step}/{state.max_steps} ({share:.1f}%) examples {seen}/{self.examples_total}"
                f"{loss}{lr} elapsed {_clock(progress['elapsed_s'])} left {_clock(left if not finished else 0)}"
            )


@dataclass
class StageStatus:
    stage: str
    state: str  # done | training (interrupted or running) | not started
    step: int | None = None
    max_steps: int | None = None
    examples_seen: int | None = None
    examples_total: int | None = None
    elapsed_s: float | None = None
    left_s: float | None = None  # at this stage's own rate, or (not started) at the run's rate per example
    loss: float | None = None
    updated: str | None = None


def stage_status(out_dir: str | Path, stage: str) -> StageStatus:
    from umi.train.stages import STATE_FILE, read_json_or_none

    out_dir = Path(out_dir)
    progress = read_progress(out_dir) or {}
    state = read_json_or_none(out_dir / STATE_FILE) or {}
    fields = {k: progress.get(k) for k in ("step", "max_steps", "examples_seen", "examples_total", "elapsed_s")}
    fields.update(loss=progress.get("loss"), updated=progress.get("updated"))
    if state.get("complete"):
        return StageStatus(stage, "done", left_s=0.0, **fields)
    if progress or state:
        return StageStatus(stage, "training", left_s=progress.get("left_s"), **fields)
    return StageStatus(stage, "not started")


def run_status(runs_dir: str | Path, stages: tuple[str, ...], planned_examples: dict[str, int] | None = None) -> dict:
    """Every stage's status, the time spent, and the time left: the current stage's at its rate, each stage not
    started at the run's seconds per example so far (planned_examples: what each will see), None when unknown."""
    rows = [stage_status(Path(runs_dir) / s, s) for s in stages]
    spent = sum(r.elapsed_s or 0.0 for r in rows)
    seen = sum(r.examples_seen or 0 for r in rows)
    per_example = spent / seen if seen else None
    for r in rows:
        if r.state == "not started" and planned_examples and r.stage in planned_examples:
            r.examples_total = planned_examples[r.stage]
            r.left_s = per_example * r.examples_total if per_example is not None else None
    lefts = [r.left_s for r in rows if r.state != "done"]
    left = sum(lefts) if all(x is not None for x in lefts) else None
    return {"stages": [asdict(r) for r in rows], "elapsed_s": spent, "left_s": left, "seconds_per_example": per_example}


def planned_examples(config, datasets_dir: str | Path, stages: tuple[str, ...]) -> dict[str, int]:
    """What each stage will see (examples x epochs, its max_examples, or max_steps x batch), from the role datasets'
    line counts; stages under a token budget (max_tokens) are left out: their count is known once encoded."""
    from umi.train.config import dataset_role
    from umi.train.engine import role_dataset_path

    planned = {}
    for stage in stages:
        s, batch = config.stage_settings(stage), config.for_stage(stage).global_batch_size
        path = role_dataset_path(datasets_dir, dataset_role(stage), "train")
        if s.max_tokens or not path.is_file():
            continue
        with path.open("rb") as f:
            examples = s.max_examples or sum(1 for line in f if line.strip())
        total = math.ceil(examples * s.epochs)
        planned[stage] = min(total, s.max_steps * batch) if s.max_steps else total
    return planned


def format_status(status: dict) -> str:
    lines = [f"{'stage':<16}{'state':<13}{'step':>11}{'examples':>13}{'spent':>10}{'left':>10}{'loss':>8}  updated"]
    for r in status["stages"]:
        step = f"{r['step']}/{r['max_steps']}" if r["step"] is not None else "-"
        examples = f"{r['examples_seen'] or 0}/{r['examples_total']}" if r["examples_total"] else "-"
        loss = f"{r['loss']:.4f}" if isinstance(r["loss"], float) else "-"
        lines.append(
            f"{r['stage']:<16}{r['state']:<13}{step:>11}{examples:>13}{_clock(r['elapsed_s']):>10}"
            f"{_clock(r['left_s']):>10}{loss:>8}  {r['updated'] or '-'}"
        )
    rate = status["seconds_per_example"]
    lines.append(
        f"spent {_clock(status['elapsed_s'])}, left {_clock(status['left_s'])} at the rate so far"
        + (f" ({rate:.2f} s per example)" if rate else "")
    )
    return "\n".join(lines)
