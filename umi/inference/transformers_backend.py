"""The generation backend over a transformers causal LM: greedy decoding (seeded sampling for retries) with prefix
KV-cache reuse.

One `TransformersBackend` wraps one model and its tokenizer. The α-UMi agent uses three (planner, caller,
summarizer) or one backend in every role; the single-LLM baseline uses one.

A prompt becomes token ids as training makes them (umi.inference.tokens: the tokenizer's special prefix, then the
prompt text; whole history turns dropped from the left when the prompt does not fit the context). Its prefill starts
from the longest cached prefix (umi.inference.prefix_cache; `reuse_cache=False` recomputes every prompt, the baseline
in benchmarks/agent_latency.py). Three ways to decode, each a module of its own beside this one:

- `generate`: one request, token by token (the agent loop);
- `generate_batch`: independent prompts left-padded into one batch (umi.inference.padded_batch);
- `generate_many` / `decode_together`: continuous batching, each prompt prefilled alone with cache reuse, then joining
  the running batch (umi.inference.continuous_batching). A model whose cache cannot be padded (sliding-window layers)
  runs those requests one at a time through `generate`'s path.

Not thread-safe: a lock serialises concurrent calls (umi.inference.sharing batches them instead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from umi.inference.decoding import (
    Decoder,
    decode_one_at_a_time,
    eos_ids,
    fit_request,
    generate_in_order,
    generation,
    next_token,
    sampler,
)
from umi.inference.prefix_cache import PrefixCache, Slot, prefix_croppable
from umi.inference.protocol import TRANSFORMERS, BackendStats, Finish, Generation, GenerationRequest, Take
from umi.inference.tokens import request_ids

log = logging.getLogger(__name__)

__all__ = ["Prefill", "TransformersBackend"]


@dataclass
class Prefill:
    """A prompt after its prefill: the cache holding it, the slot that cache belongs to (None without reuse), how many
    prompt tokens came from the slot, the first new token, and the request's sampler."""

    cache: Any
    slot: Slot | None
    reused: int
    token: int
    generator: Any
    seconds: float


class TransformersBackend:
    """Generation with a transformers causal LM (see the module doc).

    context_length: prompt + new tokens must fit it (default: the model's max_position_embeddings). The prompt budget
    of a request is context_length - max_new_tokens, as training's max_length bounds prompt + target + EOS.
    max_cache_slots, min_shared_tokens: the prefix cache's (umi.inference.prefix_cache.PrefixCache).
    adapter: the LoRA adapter of `model` (a peft model) this backend generates with, switched in before each use.
    """

    engine = TRANSFORMERS

    def __init__(
        self,
        model,
        tokenizer,
        *,
        reuse_cache: bool = True,
        context_length: int | None = None,
        max_cache_slots: int = 3,
        min_shared_tokens: int = 16,
        adapter: str | None = None,
    ):
        self.prefix_cache = PrefixCache(model.config, max_cache_slots, min_shared_tokens)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.plain_cache = prefix_croppable(model)  # full-attention layers only: crop and left-pad exactly
        self.reuse_cache = reuse_cache and self.plain_cache
        if reuse_cache and not self.reuse_cache:
            log.warning(
                "%s has sliding-window or other non-prefix cache layers: KV-cache reuse is off, every prompt "
                "is recomputed",
                type(model).__name__,
            )
        self.context_length = int(context_length or getattr(model.config, "max_position_embeddings", 4096))
        self.eos_ids = eos_ids(model.generation_config, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.adapter = adapter
        self.stats = BackendStats()
        self._lock = threading.Lock()

    @property
    def max_cache_slots(self) -> int:
        return self.prefix_cache.max_slots

    @property
    def decodes_together(self) -> bool:
        return self.plain_cache  # other caches run generate_batch / decode_together one request at a time

    def with_context(self, context_length: int) -> "TransformersBackend":
        return TransformersBackend(
            self.model,
            self.tokenizer,
            context_length=context_length,
            adapter=self.adapter,
            max_cache_slots=self.max_cache_slots,
        )

    # --- public ---------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.prefix_cache.clear()

    def prompt_ids(self, request: GenerationRequest) -> tuple[list[int], int]:
        """The request's prompt as training tokenises it, fitted to the budget: (ids, dropped history turns)."""
        return request_ids(self.tokenizer, request, self.context_length)

    def generate(self, request: GenerationRequest) -> Generation:
        with self._lock:
            self.use_adapter()
            return self.generate_unlocked(request)

    def generate_batch(self, requests: Sequence[GenerationRequest], batch_size: int = 8) -> list[Generation]:
        """Independent prompts decoded together, left-padded (static evaluation). No cache reuse, no sampling.

        Results come back in the order of `requests`; prompts are batched by length so little goes into padding.
        Each Generation's seconds is its batch's wall time; prefill_tokens counts its own prompt, not the padding."""
        from umi.inference.padded_batch import decode_padded

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        with self._lock:
            fitted = [self.fit(r)[1:] for r in requests]  # validates every request before any work
            order = sorted(range(len(requests)), key=lambda i: len(fitted[i][0]))
            out: list[Generation | None] = [None] * len(requests)
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                for i, g in zip(chunk, decode_padded(self, [requests[i] for i in chunk], [fitted[i] for i in chunk])):
                    out[i] = g
            return out  # type: ignore[return-value]

    def generate_many(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_rows: int | None = None,
        dropped: Callable[[int], bool] | None = None,
        done: Callable[[int, Generation | Exception | None], None] | None = None,
    ) -> list[Generation | Exception | None]:
        """Requests decoded by continuous batching (see `decode_together`), taken in their order, at most `max_rows`
        at a time (default: all); results in the order of `requests`. Static evaluation passes a trajectory's steps
        in order, so each prompt reuses the KV cache of the one before it (its prefix). `dropped(i)`, checked before
        each step, takes request i out: its result is None. A request that cannot run (too long, empty) gets its
        exception as result; the others go on. `done(i, result)` is called as each one finishes."""
        return generate_in_order(self.decode_together, requests, max_rows=max_rows, dropped=dropped, done=done)

    def decode_together(self, take: Take, finish: Finish, dropped: Callable[[Any], bool], *, max_rows: int = 8) -> None:
        """Continuous batching: decode requests together, taking new ones in between steps.

        `take(room)` gives up to `room` (key, request) pairs to add now (called before the first step and between
        steps; empty: none waiting); `finish(key, result)` gets each request's Generation the moment it stops (its
        exception if it cannot run, None if it was dropped); `dropped(key)`, checked before each step, takes a request
        out (its deadline passed, its client left). Returns when no request is running and `take` gives none.
        See umi.inference.continuous_batching for how the rows share one batch."""
        from umi.inference.continuous_batching import decode_continuously

        with self._lock:
            self.use_adapter()
            if self.plain_cache:
                decode_continuously(self, take, finish, dropped, max_rows)
            else:  # a cache that cannot be padded (sliding windows): one at a time, each exactly as `generate`
                decode_one_at_a_time(self.generate_unlocked, take, finish, dropped)

    # --- the decode loops' building blocks (called with the lock held) --------------------------------------------
    def use_adapter(self) -> None:
        if self.adapter is not None:
            self.model.set_adapter(self.adapter)

    def fit(self, request: GenerationRequest) -> tuple[Decoder, list[int], int]:
        """The request's stopping rule, prompt ids and dropped turns; ValueError or TooLong when it cannot run."""
        return fit_request(self.tokenizer, request, self.context_length, self.eos_ids)

    def prefill(self, ids: list[int], request: GenerationRequest, started: float) -> Prefill:
        """Run the prompt `ids` through the model from the longest cached prefix (a fresh cache without reuse) and
        choose the first new token."""
        import torch
        from transformers import DynamicCache

        if self.reuse_cache:
            slot, reused = self.prefix_cache.take(ids)
            cache = slot.cache
        else:
            slot, reused, cache = None, 0, DynamicCache(config=self.model.config)
        generator = sampler(request)
        try:
            with torch.inference_mode():
                suffix = torch.tensor([ids[reused:]], dtype=torch.long, device=self.model.device)
                out = self.model(input_ids=suffix, past_key_values=cache, use_cache=True, logits_to_keep=1)
                token = next_token(out.logits[0, -1], request, generator)
        except BaseException:
            if slot is not None:  # the cache may hold part of a forward pass: it no longer matches slot.ids
                self.prefix_cache.discard(slot)
            raise
        return Prefill(cache, slot, reused, token, generator, seconds=time.perf_counter() - started)

    def generate_unlocked(self, request: GenerationRequest) -> Generation:
        """`generate` for a caller holding the lock with the adapter switched in."""
        import torch

        started = time.perf_counter()
        decoder, ids, dropped = self.fit(request)
        p = self.prefill(ids, request, started)
        token = p.token
        try:
            with torch.inference_mode():
                while not decoder.push(token, self.tokenizer):
                    step = torch.tensor([[token]], dtype=torch.long, device=self.model.device)
                    out = self.model(input_ids=step, past_key_values=p.cache, use_cache=True)
                    token = next_token(out.logits[0, -1], request, p.generator)
        except BaseException:
            if p.slot is not None:
                self.prefix_cache.discard(p.slot)
            raise
        if p.slot is not None:
            # the cache holds the prompt and every generated token but the last (never fed back)
            p.slot.ids = ids + decoder.ids[:-1]
            if p.cache.get_seq_length() != len(p.slot.ids):  # pragma: no cover - a transformers change: do not trust it
                self.prefix_cache.discard(p.slot)
        g = generation(
            decoder,
            self.tokenizer,
            prompt_tokens=len(ids),
            reused=p.reused,
            dropped_turns=dropped,
            started=started,
            prefill_seconds=p.seconds,
        )
        self.stats.add(g)
        return g
