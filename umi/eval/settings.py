"""Settings of an evaluation, and the suggested sizes per machine (`PROFILES`).

The generation caps and retries are umi.inference.presets' EVALUATION preset (the `full` profile: EVALUATION_FULL).
Untrained models rarely stop on their own: they write until `max_new_tokens`, so the caps bound the cost of the
backbone row. The defaults sit above what the gold outputs need (SmolLM2 tokenizer, compact docs; p95 of target
tokens on the BFCL test split / ToolBench out-of-domain set: planner 42 / 197, caller 59 / 61, summarizer 81 / 500,
global 88 / 336): a trained model stops well before them, and a cut-off ToolBench answer still scores R-L on what was
written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from umi.inference.gguf_export import GGUF_TYPES
from umi.inference.presets import EVALUATION, EVALUATION_FULL, MAX_STEPS, GenerationSettings
from umi.inference.protocol import ENGINES, TRANSFORMERS

__all__ = ["EvalSettings", "PROFILES"]


@dataclass(frozen=True)
class EvalSettings:
    """max_new_tokens: per role (planner, caller, summarizer, global). batch_size: static prompts decoded together.
    static_batching: `continuous` (a role's prompts in trajectory order, each prefilled from the KV cache of the step
    before it, a finished row replaced at once) or `padded` (left-padded batches of prompts sorted by length, each
    prefilled whole; how static evaluation ran until 2026-12-07). Both are greedy and give the same texts up to
    floating-point summation order (benchmarks/static_eval.py counts how many differ).
    max_prompt_tokens: the token budget of a prompt (history dropped from the left to fit, as training does); None:
    what the agent was trained with (its checkpoints' `max_length`; `untrained_prompt_tokens` for checkpoints that
    record none, like the imported backbone). umi.eval.budget.
    fit_tool_docs: a prompt whose tool docs and instructions alone do not fit that budget goes to the same model with
    a raised budget: the least that holds every BFCL test prompt's docs, plus `raised_history_tokens` of history
    (prompts that fit the budget are fitted to it as before). Off: such a step is not prompted (left out, counted).
    max_steps: planner (or single-LLM) turns per user turn in live rollouts; a turn whose gold needs more (one per
    gold call plus one to conclude) gets that many (umi.eval.live), so the cap never decides a failure.
    planner_retries: live retries of a planner that wrote nothing. stop_on_failure: end a live entry at its first
    failed turn (it cannot pass any more; saves the rest of the rollout, but the external judge then sees only the
    turns that ran).
    live_concurrency: live entries rolled out at once, their generations decoded together (umi.inference.sharing:
    continuous batching per model); 1: one entry after another. A batch changes the kernels' reduction order, so in rare
    low-margin steps a text can differ from the one the entry gets alone, as with any batch size.
    dtype: weights at evaluation: float32, bfloat16, or auto (bfloat16 on a GPU that has it and on a CPU with native
    bf16 arithmetic, AVX512-BF16 or AMX, where it runs about twice as fast as float32; float32 elsewhere).
    engine: what generates: transformers (the default; weights in `dtype`) or llama.cpp (on the CPU, each role
    checkpoint's GGUF of `gguf_type`, f32, bf16 or q8_0, converted once per checkpoint fingerprint into umi's cache:
    umi.inference.gguf_export; `dtype` does not apply). The generation cache keeps each engine's texts, and each GGUF
    type's, apart. On a tiny model an f32 GGUF's greedy texts equal transformers float32's; on the BFCL test split
    the agreement is not measured yet (docs/evaluation.md).
    limit / ood_limit / live_limit: trajectories of the BFCL test split / of the ToolBench out-of-domain set (None:
    as `limit`) / live entries; None: all."""

    max_new_tokens: dict[str, int] = field(default_factory=EVALUATION.caps)
    batch_size: int = 8
    static_batching: str = "continuous"
    max_prompt_tokens: int | None = None
    untrained_prompt_tokens: int = 1024
    fit_tool_docs: bool = True
    raised_history_tokens: int = 128
    max_steps: int = MAX_STEPS
    planner_retries: int = EVALUATION.planner_retries
    stop_on_failure: bool = True
    live_concurrency: int = 1
    dtype: str = "auto"
    engine: str = TRANSFORMERS
    gguf_type: str = "f32"
    limit: int | None = None
    ood_limit: int | None = None
    live_limit: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_steps < 1 or self.planner_retries < 0 or self.live_concurrency < 1:
            raise ValueError("batch_size, max_steps and live_concurrency must be >= 1, planner_retries >= 0")
        self.generation()  # checks the caps (every role, each >= 1)
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 16 or self.untrained_prompt_tokens < 16:
            raise ValueError("max_prompt_tokens and untrained_prompt_tokens must leave room for a prompt (>= 16)")
        if self.raised_history_tokens < 0:
            raise ValueError("raised_history_tokens must be >= 0")
        if self.static_batching not in ("continuous", "padded"):
            raise ValueError(f"static_batching must be continuous or padded, got {self.static_batching!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.gguf_type not in GGUF_TYPES:
            raise ValueError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, got {self.gguf_type!r}")
        for name in ("limit", "ood_limit", "live_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")

    def generation(self) -> GenerationSettings:
        """The EVALUATION preset with this evaluation's caps and retries (what the live rollouts' agents run)."""
        return EVALUATION.with_(max_new_tokens=dict(self.max_new_tokens), planner_retries=self.planner_retries)

    def with_(self, **changes: Any) -> "EvalSettings":
        """A copy with the given fields changed; None values are ignored (unset CLI options)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# cpu: four agents in about 8-10 minutes on 2 cores (one trajectory of each BFCL category, 2 ToolBench trajectories,
# one live entry: the cheapest held-out entry a no-call agent cannot pass, umi.eval.testsets.live_sample; measured
# per-step costs in docs/evaluation.md). Small samples: a smoke test and a coarse ranking.
# full: every trajectory and every held-out live entry (71), the paper's step cap (raised per turn where the gold
# needs more), 8 live entries at once (decoded together); for a GPU. Both: prompts fitted to the length the agent
# was trained with, raised where a prompt would lose its tool docs (umi.eval.budget).
PROFILES: dict[str, EvalSettings] = {
    "cpu": EvalSettings(limit=6, ood_limit=2, live_limit=1, max_steps=4),
    "full": EvalSettings(
        max_new_tokens=EVALUATION_FULL.caps(),
        planner_retries=EVALUATION_FULL.planner_retries,
        max_steps=MAX_STEPS,
        stop_on_failure=False,
        batch_size=16,
        live_concurrency=8,
    ),
}
