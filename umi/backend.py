"""Generation backends for the agent roles: a transformers causal LM with greedy decoding and prefix KV-cache reuse.

One `TransformersBackend` wraps one model and its tokenizer. The α-UMi agent uses three (planner, caller,
summarizer) or one backend in every role; the single-LLM baseline uses one.

Tokenisation is training's: a prompt becomes token ids through `umi.train.tokenize.fit_prompt` (the tokenizer's
special prefix, then the prompt text; whole history turns dropped from the left when the prompt does not fit the
context), so the model sees at inference exactly the ids it was trained on for the same prompt.

A role stops at the end of its own output: the EOS token (training appends EOS to every target), a stop string (the
turn end `</s>` by default, for models whose tokenizer treats it as plain text), or `max_new_tokens`.

KV-cache reuse. A role's prompt grows step by step: tool docs, then a history that only gains turns at its end, then
a short fixed tail. Recomputing it every step spends most of the time on tokens already seen. The backend keeps a few
cache slots, each a `DynamicCache` plus the token ids it holds (prompt + generated tokens fed back). A request takes
the slot sharing the longest token prefix with its prompt, crops that slot's cache to the shared prefix and runs only
the new suffix through the model. Token ids are compared (not text), so a prefix whose last token tokenises
differently in the longer prompt is simply not shared; the result is the same computation as a full prefill, up to
floating-point summation order. `reuse_cache=False` recomputes every prompt (the baseline in
benchmarks/agent_latency.py). Slots are chosen automatically, so one model serving all three roles benefits too (the
caller's prompt starts as the planner's does).

Not thread-safe: one backend serves one episode at a time (a lock serialises concurrent calls).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from umi.prompts import TURN_END
from umi.train.tokenize import TooLong, encode_prompt, fit_prompt

log = logging.getLogger(__name__)

__all__ = [
    "Backend",
    "BackendStats",
    "Generation",
    "GenerationRequest",
    "StopReason",
    "TooLong",
    "TransformersBackend",
    "load_backends",
]

StopReason = Literal["eos", "stop_string", "max_new_tokens"]


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


class Backend(Protocol):
    """What the agent loop needs from a generation backend (a scripted one in tests, transformers for real)."""

    def generate(self, request: GenerationRequest) -> Generation: ...

    def reset(self) -> None:
        """Forget cached state (between episodes)."""


@dataclass
class _Slot:
    cache: object  # transformers DynamicCache
    ids: list[int]  # the tokens the cache holds, in order
    last_used: int = 0


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # compare in blocks first: prompts share thousands of tokens, a Python loop over each would dominate short steps
    block = 256
    while i + block <= n and a[i : i + block] == b[i : i + block]:
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _prefix_croppable(model) -> bool:
    """Whether the model's cache is plain full-attention layers, which crop to any prefix exactly (a sliding-window
    layer past its window has dropped the tokens a crop would need)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = DynamicCache(config=model.config).layers
    return all(type(layer) is DynamicLayer for layer in layers)


@dataclass
class _Decoder:
    """Per-sequence stopping state while decoding."""

    max_new_tokens: int
    stop_strings: tuple[str, ...]
    eos_ids: frozenset[int]
    window: int
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
        ids = self.ids[:-1] if self.stop_reason == "eos" else self.ids
        text = tokenizer.decode(ids, skip_special_tokens=False)
        cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
        return text if cut < 0 else text[:cut]


@dataclass
class _Row:
    """One request of a batched decode (generate_many)."""

    key: Any
    request: GenerationRequest
    ids: list[int]
    dropped_turns: int
    reused: int
    decoder: _Decoder
    generator: object
    token: int  # the last token chosen, fed to the model at the next step
    kv: list  # per layer (keys, values) of the prompt, until the row joins the batch's cache
    started: float
    prefill_seconds: float


def _prepend(items: list, take: Callable[[int], Sequence]) -> Callable[[int], Sequence]:
    """`take` that first gives `items` (already taken from the source)."""

    def again(room: int) -> Sequence:
        first = items[:room]
        del items[:room]
        return [*first, *(take(room - len(first)) if room > len(first) else ())]

    return again


class TransformersBackend:
    """Greedy generation with a transformers causal LM, with per-prefix KV-cache reuse (see the module doc).

    context_length: prompt + new tokens must fit it (default: the model's max_position_embeddings). The prompt budget
    of a request is context_length - max_new_tokens, as training's max_length bounds prompt + target + EOS.
    max_cache_slots: caches kept at once (3: planner, caller and summarizer prompts when one model plays all roles).
    min_shared_tokens: a prompt sharing fewer tokens than this with every slot takes a free slot (or the least
    recently used one) rather than overwrite a useful cache.
    """

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
        import torch

        if max_cache_slots < 1:
            raise ValueError("max_cache_slots must be >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.plain_cache = _prefix_croppable(model)  # full-attention layers only: crop and left-pad exactly
        self.reuse_cache = reuse_cache and self.plain_cache
        if reuse_cache and not self.reuse_cache:
            log.warning(
                "%s has sliding-window or other non-prefix cache layers: KV-cache reuse is off, every prompt "
                "is recomputed",
                type(model).__name__,
            )
        self.context_length = int(context_length or getattr(model.config, "max_position_embeddings", 4096))
        self.max_cache_slots = max_cache_slots
        self.min_shared_tokens = min_shared_tokens
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.adapter = adapter  # the LoRA adapter of `model` (a peft model) this backend generates with
        self.stats = BackendStats()
        self._slots: list[_Slot] = []
        self._clock = 0
        self._lock = threading.Lock()
        self._torch = torch

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: str = "auto", device: str | None = None, **kwargs
    ) -> "TransformersBackend":
        """A backend over a checkpoint directory (an imported backbone or a trained role), loaded by the inference
        rule (umi.inference: device and dtype)."""
        return load_backends({"model": path}, dtype=dtype, device=device, **kwargs)["model"]

    # --- public ---------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._slots.clear()

    def prompt_ids(self, request: GenerationRequest) -> tuple[list[int], int]:
        """The request's prompt as training tokenises it, fitted to the budget: (ids, dropped history turns)."""
        budget = self.context_length - request.max_new_tokens
        if budget <= 0:
            raise ValueError(
                f"max_new_tokens {request.max_new_tokens} leaves no room in a {self.context_length} token context"
            )
        if request.history_span is not None:
            return fit_prompt(self.tokenizer, request.prompt, request.history_span, budget, request.record_id)
        ids = encode_prompt(self.tokenizer, request.prompt)
        if len(ids) > budget:
            raise TooLong(request.record_id, len(ids), budget)
        return ids, 0

    def generate(self, request: GenerationRequest) -> Generation:
        with self._lock:
            return self._generate(request)

    def generate_batch(self, requests: Sequence[GenerationRequest], batch_size: int = 8) -> list[Generation]:
        """Independent prompts decoded together, left-padded (static evaluation). No cache reuse, no sampling.

        Results come back in the order of `requests`; prompts are batched by length so little goes into padding.
        Each Generation's seconds is its batch's wall time; prefill_tokens counts its own prompt, not the padding."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        with self._lock:
            fitted = []
            for r in requests:
                self._decoder(r)  # validates the request before any work
                ids, dropped = self.prompt_ids(r)
                if not ids:
                    raise ValueError(f"record {r.record_id}: empty prompt")
                fitted.append((ids, dropped))
            order = sorted(range(len(requests)), key=lambda i: len(fitted[i][0]))
            out: list[Generation | None] = [None] * len(requests)
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                for i, g in zip(chunk, self._generate_padded([requests[i] for i in chunk], [fitted[i] for i in chunk])):
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
        self.decode_together(take, finish, dropped or (lambda _: False), max_rows=rows)
        return results

    def decode_together(
        self,
        take: Callable[[int], Sequence[tuple[Any, GenerationRequest]]],
        finish: Callable[[Any, Generation | Exception | None], None],
        dropped: Callable[[Any], bool],
        *,
        max_rows: int = 8,
    ) -> None:
        """Continuous batching: decode requests together, taking new ones in between steps.

        `take(room)` gives up to `room` (key, request) pairs to add now (called before the first step and between
        steps; empty: none waiting); `finish(key, result)` gets each request's Generation the moment it stops (its
        exception if it cannot run, None if it was dropped); `dropped(key)`, checked before each step, takes a request
        out (its deadline passed, its client left). Returns when no request is running and `take` gives none.

        Each prompt is prefilled on its own, with the KV-cache reuse `generate` does (so a prompt costs what it costs
        alone and its first token is the one `generate` gives), then joins the running batch: caches left-padded to
        one length, an attention mask over the padding, positions counting real tokens only. A request leaves as soon
        as it stops (EOS, a stop string, its own max_new_tokens); temperature and seed are per request. Models whose
        cache cannot be padded (sliding-window layers) run the requests one at a time through `generate`'s path."""
        with self._lock:
            self._decode_together(take, finish, dropped, max_rows)

        # --- internals ------------------------------------------------------------------------------------------------

    def _decoder(self, request: GenerationRequest) -> _Decoder:
        if request.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        stops = () if request.ignore_eos else tuple(request.stop_strings)
        eos_ids = frozenset() if request.ignore_eos else self.eos_ids
        longest = max((len(s) for s in stops), default=0)
        return _Decoder(request.max_new_tokens, stops, eos_ids, window=max(8, longest + 2))

    def _take_slot(self, ids: list[int]) -> tuple[_Slot, int]:
        """The slot to extend and how many of its tokens to keep."""
        from transformers import DynamicCache

        self._clock += 1
        best, best_shared = None, -1
        for slot in self._slots:
            shared = _shared_prefix(slot.ids, ids)
            if shared > best_shared:
                best, best_shared = slot, shared
        if best is None or (best_shared < self.min_shared_tokens and len(self._slots) < self.max_cache_slots):
            best = _Slot(DynamicCache(config=self.model.config), [])
            self._slots.append(best)
            best_shared = 0
        elif best_shared < self.min_shared_tokens:
            best = min(self._slots, key=lambda s: s.last_used)
            best_shared = _shared_prefix(best.ids, ids)
        elif best_shared < len(best.ids) and self.max_cache_slots > 1:
            # the best slot holds more than this prompt shares (another trajectory or entry on the same docs, a
            # prompt whose tail differs): copy the shared prefix into a slot of its own rather than crop a cache
            # its own sequence still needs (a free slot, else the least recently used other one)
            best = self._fork(best, min(best_shared, len(ids) - 1))
        # the last prompt token always runs: its logits give the first new token
        keep = min(best_shared, len(ids) - 1)
        held = best.cache.get_seq_length()
        if keep == 0:
            best.cache = DynamicCache(config=self.model.config)
        elif keep < held:
            best.cache.crop(keep - held)
        best.ids = ids[:keep]
        best.last_used = self._clock
        return best, keep

    def _fork(self, source: _Slot, keep: int) -> _Slot:
        """A slot holding the first `keep` tokens of `source` (whose own cache is left as it is)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if keep > 0:
            for layer, held in zip(cache.layers, source.cache.layers):
                layer.update(held.keys[:, :, :keep], held.values[:, :, :keep])
        fork = _Slot(cache, source.ids[:keep])
        if len(self._slots) < self.max_cache_slots:
            self._slots.append(fork)
        else:
            oldest = min((s for s in self._slots if s is not source), key=lambda s: s.last_used)
            self._slots[self._slots.index(oldest)] = fork
        return fork

    def _next_token(self, logits, request: GenerationRequest, generator) -> int:
        torch = self._torch
        if request.temperature <= 0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits.float().cpu() / request.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator).item())

    def _use_adapter(self) -> None:
        if self.adapter is not None:
            self.model.set_adapter(self.adapter)

    def _generate(self, request: GenerationRequest) -> Generation:
        from transformers import DynamicCache

        torch = self._torch
        started = time.perf_counter()
        self._use_adapter()
        decoder = self._decoder(request)
        ids, dropped = self.prompt_ids(request)
        if not ids:
            raise ValueError(f"record {request.record_id}: empty prompt")
        if self.reuse_cache:
            slot, reused = self._take_slot(ids)
            cache = slot.cache
        else:
            slot, reused, cache = None, 0, DynamicCache(config=self.model.config)
        device = self.model.device
        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
        try:
            with torch.inference_mode():
                suffix = torch.tensor([ids[reused:]], dtype=torch.long, device=device)
                out = self.model(input_ids=suffix, past_key_values=cache, use_cache=True, logits_to_keep=1)
                token = self._next_token(out.logits[0, -1], request, generator)
                prefill_seconds = time.perf_counter() - started
                while not decoder.push(token, self.tokenizer):
                    step = torch.tensor([[token]], dtype=torch.long, device=device)
                    out = self.model(input_ids=step, past_key_values=cache, use_cache=True)
                    token = self._next_token(out.logits[0, -1], request, generator)
        except BaseException:
            if slot is not None:  # the cache may hold part of a forward pass: it no longer matches slot.ids
                self._slots.remove(slot)
            raise
        if slot is not None:
            # the cache holds the prompt and every generated token but the last (never fed back)
            slot.ids = ids + decoder.ids[:-1]
            held = cache.get_seq_length()
            if held != len(slot.ids):  # pragma: no cover - a transformers change would land here; do not trust the slot
                self._slots.remove(slot)
        generation = Generation(
            text=decoder.text(self.tokenizer),
            token_ids=tuple(decoder.ids),
            stop_reason=decoder.stop_reason or "max_new_tokens",
            prompt_tokens=len(ids),
            prefill_tokens=len(ids) - reused,
            reused_tokens=reused,
            new_tokens=len(decoder.ids),
            dropped_turns=dropped,
            prefill_seconds=prefill_seconds,
            seconds=time.perf_counter() - started,
        )
        self.stats.add(generation)
        return generation

    def _prefill_row(self, key: Any, request: GenerationRequest) -> "_Row | Exception":
        """A request's prompt through the model on its own (with cache reuse) and its first token."""
        from transformers import DynamicCache

        torch = self._torch
        started = time.perf_counter()
        try:
            decoder = self._decoder(request)
            ids, dropped_turns = self.prompt_ids(request)
            if not ids:
                raise ValueError(f"record {request.record_id}: empty prompt")
        except (TooLong, ValueError) as e:
            return e
        if self.reuse_cache:
            slot, reused = self._take_slot(ids)
            cache = slot.cache
        else:
            slot, reused, cache = None, 0, DynamicCache(config=self.model.config)
        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
        try:
            with torch.inference_mode():
                suffix = torch.tensor([ids[reused:]], dtype=torch.long, device=self.model.device)
                out = self.model(input_ids=suffix, past_key_values=cache, use_cache=True, logits_to_keep=1)
                token = self._next_token(out.logits[0, -1], request, generator)
        except BaseException:
            if slot is not None:
                self._slots.remove(slot)
            raise
        if slot is not None:
            slot.ids = list(ids)  # the slot keeps the prompt; the generated tokens stay in the batch's cache
        # the layers' tensors are replaced, never written in place, when a later prompt crops this slot
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        row = _Row(
            key,
            request,
            ids,
            dropped_turns,
            reused,
            decoder,
            generator,
            token,
            kv,
            started=started,
            prefill_seconds=time.perf_counter() - started,
        )
        decoder.push(token, self.tokenizer)
        return row

    def _decode_together(self, take, finish, dropped, max_rows: int) -> None:
        torch = self._torch
        pad = torch.nn.functional.pad
        self._use_adapter()
        if not self.plain_cache:
            # a cache that cannot be padded (sliding windows): one at a time, each exactly as `generate`
            while batch := take(1):
                for key, request in batch:
                    if dropped(key):
                        finish(key, None)
                        continue
                    try:
                        finish(key, self._generate(request))
                    except (TooLong, ValueError) as e:
                        finish(key, e)
            return
        from transformers import DynamicCache

        device = self.model.device
        live: list[_Row] = []
        cache = mask = positions = None
        with torch.inference_mode():
            while True:
                # new requests join between steps; the dropped leave
                for key, request in take(max_rows - len(live)) if len(live) < max_rows else ():
                    row = None if dropped(key) else self._prefill_row(key, request)
                    if not isinstance(row, _Row):
                        finish(key, row)
                        continue
                    if row.decoder.stop_reason is not None:  # done at its first token
                        finish(key, self._row_generation(row))
                        continue
                    n = len(row.ids)
                    if not live:
                        cache = DynamicCache(config=self.model.config)
                        for layer, (k, v) in zip(cache.layers, row.kv):
                            layer.update(k, v)
                        mask = torch.ones((1, n), dtype=torch.long, device=device)
                        positions = torch.tensor([n], device=device)
                    else:
                        held = mask.shape[1]
                        grow = max(n - held, 0)
                        for layer, (k, v) in zip(cache.layers, row.kv):
                            keys, values = layer.keys, layer.values
                            if grow:
                                keys, values = pad(keys, (0, 0, grow, 0)), pad(values, (0, 0, grow, 0))
                            left = held + grow - n
                            layer.keys = torch.cat([keys, pad(k, (0, 0, left, 0))])
                            layer.values = torch.cat([values, pad(v, (0, 0, left, 0))])
                        if grow:
                            mask = pad(mask, (grow, 0))
                        row_mask = torch.tensor([[0] * (held + grow - n) + [1] * n], dtype=mask.dtype, device=device)
                        mask = torch.cat([mask, row_mask])
                        positions = torch.cat([positions, torch.tensor([n], device=device)])
                    row.kv = []
                    live.append(row)
                keep = [b for b, r in enumerate(live) if not dropped(r.key)]
                for b in sorted(set(range(len(live))) - set(keep)):
                    finish(live[b].key, None)
                if len(keep) < len(live):
                    live, mask, positions = self._select_rows(cache, live, mask, positions, keep)
                if not live:
                    if take_more := take(max_rows):  # arrived while the last rows finished: start again with them
                        pending = list(take_more)
                        take = _prepend(pending, take)
                        continue
                    return
                mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=device)], dim=-1)
                out = self.model(
                    input_ids=torch.tensor([[r.token] for r in live], dtype=torch.long, device=device),
                    attention_mask=mask,
                    position_ids=positions[:, None],
                    past_key_values=cache,
                    use_cache=True,
                )
                positions = positions + 1
                keep = []
                for b, r in enumerate(live):
                    r.token = self._next_token(out.logits[b, -1], r.request, r.generator)
                    if r.decoder.push(r.token, self.tokenizer):
                        finish(r.key, self._row_generation(r))
                    else:
                        keep.append(b)
                if len(keep) < len(live):
                    live, mask, positions = self._select_rows(cache, live, mask, positions, keep)

    def _select_rows(self, cache, live: list["_Row"], mask, positions, keep: list[int]):
        """Keep only rows `keep` of the batch (the others stopped or were dropped), and drop the padding columns no
        remaining row needs."""
        if not keep:
            return [], mask[:0], positions[:0]
        index = self._torch.tensor(keep, device=mask.device)
        cache.batch_select_indices(index)
        mask = mask[index]
        unused = int(mask.argmax(dim=1).min())  # leading columns that are padding in every remaining row
        if unused:
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
            mask = mask[:, unused:]
        return [live[b] for b in keep], mask, positions[index]

    def _row_generation(self, row: "_Row") -> Generation:
        g = Generation(
            text=row.decoder.text(self.tokenizer),
            token_ids=tuple(row.decoder.ids),
            stop_reason=row.decoder.stop_reason or "max_new_tokens",
            prompt_tokens=len(row.ids),
            prefill_tokens=len(row.ids) - row.reused,
            reused_tokens=row.reused,
            new_tokens=len(row.decoder.ids),
            dropped_turns=row.dropped_turns,
            prefill_seconds=row.prefill_seconds,
            seconds=time.perf_counter() - row.started,
        )
        self.stats.add(g)
        return g

    def _generate_padded(
        self, requests: Sequence[GenerationRequest], fitted: Sequence[tuple[list[int], int]]
    ) -> list[Generation]:
        from transformers import DynamicCache

        torch = self._torch
        started = time.perf_counter()
        self._use_adapter()
        decoders = [self._decoder(r) for r in requests]
        longest = max(len(ids) for ids, _ in fitted)
        device = self.model.device
        rows = [[self.pad_id] * (longest - len(ids)) + ids for ids, _ in fitted]
        mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids, _ in fitted], device=device)
        # positions count real tokens only, so a left-padded prompt sees the positions it would see alone
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        done = [False] * len(requests)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor(rows, dtype=torch.long, device=device),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            prefill_seconds = time.perf_counter() - started
            last = positions[:, -1:]
            while True:
                tokens = torch.argmax(out.logits[:, -1], dim=-1).tolist()
                for i, tok in enumerate(tokens):
                    if not done[i]:
                        done[i] = decoders[i].push(int(tok), self.tokenizer)
                if all(done):
                    break
                fed = [self.pad_id if d else int(t) for d, t in zip(done, tokens)]
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=-1)
                last = last + 1
                out = self.model(
                    input_ids=torch.tensor(fed, dtype=torch.long, device=device)[:, None],
                    attention_mask=mask,
                    position_ids=last,
                    past_key_values=cache,
                    use_cache=True,
                )
        seconds = time.perf_counter() - started
        results = []
        for (ids, dropped), d in zip(fitted, decoders):
            g = Generation(
                text=d.text(self.tokenizer),
                token_ids=tuple(d.ids),
                stop_reason=d.stop_reason or "max_new_tokens",
                prompt_tokens=len(ids),
                prefill_tokens=len(ids),
                reused_tokens=0,
                new_tokens=len(d.ids),
                dropped_turns=dropped,
                prefill_seconds=prefill_seconds,
                seconds=seconds,
            )
            self.stats.add(g)
            results.append(g)
        return results


def load_backends(
    dirs: Mapping[str, str | Path],
    *,
    base_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str = "auto",
    max_prompt_tokens: int | None = None,
    max_new_tokens: Mapping[str, int] | None = None,
    **backend_options,
) -> dict[str, TransformersBackend]:
    """{role: TransformersBackend} for {role: checkpoint or LoRA adapter directory}, loaded by umi.inference's rule
    (the one loader of evaluation, chat and serving).

    Roles over the same weights and adapter share one backend (one model in every role also shares its KV caches
    between them); each adapter role gets its own backend over the shared base, since its keys differ.
    max_prompt_tokens: the token budget prompts are fitted to (history dropped from the left, as training does). A
    backend's context is that plus the largest `max_new_tokens` of the roles it plays, so every role's prompt gets at
    least max_prompt_tokens. None: the model's own maximum context. backend_options go to TransformersBackend."""
    from umi.inference import load_role_models

    loaded = load_role_models(dirs, base_dir=base_dir, device=device, dtype=dtype)
    caps = dict(max_new_tokens or {})
    fixed_context = backend_options.pop("context_length", None)
    groups: dict[tuple[int, str | None], list[str]] = {}
    for role, item in loaded.items():
        groups.setdefault((id(item.model), item.adapter), []).append(role)
    out: dict[str, TransformersBackend] = {}
    for roles in groups.values():
        item = loaded[roles[0]]
        context = fixed_context
        if max_prompt_tokens is not None:
            context = max_prompt_tokens + max((int(caps.get(r, 0)) for r in roles), default=0)
        backend = TransformersBackend(
            item.model, item.tokenizer, context_length=context, adapter=item.adapter, **backend_options
        )
        for role in roles:
            out[role] = backend
    return out
