"""Which checkpoints play which roles: an agent's name and checkpoint directories (`AgentSpec`), and the usual
agents of the training layout (`default_agents`: `<runs>/<stage>/model`, umi.train.stages; any whose checkpoints
are missing left out with a reason).

Kind "multi": the α-UMi agent (the three role prompts; the untrained backbone runs zero-shot as a "multi" agent with
the backbone in all three roles, the paper's one-stage ablation is three locals fine-tuned straight from the
backbone); kind "single": the single-LLM baseline (the global prompt), e.g. the GLPFT global checkpoint alone.

Here, below the agent loop, evaluation and the service, because evaluation (which never imports umi.agent) and
`umi chat` both name agents by these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from umi.vocabulary import AGENT_ROLES, ALPHA_UMI, SINGLE_LLM

__all__ = ["AgentKind", "AgentSpec", "ROLES_OF", "default_agents"]

AgentKind = Literal["multi", "single"]
ROLES_OF: dict[str, tuple[str, ...]] = {"multi": AGENT_ROLES, "single": ("global",)}


@dataclass(frozen=True)
class AgentSpec:
    """One agent: a name (for a report, a chat session) and its checkpoint directories.

    multi: `planner`, `caller`, `summarizer` (the same directory may fill several roles); single: `model`."""

    name: str
    kind: AgentKind
    planner: str | None = None
    caller: str | None = None
    summarizer: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("an agent needs a name")
        if self.kind == "multi":
            missing = [r for r in AGENT_ROLES if not getattr(self, r)]
            if missing:
                raise ValueError(f"agent {self.name!r}: a multi agent needs {', '.join(missing)} checkpoint(s)")
            if self.model is not None:
                raise ValueError(f"agent {self.name!r}: a multi agent takes planner/caller/summarizer, not model")
        elif self.kind == "single":
            if not self.model:
                raise ValueError(f"agent {self.name!r}: a single agent needs a model checkpoint")
            if any(getattr(self, r) for r in AGENT_ROLES):
                raise ValueError(f"agent {self.name!r}: a single agent takes model, not role checkpoints")
        else:
            raise ValueError(f"agent {self.name!r}: kind must be 'multi' or 'single', got {self.kind!r}")

    @classmethod
    def multi(cls, name: str, planner: str | Path, caller: str | Path, summarizer: str | Path) -> "AgentSpec":
        return cls(name=name, kind="multi", planner=str(planner), caller=str(caller), summarizer=str(summarizer))

    @classmethod
    def single(cls, name: str, model: str | Path) -> "AgentSpec":
        return cls(name=name, kind="single", model=str(model))

    @property
    def roles(self) -> dict[str, str]:
        """role -> checkpoint directory (`global` for a single agent)."""
        if self.kind == "single":
            return {"global": str(self.model)}
        return {"planner": str(self.planner), "caller": str(self.caller), "summarizer": str(self.summarizer)}

    def missing_checkpoints(self) -> list[str]:
        """The checkpoint directories that do not exist (no config.json in them)."""
        return sorted({p for p in self.roles.values() if not (Path(p) / "config.json").is_file()})

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "kind": self.kind, **self.roles}

    def params(self) -> dict[str, str]:
        """The keyword arguments that make this spec again (None left out): a task input Prefect can hash and
        persist (the pipeline's evaluation cache key reads it)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def default_agents(
    runs: str | Path = "artifacts/runs",
    backbone: str | Path = "artifacts/backbone",
    one_stage_runs: str | Path | None = "artifacts/runs-one-stage",
) -> tuple[list[AgentSpec], dict[str, str]]:
    """The paper's comparison from the training layout: backbone (zero-shot, all three roles), single-LLM (the global
    checkpoint), α-UMi (the GLPFT locals), one-stage (locals trained from the backbone).

    Returns (the agents whose checkpoints exist, {left-out agent: why})."""
    runs = Path(runs)
    candidates = [
        AgentSpec.multi("backbone", backbone, backbone, backbone),
        AgentSpec.single(SINGLE_LLM, runs / "global" / "model"),
        AgentSpec.multi(ALPHA_UMI, *(runs / r / "model" for r in AGENT_ROLES)),
    ]
    if one_stage_runs is not None:
        one = Path(one_stage_runs)
        locals_ = (one / r / "model" for r in AGENT_ROLES)
        candidates.append(AgentSpec.multi("one-stage", *locals_))
    found, skipped = [], {}
    for spec in candidates:
        missing = spec.missing_checkpoints()
        if missing:
            skipped[spec.name] = f"no checkpoint at {', '.join(missing)}"
        else:
            found.append(spec)
    return found, skipped
