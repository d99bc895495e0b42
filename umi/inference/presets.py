"""How the agent's role models generate: the token caps per role, and how a planner that wrote nothing is retried.

The one place for these defaults. Every use starts from one of the named presets and changes only what its
settings expose (an evaluation profile, a `UMI_SERVE_*` variable, a CLI option):

    AGENT            the loop's own default (umi.agent.loop.AgentConfig()): room for a trained model's longest outputs
    EVALUATION       umi.eval.settings.EvalSettings: caps just above what the gold outputs need, since untrained models
                     rarely stop on their own and the caps bound the cost of the backbone row
    EVALUATION_FULL  the `full` evaluation profile (a GPU): the paper's generous caps, patient retries
    CHAT             `umi chat`: evaluation's caps (chat talks to the evaluated model), the loop's patient retries
    SERVING          umi.serve.settings.ServeSettings: per-role defaults a request may lower or raise up to the
                     service's cap; `global` as the summarizer (the service runs no single-LLM agent)

Decoding (umi.agent.step): greedy first (the paper's decoding); only a retry samples, at `retry_temperature` with
the attempt as its seed, because greedy decoding would write the same nothing again.

This module imports nothing of agent, eval or serve (only umi.vocabulary): they all import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from umi.vocabulary import ROLES

__all__ = [
    "AGENT",
    "CHAT",
    "EVALUATION",
    "EVALUATION_FULL",
    "GenerationSettings",
    "MAX_STEPS",
    "PRESETS",
    "SERVING",
]

MAX_STEPS = 12  # planner (or single-LLM) turns per episode: the paper's real-time inference cap


@dataclass(frozen=True)
class GenerationSettings:
    """max_new_tokens: the cap per role (planner, caller, summarizer, global). planner_retries: extra tries when the
    planner (or the single-LLM model) writes nothing, sampled at `retry_temperature`. The field defaults are the
    AGENT preset."""

    max_new_tokens: Mapping[str, int] = field(
        default_factory=lambda: {"planner": 256, "caller": 256, "summarizer": 512, "global": 512}
    )
    planner_retries: int = 5
    retry_temperature: float = 0.7

    def __post_init__(self) -> None:
        missing = set(ROLES) - set(self.max_new_tokens)
        if missing:
            raise ValueError(f"max_new_tokens lacks {sorted(missing)}")
        if any(int(v) < 1 for v in self.max_new_tokens.values()):
            raise ValueError("max_new_tokens must be >= 1 for every role")
        if self.planner_retries < 0:
            raise ValueError("planner_retries must be >= 0")
        if self.retry_temperature <= 0:
            raise ValueError("retry_temperature must be > 0 (a greedy retry writes the same output again)")

    def caps(self) -> dict[str, int]:
        """max_new_tokens as a plain dict (a copy)."""
        return {role: int(v) for role, v in self.max_new_tokens.items()}

    def sampling(self, attempt: int, temperature: float = 0.0, seed: int = 0) -> tuple[float, int]:
        """(temperature, seed) of try `attempt` (0: the first) of a generation asked for at `temperature` / `seed`:
        a greedy request is retried at retry_temperature; every retry has a seed of its own."""
        return (self.retry_temperature if attempt and temperature <= 0 else temperature), seed + attempt

    def with_(self, **changes: Any) -> "GenerationSettings":
        """A copy with the given fields changed; None values are ignored (unset options)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


AGENT = GenerationSettings()
EVALUATION = GenerationSettings(
    max_new_tokens={"planner": 128, "caller": 96, "summarizer": 160, "global": 192}, planner_retries=1
)
EVALUATION_FULL = GenerationSettings(
    max_new_tokens={"planner": 256, "caller": 128, "summarizer": 512, "global": 512}, planner_retries=5
)
CHAT = replace(EVALUATION, planner_retries=AGENT.planner_retries)
SERVING = GenerationSettings(
    max_new_tokens={"planner": 256, "caller": 256, "summarizer": 512, "global": 512}, planner_retries=2
)

PRESETS: dict[str, GenerationSettings] = {
    "agent": AGENT,
    "evaluation": EVALUATION,
    "evaluation-full": EVALUATION_FULL,
    "chat": CHAT,
    "serving": SERVING,
}
