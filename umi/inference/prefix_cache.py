"""KV-cache reuse across prompts that share a token prefix.

A role's prompt grows step by step: tool docs, then a history that only gains turns at its end, then a short fixed
tail. Recomputing it every step spends most of the time on tokens already seen. `PrefixCache` keeps a few slots, each a
transformers `DynamicCache` plus the token ids it holds (prompt + generated tokens fed back). A prompt takes the slot
sharing the longest token prefix with it, that slot's cache cropped to the shared prefix, and only the new suffix runs
through the model. Token ids are compared (not text), so a prefix whose last token tokenises differently in the longer
prompt is simply not shared; the result is the same computation as a full prefill, up to floating-point summation
order. Slots are chosen automatically, so one model serving all three roles benefits too (the caller's prompt starts
as the planner's does).

Only caches of plain full-attention layers crop to any prefix exactly (`prefix_croppable`): a sliding-window layer past
its window has dropped the tokens a crop would need, so such models recompute every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PrefixCache", "Slot", "prefix_croppable", "shared_prefix"]


def prefix_croppable(model) -> bool:
    """Whether the model's cache is plain full-attention layers, which crop to any prefix exactly."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = DynamicCache(config=model.config).layers
    return all(type(layer) is DynamicLayer for layer in layers)


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    i = 0
    # compare in blocks first: prompts share thousands of tokens, a Python loop over each would dominate short steps
    block = 256
    while i + block <= n and a[i : i + block] == b[i : i + block]:
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    cache: object  # transformers DynamicCache
    ids: list[int]  # the tokens the cache holds, in order
    last_used: int = 0


class PrefixCache:
    """The slots of one model (see the module doc).

    max_slots: caches kept at once (3: planner, caller and summarizer prompts when one model plays all roles).
    min_shared_tokens: a prompt sharing fewer tokens than this with every slot takes a free slot (or the least
    recently used one) rather than overwrite a useful cache."""

    def __init__(self, config, max_slots: int = 3, min_shared_tokens: int = 16):
        if max_slots < 1:
            raise ValueError("max_cache_slots must be >= 1")
        self.config = config  # the model's config: what a fresh DynamicCache is made for
        self.max_slots = max_slots
        self.min_shared_tokens = min_shared_tokens
        self.slots: list[Slot] = []
        self._clock = 0

    def clear(self) -> None:
        self.slots.clear()

    def discard(self, slot: Slot) -> None:
        """Forget a slot whose cache no longer matches its ids (a forward pass failed half way into it)."""
        if slot in self.slots:
            self.slots.remove(slot)

    def take(self, ids: list[int]) -> tuple[Slot, int]:
        """The slot to extend for prompt `ids`, cropped to what it shares with them, and how many tokens it kept.
        The last prompt token is never kept: its logits give the first new token, so it always runs."""
        from transformers import DynamicCache

        self._clock += 1
        best, best_shared = None, -1
        for slot in self.slots:
            shared = shared_prefix(slot.ids, ids)
            if shared > best_shared:
                best, best_shared = slot, shared
        if best is None or (best_shared < self.min_shared_tokens and len(self.slots) < self.max_slots):
            best = Slot(DynamicCache(config=self.config), [])
            self.slots.append(best)
            best_shared = 0
        elif best_shared < self.min_shared_tokens:
            best = min(self.slots, key=lambda s: s.last_used)
            best_shared = shared_prefix(best.ids, ids)
        elif best_shared < len(best.ids) and self.max_slots > 1:
            # the best slot holds more than this prompt shares (another trajectory or entry on the same docs, a
            # prompt whose tail differs): copy the shared prefix into a slot of its own rather than crop a cache
            # its own sequence still needs (a free slot, else the least recently used other one)
            best = self._fork(best, min(best_shared, len(ids) - 1))
        keep = min(best_shared, len(ids) - 1)
        held = best.cache.get_seq_length()
        if keep == 0:
            best.cache = DynamicCache(config=self.config)
        elif keep < held:
            best.cache.crop(keep - held)
        best.ids = ids[:keep]
        best.last_used = self._clock
        return best, keep

    def _fork(self, source: Slot, keep: int) -> Slot:
        """A slot holding the first `keep` tokens of `source` (whose own cache is left as it is)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        if keep > 0:
            for layer, held in zip(cache.layers, source.cache.layers):
                layer.update(held.keys[:, :, :keep], held.values[:, :, :keep])
        fork = Slot(cache, source.ids[:keep])
        if len(self.slots) < self.max_slots:
            self.slots.append(fork)
        else:
            oldest = min((s for s in self.slots if s is not source), key=lambda s: s.last_used)
            self.slots[self.slots.index(oldest)] = fork
        return fork
