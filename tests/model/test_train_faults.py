"""Training state under faults (tiny profile): kill -9 in the middle of a checkpoint save, a truncated
stage_state.json, a stage worker whose flow dies, two workers on one stage folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_stages import Interrupt, _dataset_loss, _weights

from umi.train.config import load_config
from umi.train.engine import CHECKPOINT_COMPLETE, last_complete_checkpoint
from umi.train.stages import STATE_FILE, train_stage

STEPS = 4


def tiny_config():
    config = load_config("tiny")
    config.stages["global"].max_steps = STEPS
    return config


@pytest.fixture(scope="module")
def uninterrupted(tiny_backbone, role_datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    result = train_stage("global", tiny_config(), role_datasets, out, tiny_backbone, tracking=False)
    return result, _dataset_loss(result.checkpoint, role_datasets)


def assert_same_end(result, uninterrupted, role_datasets) -> float:
    straight, straight_loss = uninterrupted
    assert result.metrics["global_step"] == STEPS
    a, b = _weights(straight.checkpoint), _weights(result.checkpoint)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    loss = _dataset_loss(result.checkpoint, role_datasets)
    assert loss == pytest.approx(straight_loss, abs=1e-5)
    return loss


KILL_DURING_SAVE = """
import os, signal, sys
from transformers import Trainer
from umi.train.config import load_config
from umi.train.stages import train_stage

real = Trainer._save_rng_state

def dying(self, output_dir):  # the weights and optimiser of this step are on disk, the rest is not
    if self.state.global_step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, output_dir)

Trainer._save_rng_state = dying
config = load_config("tiny")
config.stages["global"].max_steps = {steps}
train_stage("global", config, {datasets!r}, {out!r}, {backbone!r}, tracking=False)
"""


def test_kill_9_during_a_checkpoint_save_resumes_from_the_last_complete_one(
    uninterrupted, tiny_backbone, role_datasets, tmp_path
):
    out = tmp_path / "killed"
    script = KILL_DURING_SAVE.format(
        kill_at=3, steps=STEPS, datasets=str(role_datasets), out=str(out), backbone=str(tiny_backbone)
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=os.environ | {"PYTHONPATH": os.getcwd()}, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    half = out / "checkpoints" / "checkpoint-3"
    assert (half / "model.safetensors").exists() and not (half / CHECKPOINT_COMPLETE).exists()  # killed mid-save
    assert not (half / "trainer_state.json").exists()
    assert last_complete_checkpoint(out / "checkpoints").endswith("checkpoint-2")

    result = train_stage("global", tiny_config(), role_datasets, out, tiny_backbone, tracking=False)
    assert result.resumed_from.endswith("checkpoint-2")  # not the half-written checkpoint-3
    loss = assert_same_end(result, uninterrupted, role_datasets)
    print(f"final loss after kill -9 + resume {loss:.6f} vs uninterrupted {uninterrupted[1]:.6f}")


def test_a_truncated_state_file_is_reported_and_the_stage_recovers(
    uninterrupted, tiny_backbone, role_datasets, tmp_path, caplog
):
    out = tmp_path / "truncated"
    with pytest.raises(KeyboardInterrupt):
        train_stage(
            "global", tiny_config(), role_datasets, out, tiny_backbone, tracking=False, callbacks=[Interrupt(at=2)]
        )
    state = out / STATE_FILE
    state.write_text(state.read_text()[:17])  # cut short, as an in-place write killed midway left it
    result = train_stage("global", tiny_config(), role_datasets, out, tiny_backbone, tracking=False)
    assert "stage_state.json is unreadable" in caplog.text
    assert result.resumed_from.endswith("checkpoint-2")  # the checkpoint's marker names the same fingerprint
    assert_same_end(result, uninterrupted, role_datasets)

    # a damaged state file after the stage finished: reported, trained again (checkpoints are gone), same result
    state.write_bytes(b"\x00\x00{")
    again = train_stage("global", tiny_config(), role_datasets, out, tiny_backbone, tracking=False)
    assert not again.skipped and again.resumed_from is None
    assert_same_end(again, uninterrupted, role_datasets)
    assert train_stage("global", tiny_config(), role_datasets, out, tiny_backbone, tracking=False).skipped


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie nobody reaped is dead all the same


PARENT = """
import os, sys
from umi.train.worker import run_stage_process
child = (
    "import os, time\\n"
    "from umi.train.worker import die_with_parent\\n"
    "die_with_parent()\\n"
    "open({pidfile!r}, 'w').write(str(os.getpid()))\\n"
    "time.sleep(120)\\n"
)
run_stage_process([sys.executable, "-c", child], dict(os.environ), stop_timeout_s=5)
"""


def _start_parent(tmp_path):
    pidfile = tmp_path / "child.pid"
    # SIGINT at its default: a shell's background job (CI, nohup) starts with it ignored, and Python keeps that
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(pidfile=str(pidfile))],
        env=os.environ | {"PYTHONPATH": os.getcwd()},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline and parent.poll() is None, "the stage worker never started"
        time.sleep(0.1)
    return parent, int(pidfile.read_text())


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["kill -9", "interrupt"])
def test_a_stage_worker_dies_with_its_flow(tmp_path, how):
    parent, child = _start_parent(tmp_path)
    try:
        assert _alive(child)
        # kill -9: nothing of the flow runs any more, the kernel's parent-death signal does it; interrupt: the
        # flow's own cleanup (SIGINT to the flow process alone, not to its group)
        os.kill(parent.pid, signal.SIGKILL if how == "kill -9" else signal.SIGINT)
        parent.wait(30)
        assert _gone_within(child, 20)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_two_workers_never_share_a_stage_folder(tmp_path):
    from umi.train.worker import lock_stage_folder

    held = lock_stage_folder(tmp_path / "stage")
    probe = "from umi.train.worker import lock_stage_folder; import sys; lock_stage_folder(sys.argv[1])"
    other = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "stage")],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": os.getcwd()},
    )
    assert other.returncode != 0 and f"is in use by pid {os.getpid()}" in other.stderr
    held.close()
    again = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "stage")],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": os.getcwd()},
    )
    assert again.returncode == 0, again.stderr
