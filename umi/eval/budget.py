"""The evaluation's prompt budget: what the role models were trained with, raised where a prompt would lose its tool docs.

A prompt is fitted to the budget as training fits it: whole history turns dropped from the left
(umi.inference.tokens.fit_prompt). When even the prompt without any history does not fit, the step cannot be put to the
agent at all; at the 1,024 tokens the cpu profile trains with, that is the case for BFCL's multi-turn tool docs (12 of
the 71 held-out entries). So:

- `base_budget`: the evaluation's own setting (`EvalSettings.max_prompt_tokens`), by default the agent's training
  length (the largest `max_length` its checkpoints' stage manifests record; `untrained_prompt_tokens` for checkpoints
  that record none, like the imported backbone).
- `docs_budget`: the least budget at which every BFCL test prompt of the agent's roles keeps its tool docs and
  instructions (no history; the caller's with the gold thought), plus `raised_history_tokens` of history, so the
  raised prompt still shows the latest turns.
- `DocsFirstBackend`: every prompt that fits the base budget is fitted there, exactly as before (so a generation cache
  made at the base budget still answers it); only a prompt whose docs alone overflow goes to the same model with the
  raised budget. A prompt that fits neither is not prompted (umi.eval.static, umi.eval.live) and the report says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from umi.inference.agent_specs import AgentSpec
from umi.inference.protocol import Generation, GenerationRequest, ModelBackend
from umi.inference.tokens import TooLong, encode_prompt, fit_prompt
from umi.inference.wrapping import ForwardingBackend, per_backend
from umi.prompts import DocStyle, PromptBuilder, planner_target
from umi.schema import Trajectory
from umi.vocabulary import STAGE_MANIFEST

__all__ = [
    "trained_prompt_tokens",
    "base_budget",
    "docs_budget",
    "gold_path_misfits",
    "DocsFirstBackend",
    "docs_first_backends",
]


def trained_prompt_tokens(spec: AgentSpec) -> int | None:
    """The largest `max_length` the agent's checkpoints were trained with (their stage manifests' config); None when
    none records one."""
    found = []
    for path in spec.roles.values():
        manifest = Path(path) / STAGE_MANIFEST
        if manifest.is_file():
            length = (json.loads(manifest.read_text(encoding="utf-8")).get("config") or {}).get("max_length")
            if isinstance(length, int):
                found.append(length)
    return max(found) if found else None


def base_budget(spec: AgentSpec, max_prompt_tokens: int | None, untrained_prompt_tokens: int) -> int:
    """The budget an agent's prompts are fitted to: the setting when given, else the training length, else
    `untrained_prompt_tokens`."""
    if max_prompt_tokens is not None:
        return max_prompt_tokens
    return trained_prompt_tokens(spec) or untrained_prompt_tokens


def _without_history(prompt: str, span: Sequence[int]) -> str:
    return prompt[: span[0]] + prompt[span[1] :]


def docs_budget(tokenizer, trajectories: Iterable[Trajectory], doc_style: DocStyle, roles: Iterable[str]) -> int:
    """The most tokens any of these trajectories' prompts of `roles` needs with no history at all: the tool docs,
    the instructions and (caller) the step's gold thought."""
    from umi.eval.metrics import gold_steps
    from umi.schema import RecordError

    roles = set(roles)
    most = 0
    for traj in trajectories:
        builder = PromptBuilder(traj.tools, doc_style)
        rendered = []
        if "planner" in roles:
            rendered.append(builder.planner([]))
        if "global" in roles:
            rendered.append(builder.global_([]))
        if "caller" in roles:
            try:
                thoughts = {traj.steps[g.step_index].content for g in gold_steps(traj) if g.gold_plan == "call"}
            except RecordError:
                thoughts = set()
            rendered += [builder.caller([], planner_target(t or "", "caller")) for t in thoughts]
        for p in rendered:
            most = max(most, len(encode_prompt(tokenizer, _without_history(p.prompt, p.history_span))))
    return most


def gold_path_misfits(
    tokenizer,
    trajectories: Iterable[Trajectory],
    doc_style: DocStyle,
    roles: Iterable[str],
    budget: int,
    raised: int | None = None,
) -> dict[str, list[str]]:
    """Play each trajectory's gold path through the prompt builder (every role example along it: what an agent that
    makes BFCL's gold calls is prompted with, turn after turn, the history carried over) and fit each prompt of
    `roles` as evaluation does: to `budget`, else to `raised`. Returns {trajectory id: ["<example id> <role>", ...]}
    for the trajectories with a prompt that fits neither: a live entry there cannot be passed at this budget, and
    the report names it rather than count it as the agent's failure."""
    from umi.data.examples import trajectory_examples

    roles = set(roles)
    out: dict[str, list[str]] = {}
    for traj in trajectories:
        for example in trajectory_examples(traj, doc_style):
            if example["role"] not in roles:
                continue
            for limit in (budget, raised):
                if limit is None:
                    out.setdefault(traj.id, []).append(f"{example['id']} {example['role']}")
                    break
                try:
                    fit_prompt(tokenizer, example["prompt"], example["history_span"], limit, example["id"])
                    break
                except TooLong:
                    continue
    return out


class DocsFirstBackend(ForwardingBackend):
    """`base` for every prompt that fits its budget; `raised` (the same model, a larger budget) for a prompt whose
    docs alone do not fit it. Everything else (stats, the model) is `base`'s."""

    def __init__(self, base: ModelBackend, raised: ModelBackend):
        super().__init__(base)
        self.base = base
        self.raised = raised

    def _route(self, request: GenerationRequest) -> ModelBackend:
        try:
            self.base.prompt_ids(request)
        except TooLong:
            return self.raised
        return self.base

    def prompt_ids(self, request: GenerationRequest) -> tuple[list[int], int]:
        return self._route(request).prompt_ids(request)

    def generate(self, request: GenerationRequest) -> Generation:
        return self._route(request).generate(request)

    def _split(self, requests: Sequence[GenerationRequest]) -> tuple[list[int], list[int]]:
        base, raised = [], []
        for i, r in enumerate(requests):
            (base if self._route(r) is self.base else raised).append(i)
        return base, raised

    def generate_batch(self, requests: Sequence[GenerationRequest], batch_size: int = 8) -> list[Generation]:
        out: list[Generation | None] = [None] * len(requests)
        for backend, indices in zip((self.base, self.raised), self._split(requests)):
            if indices:
                for i, g in zip(indices, backend.generate_batch([requests[i] for i in indices], batch_size=batch_size)):
                    out[i] = g
        return out  # type: ignore[return-value]

    def generate_many(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_rows: int | None = None,
        done: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        out: list[Any] = [None] * len(requests)
        for backend, indices in zip((self.base, self.raised), self._split(requests)):
            if not indices:
                continue

            def finished(j: int, g, indices=indices) -> None:
                if done is not None:
                    done(indices[j], g)

            made = backend.generate_many([requests[i] for i in indices], max_rows=max_rows, done=finished)
            for i, g in zip(indices, made):
                out[i] = g
        return out

    def reset(self) -> None:
        self.base.reset()
        self.raised.reset()


def docs_first_backends(
    base: Mapping[str, ModelBackend], raised: Mapping[str, ModelBackend]
) -> dict[str, DocsFirstBackend]:
    """{role: DocsFirstBackend} over two backend dicts of the same roles; one wrapper per distinct base backend, so
    roles sharing a model still share it."""
    return per_backend(base, lambda backend, roles: DocsFirstBackend(backend, raised[roles[0]]))
