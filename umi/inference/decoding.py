"""Per-sequence decoding state shared by every decode loop: when a sequence stops, its text, the next token.

A role stops at the end of its own output: the EOS token (training appends EOS to every target), a stop string (the
turn end `</s>` by default, for models whose tokenizer treats it as plain text), or `max_new_tokens`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from umi.inference.protocol import Generation, GenerationRequest, StopReason

__all__ = ["Decoder", "decoder_for", "generation", "next_token", "sampler"]


@dataclass
class Decoder:
    """One sequence's generated tokens and whether it has stopped."""

    max_new_tokens: int
    stop_strings: tuple[str, ...]
    eos_ids: frozenset[int]
    window: int  # trailing tokens decoded to look for a stop string (longer than the longest one)
    ids: list[int] = field(default_factory=list)
    stop_reason: StopReason | None = None

    def push(self, token_id: int, tokenizer) -> bool:
        """Add a token; True when the sequence is finished."""
        self.ids.append(token_id)
        if token_id in self.eos_ids:
            self.stop_reason = "eos"
        elif self.stop_strings and any(
            s in tokenizer.decode(self.ids[-self.window :], skip_special_tokens=False) for s in self.stop_strings
        ):
            self.stop_reason = "stop_string"
        elif len(self.ids) >= self.max_new_tokens:
            self.stop_reason = "max_new_tokens"
        return self.stop_reason is not None

    def text(self, tokenizer) -> str:
        """The output without EOS, cut before the first stop string."""
        ids = self.ids[:-1] if self.stop_reason == "eos" else self.ids
        text = tokenizer.decode(ids, skip_special_tokens=False)
        cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
        return text if cut < 0 else text[:cut]


def decoder_for(request: GenerationRequest, eos_ids: frozenset[int]) -> Decoder:
    """The stopping rule of `request` (ValueError for a cap below 1)."""
    if request.max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    stops = () if request.ignore_eos else tuple(request.stop_strings)
    eos = frozenset() if request.ignore_eos else eos_ids
    longest = max((len(s) for s in stops), default=0)
    return Decoder(request.max_new_tokens, stops, eos, window=max(8, longest + 2))


def next_token(logits, request: GenerationRequest, generator) -> int:
    """Greedy at temperature 0; else sampled with the request's seeded generator (on the CPU, so a seed gives the
    same token on any device)."""
    import torch

    if request.temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float().cpu() / request.temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def sampler(request: GenerationRequest):
    """The seeded generator a sampled request draws from (None when greedy)."""
    import torch

    return torch.Generator(device="cpu").manual_seed(request.seed) if request.temperature > 0 else None


def generation(
    decoder: Decoder,
    tokenizer,
    *,
    prompt_tokens: int,
    reused: int,
    dropped_turns: int,
    started: float,
    prefill_seconds: float,
    seconds: float | None = None,
) -> Generation:
    """The Generation of a finished sequence; `seconds` defaults to the time since `started`."""
    return Generation(
        text=decoder.text(tokenizer),
        token_ids=tuple(decoder.ids),
        stop_reason=decoder.stop_reason or "max_new_tokens",
        prompt_tokens=prompt_tokens,
        prefill_tokens=prompt_tokens - reused,
        reused_tokens=reused,
        new_tokens=len(decoder.ids),
        dropped_turns=dropped_turns,
        prefill_seconds=prefill_seconds,
        seconds=time.perf_counter() - started if seconds is None else seconds,
    )
