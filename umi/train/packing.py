"""Shared-prefix (tree) packing: the examples of a micro-batch in one sequence, each shared token encoded once.

The examples of one role from one trajectory have the same prompt head (instructions + tool docs) and a growing
history; only the tail (the instruction after the history, and for the caller the thought) and the target differ.
A micro-batch of such examples becomes one sequence laid out as a tree of token segments:

    [prefix+head] [turn 0] [turn 1] [tail_a target_a EOS] [turn 2] [tail_b target_b EOS] ...

where every token attends only to the segments on its own root path (a block attention mask) and carries the
position it has in its own per-step example (explicit position ids). So each target token sees exactly the token
ids, at exactly the positions, of its per-step example (`umi.train.tokenize.encode_example`, history already cut
from the left to fit `max_length` there), and the loss and its gradients are those of the per-step examples up to
float rounding; only the shared prefixes are computed once instead of once per example.

Exactness of the token ids: a per-step prompt is tokenised as one string, the packed one segment by segment
(head, each history turn, tail). Where a segment boundary would change the tokenisation (a BPE merge across it),
the example falls back to its own per-step token sequence (one unshared segment) and is counted in `fallbacks`.

Memory: a packed sequence holds at most `pack_length` tokens. When the next example would overflow it, a new
sequence starts again from the docs (each example's own, per-step history cut included); no target is ever cut,
and `pack_length >= max_length` guarantees any single example fits.

Attention cost: the dense [L, L] tree mask is exact with any SDPA backend, but attention over it costs O(L^2) per
head and layer however little of it is visible: at L ~ 4k that is as much attention work as the per-step examples
together, and more than a layer's matmuls, so it ate the shared-prefix saving at full depth (30 layers). Tree
attention (`tree_attention_forward`, registered for transformers as TREE_ATTENTION and switched on per model by
`use_tree_attention`) computes only the visible blocks: each chain of segments (a segment followed by its own
child: e.g. a new history turn and the branch after it) is one SDPA call over its ancestors' keys and its own
(causal), so the work is what the per-step examples need minus what they share. The collator passes it a
`TreeLayout` beside the dense mask; a model without tree attention ignores the layout and uses the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from umi.inference.tokens import check_span, special_prefix, split_turns, text_ids
from umi.train.tokenize import IGNORE_INDEX, CompletionCollator, Encoded, encode_example


@dataclass(frozen=True)
class TreeExample:
    """One example as a root path of shareable segments and its own branch (tail + target + EOS)."""

    path: tuple[tuple[int, ...], ...]  # prefix+head, then the kept history turns; each tuple one segment's ids
    branch: tuple[int, ...]  # tail ids + target ids + EOS
    target_tokens: int  # the last `target_tokens` ids of `branch` are supervised (target + EOS)
    encoded: Encoded  # the per-step example it stands for
    fallback: bool  # True when the segments did not reproduce the per-step ids: `path` is then the whole prompt

    @property
    def length(self) -> int:
        return len(self.encoded.input_ids)


def tree_example(
    tokenizer,
    prompt: str,
    target: str,
    history_span: Sequence[int],
    max_length: int,
    record_id: str = "?",
    cache: dict[str, tuple[int, ...]] | None = None,
) -> TreeExample:
    """The per-step example (encode_example: same budget, same history cut) split into tree segments.

    `cache` maps text to its token ids; pass one dict per trajectory so its shared head and turns are tokenised
    once. Raises what encode_example raises (TooLong, RecordError).
    """
    enc = encode_example(tokenizer, prompt, target, history_span, max_length, record_id)
    n_prompt = len(enc.input_ids) - enc.target_tokens
    prompt_ids, target_ids = enc.input_ids[:n_prompt], tuple(enc.input_ids[n_prompt:])
    start, end = check_span(prompt, history_span, record_id)
    turns = split_turns(prompt[start:end], record_id)[enc.dropped_turns :]
    cache = {} if cache is None else cache

    def ids(text: str) -> tuple[int, ...]:
        if text not in cache:
            cache[text] = tuple(text_ids(tokenizer, text))
        return cache[text]

    head = tuple(special_prefix(tokenizer)) + ids(prompt[:start])
    path = (head, *(ids(t) for t in turns))
    tail = ids(prompt[end:])
    if not tail or [i for seg in path for i in seg] + list(tail) != prompt_ids:
        # A merge across a boundary (or no tail token to predict the target's first token from): not shareable.
        return TreeExample((tuple(prompt_ids[:-1]),), (prompt_ids[-1], *target_ids), enc.target_tokens, enc, True)
    return TreeExample(path, tail + target_ids, enc.target_tokens, enc, False)


@dataclass
class PackedSequence:
    """One packed sequence. Token i belongs to segment `segment_ids[i]`; `segment_parents[s]` is s's parent (-1: a
    root). Token i may attend token j iff j <= i and segment_ids[j] is segment_ids[i] or one of its ancestors."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    segment_ids: list[int]
    segment_parents: list[int]
    examples: int = 0
    fallbacks: int = 0
    target_tokens: int = 0

    def to_row(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "position_ids": self.position_ids,
            "segment_ids": self.segment_ids,
            "segment_parents": self.segment_parents,
        }


class _Builder:
    """Grows one packed sequence: a trie of segments (keyed by parent and ids) plus one branch per example."""

    def __init__(self):
        self.seq = PackedSequence([], [], [], [], [])
        self.nodes: dict[tuple[int, tuple[int, ...]], int] = {}  # (parent segment, ids) -> segment
        self.end_position: list[int] = []  # per segment: the position after its last token

    def cost(self, ex: TreeExample) -> int:
        """Tokens adding `ex` would append (its unshared segments and its branch)."""
        parent = -1
        for i, seg in enumerate(ex.path):
            node = self.nodes.get((parent, seg))
            if node is None:
                return sum(len(s) for s in ex.path[i:]) + len(ex.branch)
            parent = node
        return len(ex.branch)

    def _append(self, ids: Sequence[int], labels: Sequence[int], parent: int) -> int:
        s = len(self.seq.segment_parents)
        self.seq.segment_parents.append(parent)
        start = self.end_position[parent] if parent >= 0 else 0
        self.seq.input_ids.extend(ids)
        self.seq.labels.extend(labels)
        self.seq.position_ids.extend(range(start, start + len(ids)))
        self.seq.segment_ids.extend([s] * len(ids))
        self.end_position.append(start + len(ids))
        return s

    def add(self, ex: TreeExample) -> None:
        parent = -1
        for seg in ex.path:
            node = self.nodes.get((parent, seg))
            if node is None:
                node = self._append(seg, [IGNORE_INDEX] * len(seg), parent)
                self.nodes[(parent, seg)] = node
            parent = node
        n_prompt = len(ex.branch) - ex.target_tokens
        self._append(ex.branch, [IGNORE_INDEX] * n_prompt + list(ex.branch[n_prompt:]), parent)
        self.seq.examples += 1
        self.seq.fallbacks += int(ex.fallback)
        self.seq.target_tokens += ex.target_tokens


def pack(examples: Sequence[TreeExample], pack_length: int) -> list[PackedSequence]:
    """The examples, in order, as few packed sequences of at most `pack_length` tokens as greedy filling gives.

    A sequence is closed when the next example would overflow it; that example starts the next one from its root
    (the docs), so no example is ever split and each sequence stays within the budget."""
    out: list[PackedSequence] = []
    builder = _Builder()
    for ex in examples:
        if ex.length > pack_length:
            raise ValueError(f"an example of {ex.length} tokens does not fit pack_length {pack_length}")
        if builder.seq.examples and len(builder.seq.input_ids) + builder.cost(ex) > pack_length:
            out.append(builder.seq)
            builder = _Builder()
        builder.add(ex)
    if builder.seq.examples:
        out.append(builder.seq)
    return out


def packed_row(examples: Sequence[TreeExample], pack_length: int) -> dict:
    """One train row of the packed engine: a micro-batch of examples as its packed sequences (lists per field, what
    PackedCollator takes) and `length`, the tokens the model runs over."""
    seqs = pack(examples, pack_length)
    row = {k: [s.to_row()[k] for s in seqs] for k in seqs[0].to_row()}
    row["length"] = sum(len(s.input_ids) for s in seqs)
    return row


def tree_attention_mask(segment_ids, segment_parents, length: int):
    """The boolean [length, length] mask of one packed sequence (True: may attend), padding rows see only
    themselves (a fully masked row would make attention NaN)."""
    import torch

    n_seg = len(segment_parents)
    ancestor = torch.eye(n_seg + 1, dtype=torch.bool)  # ancestor[s, a]: a is s or an ancestor of s; n_seg: padding
    for s, p in enumerate(segment_parents):  # parents come before their children
        if p >= 0:
            ancestor[s, :n_seg] |= ancestor[p, :n_seg]
    seg = torch.full((length,), n_seg, dtype=torch.long)
    seg[: len(segment_ids)] = torch.as_tensor(segment_ids, dtype=torch.long)
    mask = ancestor[seg[:, None], seg[None, :]] & torch.ones(length, length, dtype=torch.bool).tril()
    pad = torch.arange(length) >= len(segment_ids)
    mask[pad] = False
    mask[pad, pad] = True
    return mask


TREE_ATTENTION = "umi_tree"  # the attention implementation name under which tree attention is registered


@dataclass
class TreeLayout:
    """The block structure of a packed batch, for tree attention: per batch row, its chains in token order as
    (start, end, ancestor ranges). A chain is a maximal run of consecutive segments each the child of the one
    before, so causal attention within it is exactly the tree mask; the ancestor ranges ([start, end) token ranges,
    root first) are seen whole. Tokens after a row's last chain are padding."""

    rows: list[list[tuple[int, int, tuple[tuple[int, int], ...]]]]
    _prepared: dict = field(default_factory=dict, repr=False, compare=False)  # device -> index tensors and masks

    @classmethod
    def from_segments(cls, sequences: Sequence[tuple[Sequence[int], Sequence[int]]]) -> "TreeLayout":
        """From each row's (segment_ids, segment_parents); a segment's tokens are contiguous (PackedSequence)."""
        rows = []
        for segment_ids, parents in sequences:
            bounds: dict[int, list[int]] = {}
            for i, s in enumerate(segment_ids):
                bounds.setdefault(s, [i, i])[1] = i + 1
            chains: list[list[int]] = []  # [start, end, first segment]
            previous = None
            for s in sorted(bounds, key=lambda s: bounds[s][0]):
                start, end = bounds[s]
                if chains and parents[s] == previous and chains[-1][1] == start:
                    chains[-1][1] = end  # s continues the chain of its parent
                else:
                    chains.append([start, end, s])
                previous = s
            row = []
            for start, end, first in chains:
                ancestors, a = [], parents[first]
                while a >= 0:
                    ancestors.append(tuple(bounds[a]))
                    a = parents[a]
                merged: list[tuple[int, int]] = []
                for lo, hi in reversed(ancestors):  # root first; adjacent ranges as one
                    if merged and merged[-1][1] == lo:
                        merged[-1] = (merged[-1][0], hi)
                    else:
                        merged.append((lo, hi))
                row.append((start, end, tuple(merged)))
            rows.append(row)
        return cls(rows)

    def prepared(self, device) -> list[list[tuple]]:
        """Per row, per chain: (start, end, key slice or index tensor, mask or None for plain causal)."""
        import torch

        key = str(device)
        if key not in self._prepared:
            out = []
            for row in self.rows:
                blocks = []
                for start, end, ancestors in row:
                    n = end - start
                    seen = sum(hi - lo for lo, hi in ancestors)
                    if not ancestors:
                        keys, mask = slice(start, end), None
                    else:
                        if len(ancestors) == 1 and ancestors[0][1] == start:
                            keys = slice(ancestors[0][0], end)  # ancestors right before the chain: a view
                        else:
                            keys = torch.cat([torch.arange(lo, hi) for lo, hi in (*ancestors, (start, end))]).to(device)
                        mask = torch.ones(n, seen + n, dtype=torch.bool)
                        mask[:, seen:] = torch.ones(n, n, dtype=torch.bool).tril()
                        mask = mask.to(device)
                    blocks.append((start, end, keys, mask))
                out.append(blocks)
            self._prepared[key] = out
        return self._prepared[key]


def tree_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling=None,
    tree_layout: TreeLayout | None = None,
    **kwargs,
):
    """A transformers attention function: tree attention when the batch brings a `tree_layout`, SDPA otherwise.

    query [batch, heads, L, dim], key/value [batch, kv_heads, L, dim] (positions already applied); returns
    ([batch, L, heads, dim], None) as transformers' SDPA function does. Each chain's queries attend to its
    ancestors' keys and, causally, its own, in one SDPA call; padding gets zeros (its labels are ignored and no
    real token attends to it)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if tree_layout is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    # Grouped-query keys: SDPA's own GQA on CPU (its flash kernel takes a mask); elsewhere repeated, since CUDA's
    # GQA kernels take no mask and would fall back to the math kernel.
    gqa = groups > 1 and query.device.type == "cpu"
    rows = []
    for b, blocks in enumerate(tree_layout.prepared(query.device)):
        outs, covered = [], 0
        for start, end, keys, mask in blocks:
            if isinstance(keys, slice):
                k, v = key[b : b + 1, :, keys], value[b : b + 1, :, keys]
            else:
                k, v = key[b : b + 1].index_select(2, keys), value[b : b + 1].index_select(2, keys)
            if groups > 1 and not gqa:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            outs.append(
                torch.nn.functional.scaled_dot_product_attention(
                    query[b : b + 1, :, start:end],
                    k,
                    v,
                    attn_mask=mask,
                    is_causal=mask is None,
                    dropout_p=dropout,
                    scale=scaling,
                    enable_gqa=gqa,
                )
            )
            covered = end
        if covered < query.shape[2]:
            outs.append(query.new_zeros(1, query.shape[1], query.shape[2] - covered, value.shape[-1]))
        rows.append(torch.cat(outs, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def use_tree_attention(model) -> None:
    """Switch a transformers model to tree attention (SDPA for batches without a TreeLayout: per-step batches and
    evaluation run as before). Registers TREE_ATTENTION with transformers once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(TREE_ATTENTION, tree_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(TREE_ATTENTION, sdpa_mask)  # masks of per-step batches as for SDPA
    model.set_attn_implementation(TREE_ATTENTION)


class PackedCollator:
    """Collates rows of packed micro-batches: every sequence of every row becomes one batch row, padded to the
    longest, with a 4D boolean tree mask ([n, 1, L, L]), explicit position ids and the TreeLayout that tree
    attention uses instead of the mask (see use_tree_attention). Rows without `segment_ids`
    (per-step examples, e.g. the evaluation set) are collated as CompletionCollator does."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.per_step = CompletionCollator(pad_token_id, pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        import torch

        if "segment_ids" not in features[0]:
            return self.per_step(features)
        seqs = [
            {k: f[k][i] for k in ("input_ids", "labels", "position_ids", "segment_ids", "segment_parents")}
            for f in features
            for i in range(len(f["input_ids"]))
        ]
        if all(list(s["segment_parents"]) == list(range(-1, len(s["segment_parents"]) - 1)) for s in seqs):
            # Every sequence is a plain chain (one example, nothing to share): the tree mask is the causal mask
            # and the positions are 0..n-1, so the per-step layout is exact and keeps SDPA's causal kernel.
            batch = self.per_step([{"input_ids": s["input_ids"], "labels": s["labels"]} for s in seqs])
            batch["real_tokens"] = batch["attention_mask"].sum(dim=1)
            return batch
        longest = max(len(s["input_ids"]) for s in seqs)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        input_ids, labels, positions, masks, real = [], [], [], [], []
        for s in seqs:
            n = len(s["input_ids"])
            pad = longest - n
            input_ids.append(list(s["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(s["labels"]) + [IGNORE_INDEX] * pad)
            positions.append(list(s["position_ids"]) + [0] * pad)
            masks.append(tree_attention_mask(s["segment_ids"], s["segment_parents"], longest))
            real.append(n)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "attention_mask": torch.stack(masks)[:, None],
            "tree_layout": TreeLayout.from_segments([(s["segment_ids"], s["segment_parents"]) for s in seqs]),
            "real_tokens": torch.tensor(real, dtype=torch.long),
        }
