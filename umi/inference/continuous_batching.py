"""Continuous batching inside one TransformersBackend: requests join a running batch between decode steps and leave
it the moment they stop.

Each prompt is prefilled on its own, with the KV-cache reuse `generate` does (so a prompt costs what it costs alone
and its first token is the one `generate` gives), then joins the running batch: caches left-padded to one length, an
attention mask over the padding, positions counting real tokens only. A request leaves as soon as it stops (EOS, a
stop string, its own max_new_tokens); temperature and seed are per request. Only full-attention caches pad exactly
(TransformersBackend.plain_cache); the backend runs other models' requests one at a time instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from umi.inference.decoding import Decoder, generation, next_token
from umi.inference.protocol import Finish, Generation, GenerationRequest, Take
from umi.inference.tokens import TooLong

if TYPE_CHECKING:
    from umi.inference.transformers_backend import TransformersBackend

__all__ = ["RunningBatch", "decode_continuously"]


@dataclass
class Row:
    """One request in the running batch."""

    key: Any
    request: GenerationRequest
    ids: list[int]
    dropped_turns: int
    reused: int
    decoder: Decoder
    generator: object
    token: int  # the last token chosen, fed to the model at the next step
    kv: list  # per layer (keys, values) of the prompt, until the row joins the batch's cache
    started: float
    prefill_seconds: float


def start_row(backend: "TransformersBackend", key: Any, request: GenerationRequest) -> Row | Exception:
    """A request's prompt through the model on its own (with cache reuse) and its first token; the exception when it
    cannot run (too long, empty, a bad cap)."""
    started = time.perf_counter()
    try:
        decoder, ids, dropped_turns = backend.fit(request)
    except (TooLong, ValueError) as e:
        return e
    p = backend.prefill(ids, request, started)
    if p.slot is not None:
        p.slot.ids = list(ids)  # the slot keeps the prompt; the generated tokens stay in the batch's cache
    # the layers' tensors are replaced, never written in place, when a later prompt crops this slot
    kv = [(layer.keys, layer.values) for layer in p.cache.layers]
    row = Row(key, request, ids, dropped_turns, p.reused, decoder, p.generator, p.token, kv, started, p.seconds)
    decoder.push(p.token, backend.tokenizer)
    return row


class RunningBatch:
    """The rows decoding together: one cache left-padded to a common length, its attention mask and each row's next
    position."""

    def __init__(self, backend: "TransformersBackend"):
        self.backend = backend
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: Any = None
        self.positions: Any = None

    def join(self, row: Row) -> None:
        """Add a prefilled row: its prompt cache left-padded to the batch's length (or the batch's to its length)."""
        import torch
        from transformers import DynamicCache

        pad = torch.nn.functional.pad
        device = self.backend.model.device
        n = len(row.ids)
        if not self.rows:
            self.cache = DynamicCache(config=self.backend.model.config)
            for layer, (k, v) in zip(self.cache.layers, row.kv):
                layer.update(k, v)
            self.mask = torch.ones((1, n), dtype=torch.long, device=device)
            self.positions = torch.tensor([n], device=device)
        else:
            held = self.mask.shape[1]
            grow = max(n - held, 0)
            for layer, (k, v) in zip(self.cache.layers, row.kv):
                keys, values = layer.keys, layer.values
                if grow:
                    keys, values = pad(keys, (0, 0, grow, 0)), pad(values, (0, 0, grow, 0))
                left = held + grow - n
                layer.keys = torch.cat([keys, pad(k, (0, 0, left, 0))])
                layer.values = torch.cat([values, pad(v, (0, 0, left, 0))])
            if grow:
                self.mask = pad(self.mask, (grow, 0))
            row_mask = torch.tensor([[0] * (held + grow - n) + [1] * n], dtype=self.mask.dtype, device=device)
            self.mask = torch.cat([self.mask, row_mask])
            self.positions = torch.cat([self.positions, torch.tensor([n], device=device)])
        row.kv = []
        self.rows.append(row)

    def keep(self, keep: list[int]) -> None:
        """Keep only rows `keep` (the others stopped or were dropped), and drop the padding columns no remaining row
        needs."""
        import torch

        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.mask, self.positions = [], self.mask[:0], self.positions[:0]
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        mask = self.mask[index]
        unused = int(mask.argmax(dim=1).min())  # leading columns that are padding in every remaining row
        if unused:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
            mask = mask[:, unused:]
        self.rows, self.mask, self.positions = [self.rows[b] for b in keep], mask, self.positions[index]

    def step(self) -> list[Row]:
        """One decode step for every row; the rows that stopped leave the batch and are returned."""
        import torch

        model, device = self.backend.model, self.backend.model.device
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=device)], -1)
        out = model(
            input_ids=torch.tensor([[r.token] for r in self.rows], dtype=torch.long, device=device),
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.positions = self.positions + 1
        stopped, keep = [], []
        for b, r in enumerate(self.rows):
            r.token = next_token(out.logits[b, -1], r.request, r.generator)
            (stopped if r.decoder.push(r.token, self.backend.tokenizer) else keep).append(b)
        finished = [self.rows[b] for b in stopped]
        self.keep(keep)
        return finished


def decode_continuously(
    backend: "TransformersBackend", take: Take, finish: Finish, dropped: Callable[[Any], bool], max_rows: int
) -> None:
    """TransformersBackend.decode_together's loop (the backend's lock held, its adapter switched in)."""
    import torch

    batch = RunningBatch(backend)
    with torch.inference_mode():
        while True:
            # new requests join between steps; the dropped leave
            for key, request in take(max_rows - len(batch.rows)) if len(batch.rows) < max_rows else ():
                row = None if dropped(key) else start_row(backend, key, request)
                if not isinstance(row, Row):
                    finish(key, row)
                elif row.decoder.stop_reason is not None:  # done at its first token
                    finish(key, row_generation(backend, row))
                else:
                    batch.join(row)
            keep = [b for b, r in enumerate(batch.rows) if not dropped(r.key)]
            for b in sorted(set(range(len(batch.rows))) - set(keep)):
                finish(batch.rows[b].key, None)
            batch.keep(keep)
            if not batch.rows:
                if arrived := take(max_rows):  # arrived while the last rows finished: start again with them
                    take = _prepend(list(arrived), take)
                    continue
                return
            for row in batch.step():
                finish(row.key, row_generation(backend, row))


def row_generation(backend: "TransformersBackend", row: Row) -> Generation:
    """A stopped row's Generation, counted in the backend's stats."""
    g = generation(
        row.decoder,
        backend.tokenizer,
        prompt_tokens=len(row.ids),
        reused=row.reused,
        dropped_turns=row.dropped_turns,
        started=row.started,
        prefill_seconds=row.prefill_seconds,
    )
    backend.stats.add(g)
    return g


def _prepend(items: list, take: Take) -> Take:
    """`take` that first gives `items` (already taken from the source)."""

    def again(room: int) -> Sequence:
        first = items[:room]
        del items[:room]
        return [*first, *(take(room - len(first)) if room > len(first) else ())]

    return again
