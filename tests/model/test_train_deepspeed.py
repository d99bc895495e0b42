"""The ZeRO-3 profile exercised on CPU: a 2-rank launch (gloo), a couple of steps, a complete 16-bit-gathered save.

Slow: two processes start DeepSpeed and torch.distributed. Nothing here needs a GPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from umi.train.config import CONFIG_DIR, DEEPSPEED_DIR, load_config

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _profile(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    raw.update(profile="tiny-zero3", per_device_batch_size=2, global_batch_size=4, keep_checkpoints=True, **changes)
    path = tmp_path / "tiny-zero3.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cpu_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(
        # DeepSpeed's CPU backend JIT-builds its shared-memory op behind a lock file in the extensions dir, and a
        # build killed midway leaves that file for good: every later launch on the machine then waits on it forever
        # (CI, 2026-12-07). A dir of this test's own costs one ~25 s build and cannot inherit a stale lock.
        TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"),
        DS_ACCELERATOR="cpu",
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        LOCAL_SIZE="2",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def test_zero3_config_gathers_16bit_weights_on_save():
    ds = json.loads((DEEPSPEED_DIR / "zero3.json").read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert load_config("paper").deepspeed_path() == DEEPSPEED_DIR / "zero3.json"


def test_zero3_two_rank_cpu_launch_saves_the_complete_model(tiny_backbone, role_datasets, tmp_path):
    out = tmp_path / "global"
    cmd = [
        str(BIN / "deepspeed"),
        "--num_gpus",
        "2",
        "--master_port",
        str(_free_port()),
        "--no_local_rank",
        "--module",
        "umi.train.launch",
        "--stage",
        "global",
        "--profile",
        str(_profile(tmp_path, deepspeed="zero3")),
        "--datasets",
        str(role_datasets),
        "--out",
        str(out),
        "--init",
        str(tiny_backbone),
        "--no-tracking",
    ]
    done = subprocess.run(cmd, env=_cpu_env(tmp_path), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(done.stdout[done.stdout.index('{\n  "stage"') :].split("\n}\n")[0] + "\n}")
    assert result["metrics"]["global_step"] == 2

    saved = load_file(str(out / "model" / "model.safetensors"))
    backbone = load_file(str(tiny_backbone / "model.safetensors"))
    assert saved.keys() == backbone.keys()
    assert all(saved[k].shape == backbone[k].shape for k in saved)  # not ZeRO-3's empty placeholders
    assert all(not torch.equal(saved[k], backbone[k]) for k in saved)  # trained

    # the gathered save equals the model rebuilt from the ranks' ZeRO-3 shards of the last checkpoint
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints" / "checkpoint-2"))
    assert all(torch.equal(saved[k], consolidated[k].to(saved[k].dtype)) for k in saved)

    # and a plain (no DeepSpeed, one process) run of the same two steps with the same global batch
    plain = tmp_path / "plain"
    cmd = [
        str(BIN / "python"),
        "-m",
        "umi.train.launch",
        "--stage",
        "global",
        "--profile",
        str(_profile(tmp_path, deepspeed=None)),
        "--datasets",
        str(role_datasets),
        "--out",
        str(plain),
        "--init",
        str(tiny_backbone),
        "--no-tracking",
    ]
    env = {k: v for k, v in _cpu_env(tmp_path).items() if k != "LOCAL_SIZE"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = load_file(str(plain / "model" / "model.safetensors"))
    # Same to float rounding, measured against the update itself: the two runs sum the same gradients in another
    # order, and Adam's first steps (about lr * g / |g|) blow a rounding-sized difference up wherever a gradient
    # element is near zero, so an elementwise atol passes on one CPU and fails on another (CI's, 2026-12-03). A wrong
    # gather or a missing shard differs by the order of the update; seen here: at most 1.1e-5 of it.
    drift = {k: float((saved[k] - reference[k]).norm() / (reference[k] - backbone[k]).norm()) for k in saved}
    assert max(drift.values()) < 1e-2, sorted(drift.items(), key=lambda kv: -kv[1])[:5]
