"""One loader (umi.inference.loading) and one dtype rule (umi.inference.devices) for evaluation, `umi chat` and the
service: on the same machine the three load a checkpoint onto the same device, in the same dtype, and give identical
logits."""

from __future__ import annotations

import pytest
import torch

from umi.eval.agents import load_agent_backends, resolve_dtype
from umi.inference import devices, loading
from umi.inference.agent_specs import AgentSpec
from umi.inference.protocol import GenerationRequest
from umi.inference.sharing import shared_backends


def _logits(backend, text: str = "user: What is the weather in Paris?</s>assistant: "):
    ids = backend.prompt_ids(GenerationRequest(prompt=text, max_new_tokens=4))[0]
    with torch.inference_mode():
        return backend.model(input_ids=torch.tensor([ids], device=backend.model.device)).logits.float().cpu()


def test_the_dtype_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.inference_device() == "cpu"
    assert devices.inference_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.inference_dtype("cpu") == torch.float32  # emulated bf16 is slower than fp32
    assert devices.inference_dtype("cpu", "bfloat16") == torch.bfloat16  # forced
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.inference_dtype("cuda:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.inference_dtype("cuda") == torch.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        devices.inference_dtype("cpu", "float8")


def test_native_bf16_needs_torch_on_its_avx512_kernels(monkeypatch):
    # ATEN_CPU_CAPABILITY=avx2 (portable numerics) on an AMX CPU: bf16 attention would fail there, so float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert devices.cpu_has_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not devices.cpu_has_native_bf16()


def test_native_bf16_follows_the_capability_torch_was_started_with():
    # the real variable, in a fresh interpreter (torch reads it once)
    import os
    import subprocess
    import sys

    code = (
        "import torch; from umi.inference import devices; "
        "print(torch.backends.cpu.get_cpu_capability(), devices.cpu_has_native_bf16())"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AVX2", "False"]


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_eval_chat_and_serving_load_the_same_model(tiny_backbone, monkeypatch, dtype):
    # chat's command loads through umi.inference.loading.load_backends: record what it is given and returns
    from umi.cli import chat

    seen = {}
    real = loading.load_backends

    def recording(dirs, **kw):
        seen["chat"] = real(dirs, **kw)
        raise SystemExit(0)  # stop the command before the interactive session

    monkeypatch.setattr(loading, "load_backends", recording)
    with pytest.raises(SystemExit):
        chat.chat_cmd(
            toolkit="MathAPI",
            tools=None,
            config=None,
            agent="alpha-umi",
            runs=tiny_backbone,
            backbone=tiny_backbone,
            model=None,
            planner=tiny_backbone,
            caller=tiny_backbone,
            summarizer=tiny_backbone,
            doc_style="compact",
            max_steps=2,
            max_prompt_tokens=256,
            dtype=dtype,
        )
    monkeypatch.undo()
    chat_backend = seen["chat"]["planner"]
    spec = AgentSpec.multi("a", tiny_backbone, tiny_backbone, tiny_backbone)
    eval_backend = load_agent_backends(spec, dtype=dtype)["planner"]
    # the service's build_engine: the loader's backends, shared by its request threads
    serve_backend = shared_backends(loading.load_backends(spec.roles, dtype=dtype))["planner"].inner
    expected = devices.inference_dtype(devices.inference_device(), dtype)
    assert resolve_dtype(dtype) == expected
    for b in (chat_backend, eval_backend, serve_backend):
        p = next(b.model.parameters())
        assert (p.dtype, p.device.type) == (expected, devices.inference_device())
    reference = _logits(eval_backend)
    assert torch.equal(_logits(chat_backend), reference)
    assert torch.equal(_logits(serve_backend), reference)
    assert torch.equal(_logits(loading.load_backend(tiny_backbone, dtype=dtype)), reference)
