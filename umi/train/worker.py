"""One GLPFT stage in a process of its own, for the pipeline: `python -m umi.train.worker REQUEST.json RESULT.json`.

REQUEST holds train_stage's arguments (stage, profile, datasets_dir, out_dir, init_from, data_version, experiment,
parent_run_id); RESULT receives the StageResult as JSON. Training output (progress bars, logs) goes to the
inherited stdout/stderr. `train_in_worker` starts such a process on a device and waits for it.

Why a process per stage rather than a thread of the flow: the Trainer, accelerate and torch keep process-wide state
(the global RNG that `set_seed` reseeds, accelerate's shared AcceleratorState, torch's thread pool), so two stages
in threads of one process would disturb each other's randomness and cores; a process also hands its memory back
when the stage ends, gets its own GPU through CUDA_VISIBLE_DEVICES, and a crash (an out-of-memory kill) fails one
task, which Prefect can retry, instead of the whole flow. The price is the imports, a few seconds per stage.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PARENT_PID_ENV = "UMI_STAGE_PARENT_PID"  # set by run_stage_process: the flow process this worker must not outlive
LOCK_FILE = ".stage.lock"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to send SIGTERM when the flow process that started this one dies (kill -9 included), and
    turn SIGTERM into SystemExit so the stage closes its MLflow run as FAILED on the way out. Linux only; elsewhere
    the flow's own cleanup (run_stage_process) is what stops it."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):  # the flow died before the prctl above took effect
        sys.exit(128 + signal.SIGTERM)


def lock_stage_folder(out_dir: str | Path):
    """An exclusive lock on the stage folder for this process's life: a second worker on the same folder (a stale
    one left by a killed flow, or a concurrent run) fails at once instead of training into the same checkpoints."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    handle = open(Path(out_dir) / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise RuntimeError(f"stage folder {out_dir} is in use by {holder}") from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle  # keep it open: the lock lasts as long as the file stays open


def run_stage_process(command: Sequence[str], env: Mapping[str, str], stop_timeout_s: float = 30.0) -> int:
    """Run a stage worker and wait for it; it never outlives this process. The worker asks the kernel for SIGTERM
    when this process dies (die_with_parent, told this pid); when the wait here ends any other way (the task
    cancelled, an exception, Ctrl-C in this thread), it is sent SIGTERM, then SIGKILL after `stop_timeout_s`. It
    stays in this process group, so a terminal's Ctrl-C reaches it too."""
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


def train_in_worker(request: Mapping[str, Any], device: int | None, threads: int, log=None) -> dict:
    """Train one stage (`request`: see the module docstring) in a worker process on GPU `device` (None: the CPU,
    `threads` threads unless OMP_NUM_THREADS says otherwise); StageResult.to_json(). The worker logs to the tracking
    store of this process, whatever set it. `log`: the logger that says where it trains (a Prefect run logger)."""
    import mlflow

    from umi.machine import env_with_venv

    env = env_with_venv()
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    env.setdefault("OMP_NUM_THREADS", str(threads))
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    Path(request["out_dir"]).mkdir(parents=True, exist_ok=True)
    where = f"GPU {device}" if device is not None else f"{env['OMP_NUM_THREADS']} CPU threads"
    (log or logging.getLogger(__name__)).info(
        "training %s from %s into %s (%s)", request["stage"], request["init_from"], request["out_dir"], where
    )
    with tempfile.TemporaryDirectory(prefix=f"umi-{request['stage']}-") as tmp:
        request_file, result_file = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request_file.write_text(json.dumps(dict(request)))
        returncode = run_stage_process(
            [sys.executable, "-m", "umi.train.worker", str(request_file), str(result_file)], env
        )
        if returncode != 0:
            raise RuntimeError(f"training stage {request['stage']} failed (exit {returncode}); its output is above")
        return json.loads(result_file.read_text())


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m umi.train.worker REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    die_with_parent()
    request = json.loads(Path(argv[0]).read_text())
    lock = lock_stage_folder(request["out_dir"])  # noqa: F841  (held until exit)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from umi.atomic import write_json
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
    write_json(argv[1], result.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
