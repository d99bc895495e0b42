"""What a generation backend is: a request, its result, and the two protocols callers program against.

- `Backend`: what the agent loop needs (generate, reset). Scripted backends in tests and a request's deadline view
  of a shared model are this much.
- `BatchingBackend`: a Backend that also takes many prompts at once (prompt_ids, generate_batch, generate_many):
  what static evaluation needs. The no-call baseline's fixed outputs are this much.
- `ModelBackend`: a BatchingBackend over one loaded model: `TransformersBackend`, `LlamaCppBackend`
  (umi.inference.llama_cpp_backend) and the wrappers that keep their interface (umi.inference.sharing, umi.eval's
  cache and budget). The prompt budget, the generation cache's key and the micro-batcher use the rest of it.

Callers program against these protocols only, never against one backend's class: what a backend cannot do natively
it still does behind the same method (llama.cpp's backend runs `generate_batch` / `decode_together` one sequence at a
time), and what differs between engines is declared here (`engine`, `decodes_together`, `with_context`).

The fields of `GenerationRequest` are part of the generation cache's key (umi.eval.generation_cache.request_key):
adding one changes every key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from umi.prompts import TURN_END

__all__ = [
    "ENGINES",
    "TRANSFORMERS",
    "Backend",
    "BackendStats",
    "BatchingBackend",
    "Finish",
    "Generation",
    "GenerationRequest",
    "ModelBackend",
    "StopReason",
    "Take",
]

StopReason = Literal["eos", "stop_string", "max_new_tokens"]

# the generation engines a role model can run on (umi.inference.loading.load_backends): transformers (torch, any
# device) and llama.cpp (a GGUF of the checkpoint, on the CPU; umi.inference.llama_cpp_backend)
TRANSFORMERS = "transformers"
ENGINES: tuple[str, ...] = (TRANSFORMERS, "llama.cpp")


@dataclass(frozen=True)
class GenerationRequest:
    """One role generation.

    history_span: where the rendered history sits in `prompt` ([start, end], whole turns ending in `</s>`); with it the
    backend drops turns from the left when the prompt does not fit the context, as training does. Without it a prompt
    that does not fit raises TooLong.
    temperature: 0 is greedy (the paper's decoding); above 0 samples with `seed` (the agent uses it only to retry a
    planner that wrote nothing, since greedy decoding would write nothing again).
    ignore_eos: neither EOS nor a stop string ends the generation, only max_new_tokens.
    """

    prompt: str
    history_span: tuple[int, int] | None = None
    max_new_tokens: int = 256
    stop_strings: tuple[str, ...] = (TURN_END,)
    temperature: float = 0.0
    seed: int = 0
    record_id: str = "?"
    ignore_eos: bool = False  # decode exactly max_new_tokens (benchmarks: a fixed amount of decoding work)


@dataclass(frozen=True)
class Generation:
    """What a request produced. `text` is cut before the first stop string and holds no EOS.

    prompt_tokens: the prompt's length in tokens after fitting; prefill_tokens: how many of them ran through the model
    (the rest came from a cache: reused_tokens); new_tokens: tokens generated (EOS included when it stopped there).
    """

    text: str
    token_ids: tuple[int, ...]
    stop_reason: StopReason
    prompt_tokens: int
    prefill_tokens: int
    reused_tokens: int
    new_tokens: int
    dropped_turns: int
    prefill_seconds: float
    seconds: float

    @classmethod
    def of_text(cls, text: str, *, prompt_tokens: int = 0, new_tokens: int = 0) -> "Generation":
        """A generation made without a model (a baseline's fixed text, a scripted backend): stopped at EOS, no time."""
        return cls(
            text=text,
            token_ids=(),
            stop_reason="eos",
            prompt_tokens=prompt_tokens,
            prefill_tokens=prompt_tokens,
            reused_tokens=0,
            new_tokens=new_tokens,
            dropped_turns=0,
            prefill_seconds=0.0,
            seconds=0.0,
        )

    def timing(self) -> dict:
        """The numbers the agent records per step (JSON-ready)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "prefill_tokens": self.prefill_tokens,
            "reused_tokens": self.reused_tokens,
            "new_tokens": self.new_tokens,
            "dropped_turns": self.dropped_turns,
            "stop_reason": self.stop_reason,
            "prefill_seconds": round(self.prefill_seconds, 6),
            "seconds": round(self.seconds, 6),
        }


@dataclass
class BackendStats:
    """Totals over a backend's generations (benchmarks read how much prefill the KV-cache reuse saved)."""

    calls: int = 0
    prompt_tokens: int = 0
    prefill_tokens: int = 0
    reused_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    def add(self, g: Generation) -> None:
        self.calls += 1
        self.prompt_tokens += g.prompt_tokens
        self.prefill_tokens += g.prefill_tokens
        self.reused_tokens += g.reused_tokens
        self.new_tokens += g.new_tokens
        self.seconds += g.seconds


# Continuous batching's two callbacks (ModelBackend.decode_together): take(room) gives up to `room` (key, request)
# pairs to start now; finish(key, result) receives each one's Generation, its exception, or None when it was dropped.
Take = Callable[[int], Sequence[tuple[Any, GenerationRequest]]]
Finish = Callable[[Any, "Generation | Exception | None"], None]


class Backend(Protocol):
    """What the agent loop needs from a generation backend."""

    def generate(self, request: GenerationRequest) -> Generation: ...

    def reset(self) -> None:
        """Forget cached state (between episodes)."""


class BatchingBackend(Backend, Protocol):
    """A backend that takes many prompts at once (static evaluation)."""

    def prompt_ids(self, request: GenerationRequest) -> tuple[list[int], int]:
        """The request's prompt ids fitted to the context, and the history turns dropped (TooLong if it cannot fit)."""
        ...

    def generate_batch(self, requests: Sequence[GenerationRequest], batch_size: int = 8) -> list[Generation]:
        """Independent prompts decoded together, left-padded (static evaluation's `padded` batching)."""
        ...

    def generate_many(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_rows: int | None = None,
        dropped: Callable[[int], bool] | None = None,
        done: Callable[[int, Generation | Exception | None], None] | None = None,
    ) -> list[Generation | Exception | None]:
        """Requests decoded by continuous batching, in order (static evaluation's `continuous` batching): results in
        the order of `requests` (a request that cannot run gets its exception, a dropped one None), `done(i, result)`
        called as each one finishes."""
        ...


class ModelBackend(BatchingBackend, Protocol):
    """A backend over one loaded model (see the module doc).

    model, tokenizer: the loaded model (a transformers model, a peft model when `adapter` is set, or a llama.cpp
    model; roles over the same `model` object share its lock, umi.inference.sharing) and the Hugging Face tokenizer
    prompts are tokenised with; adapter: the LoRA adapter of `model` this backend generates with (None: the plain
    model); context_length: prompt + new tokens fit it; max_cache_slots: prompts whose KV caches it keeps for reuse;
    decodes_together: whether generate_batch and decode_together run several sequences in one forward pass (False:
    one after another, the same results without the speed-up); engine: what decodes the weights, and in which form
    where the caller's torch dtype does not say it: `transformers`, or `llama.cpp/<GGUF type>` (the generation
    cache's key holds it: one engine's texts are never another's)."""

    engine: str
    model: Any
    tokenizer: Any
    adapter: str | None
    context_length: int
    max_cache_slots: int
    decodes_together: bool
    stats: BackendStats

    def decode_together(self, take: Take, finish: Finish, dropped: Callable[[Any], bool], *, max_rows: int = 8) -> None:
        """Continuous batching over requests that arrive while it runs (the micro-batcher's worker)."""
        ...

    def with_context(self, context_length: int) -> "ModelBackend":
        """A backend over the same loaded model (same tokenizer and adapter, KV caches of its own) whose prompt +
        new tokens fit `context_length` (evaluation's raised budget for prompts whose tool docs overflow)."""
        ...
