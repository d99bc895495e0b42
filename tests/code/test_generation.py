"""Generation defaults: one module (umi.inference.presets) whose named presets are the defaults of the loop,
evaluation, chat and the service; the retry decoding rule; the module below everything that imports it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import umi
from umi.agent.loop import AgentConfig
from umi.eval.settings import PROFILES, EvalSettings
from umi.inference.presets import (
    AGENT,
    CHAT,
    EVALUATION,
    EVALUATION_FULL,
    MAX_STEPS,
    PRESETS,
    SERVING,
    GenerationSettings,
)

UMI = Path(umi.__file__).parent


def test_every_use_starts_from_its_preset(monkeypatch):
    for key in [k for k in __import__("os").environ if k.upper().startswith("UMI_SERVE_")]:
        monkeypatch.delenv(key)
    from umi.serve.settings import HARD_MAX_STEPS, ServeSettings

    loop = AgentConfig()
    assert (dict(loop.max_new_tokens), loop.planner_retries, loop.retry_temperature) == (
        AGENT.caps(),
        AGENT.planner_retries,
        AGENT.retry_temperature,
    )
    assert loop.max_steps == MAX_STEPS == HARD_MAX_STEPS == EvalSettings().max_steps
    assert EvalSettings().generation() == EVALUATION and EvalSettings().max_new_tokens == EVALUATION.caps()
    assert PROFILES["full"].generation() == EVALUATION_FULL
    assert ServeSettings().generation() == SERVING
    assert CHAT.caps() == EVALUATION.caps() and CHAT.planner_retries == AGENT.planner_retries
    assert list(PRESETS.values()) == [AGENT, EVALUATION, EVALUATION_FULL, CHAT, SERVING]


def test_the_presets_differ_where_the_uses_do():
    # untrained models write to the cap: evaluation's caps bound the backbone row, the service leaves room
    assert all(EVALUATION.max_new_tokens[r] < SERVING.max_new_tokens[r] for r in ("planner", "caller", "summarizer"))
    assert EVALUATION.planner_retries < SERVING.planner_retries < AGENT.planner_retries


def test_a_deployments_caps_and_retries_reach_the_service_generation(monkeypatch):
    monkeypatch.setenv("UMI_SERVE_CALLER_TOKENS", "40")
    monkeypatch.setenv("UMI_SERVE_PLANNER_RETRIES", "0")
    from umi.serve.settings import ServeSettings

    generation = ServeSettings().generation()
    assert generation.max_new_tokens["caller"] == 40 and generation.planner_retries == 0
    assert generation.max_new_tokens["global"] == generation.max_new_tokens["summarizer"]
    assert generation.retry_temperature == SERVING.retry_temperature


def test_agent_config_from_a_preset_keeps_the_preset_and_takes_the_episode_fields():
    config = AgentConfig.from_generation(CHAT, max_steps=3, doc_style="compact")
    assert dict(config.max_new_tokens) == CHAT.caps() and config.planner_retries == CHAT.planner_retries
    assert config.max_steps == 3 and config.doc_style == "compact"
    assert isinstance(config, GenerationSettings)


def test_greedy_first_then_every_retry_samples_with_a_seed_of_its_own():
    s = GenerationSettings(retry_temperature=0.9)
    assert s.sampling(0) == (0.0, 0)
    assert [s.sampling(a) for a in (1, 2)] == [(0.9, 1), (0.9, 2)]
    assert s.sampling(1, temperature=0.3, seed=10) == (0.3, 11)  # a sampled request keeps its own temperature


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"max_new_tokens": {"planner": 8, "caller": 8, "summarizer": 8}}, "lacks ['global']"),
        ({"max_new_tokens": {"planner": 0, "caller": 8, "summarizer": 8, "global": 8}}, ">= 1"),
        ({"planner_retries": -1}, "planner_retries"),
        ({"retry_temperature": 0.0}, "retry_temperature"),
    ],
)
def test_bad_settings_are_refused(changes, problem):
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        GenerationSettings(**changes)
    with pytest.raises(ValueError, match="max_steps"):
        AgentConfig(max_steps=0)


def test_with_ignores_unset_options():
    assert EVALUATION.with_(planner_retries=None) == EVALUATION
    assert EVALUATION.with_(planner_retries=3).planner_retries == 3 and EVALUATION.planner_retries == 1


def test_the_presets_import_nothing_of_umi():
    """It sits below agent, eval and serve, which all import it (the import rules: tests/code/test_import_layers.py);
    its only umi import is the vocabulary, for the role names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse((UMI / "inference" / "presets.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    assert {n for n in names if n.startswith(("umi", "flows", "."))} == {"umi.vocabulary"}, names


def test_umi_chat_runs_the_chat_preset(monkeypatch, tmp_path):
    """The command end to end over a planner that writes nothing: its caps and retries are CHAT's."""
    from typer.testing import CliRunner

    import umi.inference.loading
    from umi.cli.main import app
    from umi.inference.protocol import Generation
    from umi.prompts import role_of_prompt

    requests, loaded = [], {}

    class Silent:
        def generate(self, request):
            requests.append((role_of_prompt(request.prompt), request))
            return Generation.of_text(" ", prompt_tokens=1, new_tokens=1)

        def reset(self) -> None:
            pass

    def load_backends(dirs, **options):
        loaded.update(options)
        return {role: Silent() for role in dirs}

    monkeypatch.setattr(umi.inference.loading, "load_backends", load_backends)
    role_dir = str(tmp_path)
    result = CliRunner().invoke(
        app,
        ["chat", "--toolkit", "MathAPI", "--planner", role_dir, "--caller", role_dir, "--summarizer", role_dir],
        input="What is 2 plus 3?\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    assert "planner_empty" in result.output
    assert loaded["max_new_tokens"] == CHAT.caps()
    assert [role for role, _ in requests] == ["planner"] * (CHAT.planner_retries + 1)
    assert {r.max_new_tokens for _, r in requests} == {CHAT.max_new_tokens["planner"]}
    assert [(r.temperature, r.seed) for _, r in requests] == [CHAT.sampling(a) for a in range(len(requests))]
    from umi.cli.chat import chat_cmd

    assert inspect.signature(chat_cmd).parameters["max_steps"].default == MAX_STEPS
