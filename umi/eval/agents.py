"""The agents an evaluation compares, and how their checkpoints are loaded.

An `AgentSpec` names an agent and its checkpoint directories:

- kind "multi": the α-UMi agent (planner, caller, summarizer prompts and output formats). α-UMi proper is the three
  GLPFT local checkpoints; the untrained backbone is evaluated zero-shot as a "multi" agent with the backbone in all
  three roles (same prompts); the paper's one-stage ablation is three locals fine-tuned straight from the backbone.
- kind "single": the single-LLM baseline (the global prompt; thought and action in one generation), e.g. the GLPFT
  global checkpoint alone.

`default_agents` builds the usual four from the training layout (`<runs>/<stage>/model`, umi.train.stages) and
leaves out, with a reason, any whose checkpoints are missing.

`load_backends` loads one TransformersBackend per distinct checkpoint directory (a directory named for several roles
is loaded once and shared), with the token budget evaluation prompts are fitted to.
"""

from __future__ import annotations

import json

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from umi.vocabulary import AGENT_ROLES, ALPHA_UMI, SINGLE_LLM, STAGE_MANIFEST

__all__ = ["AgentKind", "AgentSpec", "ROLES_OF", "default_agents", "load_backends", "loaded_backends", "resolve_dtype",
           "training_budget"]

AgentKind = Literal["multi", "single"]
ROLES_OF: dict[str, tuple[str, ...]] = {"multi": AGENT_ROLES, "single": ("global",)}


@dataclass(frozen=True)
class AgentSpec:
    """One agent to evaluate: a name for the report and its checkpoint directories.

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


def resolve_dtype(name: str = "auto"):
    """The torch dtype evaluation runs in: `name` (float32, bfloat16, float16), or auto, umi.inference's rule (bf16
    where the device computes it natively, else float32), the same as chat's and the service's."""
    from umi.inference import inference_dtype

    return inference_dtype(None, name)


def load_backends(
    spec: AgentSpec,
    *,
    max_prompt_tokens: int | None = None,
    max_new_tokens: Mapping[str, int] | None = None,
    reuse_cache: bool = True,
    dtype: str = "auto",
) -> dict:
    """role -> TransformersBackend for `spec`, by the one loader (umi.agent.backend.load_backends): one backend per
    distinct directory, shared by the roles it plays. max_prompt_tokens / max_new_tokens: the prompt budget (see
    there); dtype: see resolve_dtype."""
    from umi.agent.backend import load_backends as load

    missing = spec.missing_checkpoints()
    if missing:
        raise FileNotFoundError(f"agent {spec.name!r}: no checkpoint at {', '.join(missing)}")
    return load(spec.roles, dtype=dtype, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens,
                reuse_cache=reuse_cache)  # fmt: skip


@contextmanager
def loaded_backends(spec: AgentSpec, **options) -> Iterator[dict]:
    """load_backends, freed on exit (several agents are evaluated one after another in one process)."""
    import gc

    backends = load_backends(spec, **options)
    try:
        yield backends
    finally:
        backends.clear()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


def _epochs(manifest: dict) -> float:
    stage = manifest.get("stage")
    settings = ((manifest.get("config") or {}).get("stages") or {}).get(stage) or {}
    return float(manifest.get("metrics", {}).get("epoch") or settings.get("epochs") or 1.0)


def training_budget(checkpoints: Mapping[str, str | Path] | AgentSpec) -> dict[str, float | int | list[str]]:
    """What an agent's weights cost to train: example tokens seen (each stage's dataset tokens times its epochs) and
    optimiser steps, summed over every stage in the lineage of its checkpoints (a local stage's manifest names the
    global checkpoint it started from), each stage once. An imported backbone costs 0."""
    roles = checkpoints.roles if isinstance(checkpoints, AgentSpec) else checkpoints
    seen: dict[str, dict] = {}
    todo = [Path(p) for p in roles.values()]
    while todo:
        path = todo.pop()
        key = str(path.resolve())
        manifest_path = path / STAGE_MANIFEST
        if key in seen or not manifest_path.is_file():
            continue
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        seen[key] = manifest
        if manifest.get("init_from"):
            todo.append(Path(manifest["init_from"]))
    tokens = sum(float(m.get("metrics", {}).get("data_tokens", 0.0)) * _epochs(m) for m in seen.values())
    steps = sum(int(m.get("metrics", {}).get("global_step", 0)) for m in seen.values())
    stages = sorted(str(m.get("stage")) for m in seen.values())
    return {"tokens": int(round(tokens)), "optimizer_steps": steps, "stages": stages}
