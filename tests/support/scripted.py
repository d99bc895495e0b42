"""A scripted backend: the agent loop, the chat session or a rollout run without a model (tests, the GPU check)."""

from __future__ import annotations

from dataclasses import dataclass, field

from umi.inference.protocol import Generation, GenerationRequest
from umi.prompts import role_of_prompt

__all__ = ["ScriptedBackend"]


@dataclass
class ScriptedBackend:
    """Answers role prompts with a fixed list of (role, text), in order, and records every request. A request for
    another role than the next scripted one, a prompt of no role, or a request past the script fails (AssertionError:
    in a test, the test)."""

    script: list[tuple[str, str]]
    requests: list[tuple[str, GenerationRequest]] = field(default_factory=list)
    resets: int = 0

    def generate(self, request: GenerationRequest) -> Generation:
        role = role_of_prompt(request.prompt)
        assert role is not None, f"not a role prompt: {request.prompt[-80:]!r}"
        assert self.script, f"unscripted {role} request"
        expected, text = self.script.pop(0)
        assert role == expected, f"expected a {expected} request, got {role}"
        self.requests.append((role, request))
        return Generation.of_text(text, prompt_tokens=len(request.prompt), new_tokens=len(text))

    def reset(self) -> None:
        self.resets += 1

    @property
    def prompts(self) -> list[tuple[str, str]]:
        """(role, prompt) of every request so far."""
        return [(role, request.prompt) for role, request in self.requests]
