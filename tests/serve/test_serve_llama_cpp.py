"""The service on the llama.cpp engine (UMI_SERVE_ENGINE=llama.cpp), in-process over tiny random role models: each
role checkpoint's GGUF converted on first load into the GGUF cache, the same agent turn and chat turn as on
transformers float32 (the tiny models' identical greedy tokens), the same limits and error shapes. Greedy only: a
retry samples, and llama.cpp's seeded draw is not torch's (umi.inference.llama_cpp_backend), so the turns compared
have no retry (planner_retries 0; the chat turn's tool_choice none, so no caller output is checked and retried)."""

from __future__ import annotations

import pytest
from serve_helpers import OPENAI_WEATHER, make_settings, make_toolkits
from starlette.testclient import TestClient

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make setup` builds it)")

from umi.serve.app import create_app  # noqa: E402
from umi.serve.engine import build_engine  # noqa: E402

pytestmark = pytest.mark.slow  # GGUF conversions (a subprocess importing torch) and two engines


@pytest.fixture(scope="module")
def lively_role_dirs(tiny_role_dirs, tmp_path_factory):
    """tiny_role_dirs (planner and caller one directory) with lively float32 weights: their greedy planner writes
    something, so an episode has steps to compare."""
    import torch

    from tests.support.tiny import lively
    from umi.inference.loading import load_checkpoint

    made = {}
    for seed, source in enumerate(dict.fromkeys(tiny_role_dirs.values())):
        model, tokenizer = load_checkpoint(source)
        made[source] = tmp_path_factory.mktemp("lively")
        lively(model, seed=seed + 1).to(torch.float32).save_pretrained(made[source])
        tokenizer.save_pretrained(made[source])
    return {role: made[source] for role, source in tiny_role_dirs.items()}


def served(engine: str, dirs, gguf_dir):
    """What the endpoints answer on `engine`: an /agent episode, a chat turn, one request over a limit, /health."""
    settings = make_settings(
        planner_tokens=12,
        caller_tokens=12,
        summarizer_tokens=12,
        default_steps=2,
        planner_retries=0,
        engine=engine,
        dtype="float32",
        gguf_dir=gguf_dir,
    )
    info = {role: {"source": "directory", "path": str(p)} for role, p in dirs.items()}
    app = create_app(settings, build_engine(settings, dirs, None, info), make_toolkits(settings))
    with TestClient(app) as c:
        agent = c.post("/agent", json={"query": "What is the weather in Rome?", "toolkit": "weather"})
        chat = c.post(
            "/v1/chat/completions",
            json={
                "model": "umi-agent",
                "tools": [OPENAI_WEATHER],
                "tool_choice": "none",
                "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            },
        )
        over = c.post("/agent", json={"query": "x", "toolkit": "weather", "max_steps": 99})
        health = c.get("/health").json()
    assert agent.status_code == 200, agent.text
    assert chat.status_code == 200, chat.text
    body = agent.json()
    steps = [(s["role"], s["content"], s["tool_name"], s["arguments_text"]) for s in body["trajectory"]["steps"]]
    generations = body["trajectory"]["meta"]["generations"]
    assert {g["attempt"] for g in generations} == {0}  # greedy throughout
    said = chat.json()["choices"][0]
    return {
        "agent": (body["status"], steps, [(g["role"], g["prompt_tokens"], g["new_tokens"]) for g in generations]),
        "chat": (said["message"], said["finish_reason"], chat.json()["umi"]["thought"]),
        "over": (over.status_code, over.json()),
    }, health


def test_one_agent_turn_on_llama_cpp_is_the_transformers_one(lively_role_dirs, tmp_path):
    gguf_dir = tmp_path / "gguf"
    on_transformers, _ = served("transformers", lively_role_dirs, gguf_dir)
    assert not gguf_dir.exists()  # transformers converts nothing
    on_llama, health = served("llama.cpp", lively_role_dirs, gguf_dir)
    assert {health["models"][r]["engine"] for r in lively_role_dirs} == {"llama.cpp/f32"}
    assert len(list(gguf_dir.glob("*/f32.gguf"))) == 2  # one per distinct checkpoint (planner and caller share one)
    assert on_llama == on_transformers
    assert on_llama["over"][0] == 400 and "max_steps" in str(on_llama["over"][1])  # the limit holds, same body
    assert len(on_llama["agent"][1]) >= 2 and on_llama["chat"][2]  # the planner wrote: steps and a thought


def test_the_llama_cpp_engine_is_refused_off_the_cpu_and_unknown_settings_too():
    with pytest.raises(ValueError, match="runs on the CPU"):
        make_settings(engine="llama.cpp", device="cuda")
    with pytest.raises(ValueError, match="engine must be one of"):
        make_settings(engine="vllm")
    with pytest.raises(ValueError, match="gguf_type must be one of"):
        make_settings(engine="llama.cpp", gguf_type="q4_0")
    assert make_settings().engine == "transformers"  # the default until the image carries llama.cpp


def test_lora_adapter_roles_are_refused_on_llama_cpp_before_anything_is_converted(adapter_dirs, tmp_path):
    from umi.inference.loading import load_backends

    _, adapters = adapter_dirs
    with pytest.raises(ValueError, match="are LoRA adapters: llama.cpp runs merged checkpoints only"):
        load_backends(adapters, engine="llama.cpp", gguf_dir=tmp_path)
    assert not any(tmp_path.iterdir())
