"""Helpers for the service tests: rule-driven backends that write what a trained role would (so every branch of the
endpoints can be driven deterministically), and apps over them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from serve_tools import OPENAI_WEATHER, WEATHER, weather_toolkit  # noqa: F401  (re-exported for the tests)

from umi.inference.protocol import Generation, GenerationRequest
from umi.prompts import role_of_prompt
from umi.serve.app import create_app
from umi.serve.engine import AgentEngine
from umi.serve.settings import ServeSettings
from umi.serve.toolkits import ToolkitRegistry, default_toolkits

Rule = Callable[[str, str, GenerationRequest], str]


def weather_rules(role: str, prompt: str, request: GenerationRequest) -> str:
    """A well-behaved agent: call get_weather for the city in the last user turn, then conclude from the observation."""
    history = prompt.split("The conversation history is:\n", 1)[-1]
    if role == "planner":
        if "observation: " in history.rsplit("user: ", 1)[-1]:
            return "I have the weather.\n Next: conclusion."
        if "nonsense" in history:
            return "This cannot be done with these tools.\n Next: give up."
        return "I should call get_weather.\n Next: caller."
    if role == "caller":
        city = re.findall(r"weather in (\w+)", prompt)
        return f'Action: get_weather\nAction Input: {{"city": "{city[-1] if city else "Paris"}"}}'
    observation = re.findall(r'"temperature": (\d+)', prompt)
    return f"It is {observation[-1] if observation else '?'} degrees."


@dataclass
class RuleBackend:
    """Writes what `rule(role, prompt, request)` says; records every request (thread-safe enough for list.append)."""

    rule: Rule = weather_rules
    requests: list[tuple[str, GenerationRequest]] = field(default_factory=list)

    def generate(self, request: GenerationRequest) -> Generation:
        role = role_of_prompt(request.prompt)
        assert role is not None, request.prompt[-80:]
        self.requests.append((role, request))
        text = self.rule(role, request.prompt, request)
        return Generation.of_text(text, prompt_tokens=len(request.prompt) // 4, new_tokens=len(text) // 4)

    def roles(self) -> list[str]:
        return [role for role, _ in self.requests]


def make_settings(**overrides) -> ServeSettings:
    base = dict(
        planner_tokens=32,
        caller_tokens=32,
        summarizer_tokens=32,
        max_new_tokens=64,
        request_timeout_s=30,
        max_body_bytes=200_000,
        toolkits="",
    )
    return ServeSettings(**{**base, **overrides})


def make_toolkits(settings: ServeSettings) -> ToolkitRegistry:
    registry = default_toolkits(settings.tool_timeout_s, limits=settings.sandbox_limits())
    registry.register("weather", weather_toolkit)
    return registry


def rule_app(rule: Rule = weather_rules, **overrides):
    """(app, backend): the API over one rule-driven backend playing every role."""
    settings = make_settings(**overrides)
    backend = RuleBackend(rule)
    engine = AgentEngine(
        {"planner": backend, "caller": backend, "summarizer": backend},
        settings,
        models={"planner": {"source": "rules"}},
    )
    return create_app(settings, engine, make_toolkits(settings)), backend
