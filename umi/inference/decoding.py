"""What every backend's decode loops share: a request fitted to a backend (its stopping rule and prompt ids), when a
sequence stops, its text, the next token (from torch logits or llama.cpp's numpy ones), the EOS tokens of a
checkpoint, and running requests one after another behind the batching methods.

A role stops at the end of its own output: the EOS token (training appends EOS to every target), a stop string (the
turn end `</s>` by default, for models whose tokenizer treats it as plain text), or `max_new_tokens`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from umi.inference.protocol import Finish, Generation, GenerationRequest, StopReason, Take
from umi.inference.tokens import TooLong, request_ids

__all__ = [
    "Decoder",
    "decode_one_at_a_time",
    "decoder_for",
    "eos_ids",
    "fit_request",
    "generate_in_order",
    "generation",
    "next_token",
    "next_token_numpy",
    "sampler",
]


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


def fit_request(
    tokenizer, request: GenerationRequest, context_length: int, eos: frozenset[int]
) -> tuple[Decoder, list[int], int]:
    """The request's stopping rule, prompt ids and dropped turns; ValueError or TooLong when it cannot run."""
    decoder = decoder_for(request, eos)
    ids, dropped = request_ids(tokenizer, request, context_length)
    if not ids:
        raise ValueError(f"record {request.record_id}: empty prompt")
    return decoder, ids, dropped


def eos_ids(generation_config, tokenizer) -> frozenset[int]:
    """Every token that ends a generation: the checkpoint's generation config's EOS (one or several) and the
    tokenizer's."""
    eos = generation_config.eos_token_id if generation_config is not None else None
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


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


def next_token_numpy(logits, request: GenerationRequest, rng) -> int:
    """`next_token` for numpy logits (llama.cpp's): the same argmax at temperature 0 (the first of tied maxima, as
    torch's); else drawn with `rng`, a numpy Generator seeded with the request's seed (reproducible by seed, not the
    same draw as torch's sampler)."""
    import numpy as np

    if request.temperature <= 0:
        return int(np.argmax(logits))
    scaled = np.asarray(logits, dtype=np.float64) / request.temperature
    probs = np.exp(scaled - scaled.max())
    return int(rng.choice(probs.size, p=probs / probs.sum()))


def decode_one_at_a_time(
    generate: Callable[[GenerationRequest], Generation], take: Take, finish: Finish, dropped: Callable[[Any], bool]
) -> None:
    """`ModelBackend.decode_together` for a backend that decodes one sequence at a time: each request taken as the
    last one finishes, run by `generate` (the backend's own, its lock held by the caller)."""
    while batch := take(1):
        for key, request in batch:
            if dropped(key):
                finish(key, None)
                continue
            try:
                finish(key, generate(request))
            except (TooLong, ValueError) as e:
                finish(key, e)


def generate_in_order(
    decode_together: Callable[..., None],
    requests: Sequence[GenerationRequest],
    *,
    max_rows: int | None = None,
    dropped: Callable[[int], bool] | None = None,
    done: Callable[[int, Generation | Exception | None], None] | None = None,
) -> list[Generation | Exception | None]:
    """`ModelBackend.generate_many` by a backend's `decode_together`: the requests taken in their order, at most
    `max_rows` at a time (default: all); results in the order of `requests` (module doc of the protocol)."""
    requests = list(requests)
    results: list[Generation | Exception | None] = [None] * len(requests)
    pending = list(enumerate(requests))

    def take(room: int) -> list[tuple[int, GenerationRequest]]:
        batch = pending[:room]
        del pending[:room]
        return batch

    def finish(i: int, result: Generation | Exception | None) -> None:
        results[i] = result
        if done is not None:
            done(i, result)

    rows = max(len(requests), 1) if max_rows is None else max_rows
    decode_together(take, finish, dropped or (lambda _: False), max_rows=rows)
    return results


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
