"""Fixtures for the service tests: apps over rule-driven backends, tiny random role models saved to tmp dirs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# BentoML reads its home when first imported: keep the tests' model store and Bentos out of ~/bentoml
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="umi-test-bentoml-"))
from serve_helpers import rule_app
from serve_tools import WEATHER


@pytest.fixture
def client():
    from starlette.testclient import TestClient

    app, backend = rule_app()
    with TestClient(app) as c:
        c.backend = backend
        yield c


@pytest.fixture(scope="session")
def tiny_role_dirs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny random Llamas: one plays planner and caller (a shared directory, loaded once), one the summarizer."""
    from tests.support.tiny import make_tiny_backbone

    texts = [json.dumps(WEATHER.model_dump()), "user: What is the weather in Paris?</s>"] * 4
    shared = make_tiny_backbone(tmp_path_factory.mktemp("tiny-a"), texts=texts, seed=0)
    other = make_tiny_backbone(tmp_path_factory.mktemp("tiny-b"), texts=texts, seed=1)
    return {"planner": shared, "caller": shared, "summarizer": other}


@pytest.fixture(scope="session")
def adapter_dirs(tiny_role_dirs, tmp_path_factory):
    """Three LoRA adapters (random, non-zero) on the first tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model

    from umi.inference.loading import load_checkpoint

    base = tiny_role_dirs["planner"]
    out = {}
    for seed, role in enumerate(("planner", "caller", "summarizer")):
        model, _ = load_checkpoint(base)
        torch.manual_seed(seed)
        config = LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
        )
        peft_model = get_peft_model(model, config)
        path = tmp_path_factory.mktemp(f"adapter-{role}")
        peft_model.save_pretrained(path)
        out[role] = path
    return base, out
