"""The service over real (tiny, random) role models: what is loaded once, LoRA adapters on one base, concurrent
requests giving exactly the serial results (the KV-cache reuse is not disturbed), and the BentoML service itself
in-process (its ASGI app, readiness and health endpoints included)."""

from __future__ import annotations

import importlib
import sys
import threading

import pytest
from serve_helpers import OPENAI_WEATHER, make_settings, make_toolkits
from starlette.testclient import TestClient

from umi.inference.loading import load_backends, load_checkpoint
from umi.inference.protocol import GenerationRequest
from umi.inference.sharing import shared_backends
from umi.inference.transformers_backend import TransformersBackend
from umi.serve.app import create_app
from umi.serve.engine import AgentEngine


def served_backends(dirs, **options):
    """The service's role backends (build_engine): the loader's, shared by the request threads."""
    return shared_backends(load_backends(dirs, **options))


QUERIES = [f"What is the weather in {city}?" for city in ("Rome", "Oslo", "Lima", "Kyiv", "Doha", "Bern")]


def test_a_directory_named_for_several_roles_is_loaded_once(tiny_role_dirs):
    backends = served_backends(tiny_role_dirs)
    assert backends["planner"] is backends["caller"]
    assert backends["summarizer"] is not backends["planner"]
    assert backends["planner"].lock is not backends["summarizer"].lock


def greedy(backend, prompt: str, n: int = 12) -> str:
    return backend.generate(GenerationRequest(prompt=prompt, max_new_tokens=n, stop_strings=(), ignore_eos=True)).text


def test_lora_adapters_share_one_base_and_each_generates_as_its_own_merged_model(adapter_dirs):
    from peft import PeftModel

    base, adapters = adapter_dirs
    backends = served_backends(adapters, base_dir=base)
    assert len({id(b.lock) for b in backends.values()}) == 1  # one base model in memory for the three roles
    peft_model = backends["planner"].model
    assert set(peft_model.peft_config) == {"planner", "caller", "summarizer"}
    prompt = "user: What is the weather in Paris?</s>assistant: "
    # interleave the roles: each answers as a model with only its adapter, merged
    got = {role: greedy(backends[role], prompt) for role in ("planner", "caller", "summarizer", "planner")}
    for role, path in adapters.items():
        model, tokenizer = load_checkpoint(base)
        merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        assert got[role] == greedy(TransformersBackend(merged, tokenizer, reuse_cache=False), prompt), role
    assert len(set(got.values())) > 1  # the adapters do differ


def test_lora_adapters_find_their_base_from_their_config(adapter_dirs):
    _, adapters = adapter_dirs
    backends = served_backends(adapters)  # base_model_name_or_path is the tiny model's local dir
    assert backends["caller"].adapter == "caller"


def tiny_app(dirs, **overrides):
    settings = make_settings(planner_tokens=12, caller_tokens=12, summarizer_tokens=12, default_steps=2, **overrides)
    engine = AgentEngine(served_backends(dirs), settings, models={r: {"path": str(p)} for r, p in dirs.items()})
    return create_app(settings, engine, make_toolkits(settings))


def test_concurrent_requests_give_exactly_the_serial_results(tiny_role_dirs):
    app = tiny_app(tiny_role_dirs)
    chat_body = {"model": "umi-agent", "tools": [OPENAI_WEATHER]}

    def agent(c, q):
        return c.post("/agent", json={"query": q, "toolkit": "weather"})

    def chat(c, q):
        return c.post("/v1/chat/completions", json={**chat_body, "messages": [{"role": "user", "content": q}]})

    def essence(kind, response):
        assert response.status_code == 200, response.text
        body = response.json()
        if kind == "agent":
            return [(s["role"], s["content"], s["tool_name"], s["arguments_text"]) for s in body["trajectory"]["steps"]]
        return body["choices"][0]["message"], body["umi"]["thought"]

    work = [(kind, q) for q in QUERIES for kind in ("agent", "chat")]
    with TestClient(app) as c:
        serial = [essence(kind, (agent if kind == "agent" else chat)(c, q)) for kind, q in work]
        concurrent: list = [None] * len(work)

        def one(i: int) -> None:
            kind, q = work[i]
            concurrent[i] = essence(kind, (agent if kind == "agent" else chat)(c, q))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(work))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert concurrent == serial
    assert len({repr(s) for s in serial}) > 2  # different queries do give different outputs


@pytest.fixture
def bentoml_service(tiny_role_dirs, monkeypatch):
    """umi.serve.service imported with the tiny models given as directories (it reads its settings at import)."""
    for role, path in tiny_role_dirs.items():
        monkeypatch.setenv(f"UMI_SERVE_{role.upper()}_DIR", str(path))
    for role in ("planner", "caller", "summarizer"):
        monkeypatch.setenv(f"UMI_SERVE_{role.upper()}_TOKENS", "8")
    monkeypatch.setenv("UMI_SERVE_TOOLKITS", "weather=serve_tools:weather_toolkit")
    if "umi.serve.service" in sys.modules:
        module = importlib.reload(sys.modules["umi.serve.service"])
    else:
        module = importlib.import_module("umi.serve.service")
    yield module
    del sys.modules["umi.serve.service"]  # the next import reads the environment again


def test_the_bentoml_service_in_process(bentoml_service):
    service = bentoml_service.UmiAgent
    assert service.models == []  # directories given: no BentoML store models to resolve
    with TestClient(service.to_asgi()) as c:
        assert c.get("/readyz").status_code == 200
        assert c.get("/livez").status_code == 200
        health = c.get("/health").json()
        assert health["status"] == "ok" and health["toolkits"] == ["bfcl", "weather"]
        assert health["models"]["planner"]["source"] == "directory"
        assert c.get("/v1/models").json()["data"][0]["id"] == "umi-agent"
        r = c.post("/agent", json={"query": "What is the weather in Rome?", "toolkit": "weather", "max_steps": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] in ("answered", "gave_up", "max_steps", "planner_empty") and body["trajectory"]["steps"]
        assert all(g["new_tokens"] <= 8 for g in body["trajectory"]["meta"]["generations"])
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "umi-agent",
                "tools": [OPENAI_WEATHER],
                "messages": [{"role": "user", "content": "Weather in Rome?"}],
            },
        )
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
        assert c.post("/v1/chat/completions", json={"model": "x", "messages": []}).status_code == 400


def test_role_weights_are_stored_in_bf16_and_still_load(tiny_role_dirs, tmp_path):
    """The Bento's copy of a full checkpoint holds bf16 weights (half the bytes); loaded by the dtype rule it gives
    what the bf16 model gives."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from umi.serve.bento_models import store_weights_bf16

    src = tiny_role_dirs["planner"]
    dst = tmp_path / "planner"
    shutil.copytree(src, dst)
    before = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    assert store_weights_bf16(dst) > 0
    after = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    assert after < 0.6 * before
    assert {t.dtype for f in dst.glob("*.safetensors") for t in load_file(str(f)).values()} == {torch.bfloat16}
    assert store_weights_bf16(dst) == 0  # already bf16: nothing to do
    ids = torch.tensor([[1, 2, 3, 4]])
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)(ids).logits
    got = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16)(ids).logits
    assert torch.equal(ref, got)
