"""Static batching: independent prompts left-padded into one batch and decoded together until every row stops.

TransformersBackend.generate_batch's decode loop (static evaluation's `padded` batching). No cache reuse and no
sampling: every row is greedy, a row that stopped is fed padding until the longest one is done.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from umi.inference.decoding import decoder_for, generation
from umi.inference.protocol import Generation, GenerationRequest

if TYPE_CHECKING:
    from umi.inference.transformers_backend import TransformersBackend

__all__ = ["decode_padded"]


def decode_padded(
    backend: "TransformersBackend", requests: Sequence[GenerationRequest], fitted: Sequence[tuple[list[int], int]]
) -> list[Generation]:
    """One batch of `requests` whose prompts are fitted already ((ids, dropped turns) each); the backend's lock held."""
    import torch
    from transformers import DynamicCache

    started = time.perf_counter()
    backend.use_adapter()
    model, pad_id, device = backend.model, backend.pad_id, backend.model.device
    decoders = [decoder_for(r, backend.eos_ids) for r in requests]
    longest = max(len(ids) for ids, _ in fitted)
    rows = [[pad_id] * (longest - len(ids)) + ids for ids, _ in fitted]
    mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids, _ in fitted], device=device)
    # positions count real tokens only, so a left-padded prompt sees the positions it would see alone
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    done = [False] * len(requests)
    with torch.inference_mode():
        out = model(
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
                    done[i] = decoders[i].push(int(tok), backend.tokenizer)
            if all(done):
                break
            fed = [pad_id if d else int(t) for d, t in zip(done, tokens)]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=-1)
            last = last + 1
            out = model(
                input_ids=torch.tensor(fed, dtype=torch.long, device=device)[:, None],
                attention_mask=mask,
                position_ids=last,
                past_key_values=cache,
                use_cache=True,
            )
    seconds = time.perf_counter() - started
    results = []
    for (ids, dropped), d in zip(fitted, decoders):
        g = generation(
            d,
            backend.tokenizer,
            prompt_tokens=len(ids),
            reused=0,
            dropped_turns=dropped,
            started=started,
            prefill_seconds=prefill_seconds,
            seconds=seconds,
        )
        backend.stats.add(g)
        results.append(g)
    return results
