"""The agents an evaluation compares: their backends loaded and freed, what they cost to train, which split they
were trained on.

`AgentSpec` (an agent's name and checkpoint directories) and `default_agents` (the usual four from the training
layout) are umi.inference.agent_specs' (`umi chat` names agents by them too). `load_agent_backends` loads one
backend per distinct checkpoint directory (a directory named for several roles is loaded once and shared) on the
evaluation's engine, with the token budget evaluation prompts are fitted to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from umi.inference.agent_specs import AgentSpec
from umi.inference.protocol import TRANSFORMERS, ModelBackend
from umi.inference.wrapping import per_backend
from umi.vocabulary import STAGE_MANIFEST

__all__ = [
    "load_agent_backends",
    "loaded_backends",
    "resolve_dtype",
    "training_budget",
    "check_split",
    "raised_backends",
]


def resolve_dtype(name: str = "auto"):
    """The torch dtype evaluation runs in: `name` (float32, bfloat16, float16), or auto, umi.inference.devices' rule
    (bf16 where the device computes it natively, else float32), the same as chat's and the service's."""
    from umi.inference.devices import inference_dtype

    return inference_dtype(None, name)


def load_agent_backends(
    spec: AgentSpec,
    *,
    max_prompt_tokens: int | None = None,
    max_new_tokens: Mapping[str, int] | None = None,
    reuse_cache: bool = True,
    max_cache_slots: int = 3,
    dtype: str = "auto",
    engine: str = TRANSFORMERS,
    gguf_type: str = "f32",
) -> dict[str, ModelBackend]:
    """role -> backend for `spec`, by the one loader (umi.inference.loading.load_backends): one backend per distinct
    directory, shared by the roles it plays. max_prompt_tokens / max_new_tokens: the prompt budget (see there);
    max_cache_slots: prompts whose KV caches a transformers backend keeps for reuse; dtype: see resolve_dtype (on
    transformers); engine and gguf_type: umi.eval.settings.EvalSettings'."""
    from umi.inference.loading import load_backends as load

    missing = spec.missing_checkpoints()
    if missing:
        raise FileNotFoundError(f"agent {spec.name!r}: no checkpoint at {', '.join(missing)}")
    return load(
        spec.roles,
        dtype=dtype,
        max_prompt_tokens=max_prompt_tokens,
        max_new_tokens=max_new_tokens,
        reuse_cache=reuse_cache,
        max_cache_slots=max_cache_slots,
        engine=engine,
        gguf_type=gguf_type,
    )


def raised_backends(
    backends: Mapping[str, ModelBackend], max_prompt_tokens: int, max_new_tokens: Mapping[str, int]
) -> dict[str, ModelBackend]:
    """{role: backend} over the same models and tokenizers as `backends` (load_agent_backends' result), with a prompt
    budget of `max_prompt_tokens` (umi.eval.budget: where a prompt's tool docs alone overflow the base one). One per
    distinct backend, as loaded."""

    def raise_budget(backend: ModelBackend, roles: list[str]) -> ModelBackend:
        cap = max(int(max_new_tokens.get(r, 0)) for r in roles)
        return backend.with_context(max_prompt_tokens + cap)

    return per_backend(backends, raise_budget)


@contextmanager
def loaded_backends(spec: AgentSpec, **options) -> Iterator[dict]:
    """load_agent_backends, freed on exit (several agents are evaluated one after another in one process)."""
    import gc

    backends = load_agent_backends(spec, **options)
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


def check_split(spec: AgentSpec, current: Mapping) -> None:
    """Refuse (ValueError) an evaluation whose split (`current`, umi.data.splits.split_rule of params.yaml) is not
    the one any of the agent's checkpoints was trained on (their stage manifest's `split`): the test split would
    then hold trajectories the models trained on, or leave out ones they did not. Checkpoints that record no split
    (an imported backbone, stages trained before the split was recorded) are not checked."""
    from umi.data.splits import split_differences

    for role, path in spec.roles.items():
        manifest = Path(path) / STAGE_MANIFEST
        if not manifest.is_file():
            continue
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("split")
        if recorded is None:
            continue
        differences = split_differences(recorded, current)
        if differences:
            raise ValueError(
                f"agent {spec.name!r}: the {role} checkpoint {path} was trained on another split than params.yaml "
                f"gives now ({'; '.join(differences)}): evaluate with the params.yaml it was trained with, or "
                "retrain"
            )
