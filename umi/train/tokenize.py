"""Completion-only encoding of role examples: prompt + target + EOS, loss on target + EOS only.

The one place that turns a role-dataset record into token ids, and the one place that fits a prompt into a token
budget. Inference (umi.agent) should build its model inputs with `encode_prompt` / `fit_prompt` so that training and
generation see exactly the same token sequence for the same prompt.

Token layout of one training example:

    [special prefix, e.g. BOS] tok(prompt) tok(target) EOS
    labels: -100 ............. -100       target ids  EOS

The prompt and the target are tokenised separately (not as one string) because at inference the model receives
tok(prompt) alone and continues from there; tokenising the concatenation could merge the prompt's trailing space with
the target's first word into a token the model never sees at inference.

Budget: when prompt + target + EOS is longer than `max_length`, whole history turns (each ending in `</s>`) are dropped
from the LEFT of the history span until it fits. The target is never cut. If even the prompt without any history does
not fit, the example is reported as too long (by id) and left out -- cutting tool docs or the instructions instead
would train the model on prompts it never sees at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from umi.prompts import TURN_END
from umi.schema import RecordError

IGNORE_INDEX = -100  # the label value torch's cross-entropy (and transformers' loss) skips


@dataclass(frozen=True)
class Encoded:
    """One encoded example. `dropped_turns` counts history turns removed from the left to fit the budget."""

    input_ids: list[int]
    labels: list[int]
    dropped_turns: int

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


class TooLong(Exception):
    """The example does not fit the budget even with the whole history dropped."""

    def __init__(self, record_id: str, needed: int, budget: int):
        self.record_id = record_id
        self.needed = needed
        self.budget = budget
        super().__init__(f"record {record_id}: needs {needed} tokens without any history, budget is {budget}")


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text (BOS for Llama-2, nothing for SmolLM2); never a trailing EOS."""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return [i for i in ids if i != tokenizer.eos_token_id]


def _text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The model input for a prompt, exactly as in training (for generation)."""
    return special_prefix(tokenizer) + _text_ids(tokenizer, prompt)


def split_turns(history: str, record_id: str = "?") -> list[str]:
    """The history as whole turns, each ending in `</s>`. Text after the last `</s>` is not a whole turn: an error."""
    if not history:
        return []
    if not history.endswith(TURN_END):
        raise RecordError(record_id, f"history span does not end with {TURN_END!r}: {history[-40:]!r}")
    return [part + TURN_END for part in history.split(TURN_END)[:-1]]


def _check_span(prompt: str, history_span: Sequence[int], record_id: str) -> tuple[int, int]:
    if len(history_span) != 2:
        raise RecordError(record_id, f"history_span must be [start, end], got {list(history_span)!r}")
    start, end = int(history_span[0]), int(history_span[1])
    if not 0 <= start <= end <= len(prompt):
        raise RecordError(record_id, f"history_span {[start, end]} outside the prompt (length {len(prompt)})")
    return start, end


def fit_prompt(
    tokenizer, prompt: str, history_span: Sequence[int], budget: int, record_id: str = "?"
) -> tuple[list[int], int]:
    """Token ids of `prompt` with the fewest whole history turns dropped from the left so that it fits `budget`.

    Returns (ids, dropped_turns). Raises TooLong when even the empty history does not fit.
    The first guess uses the offsets of one full tokenisation; the result is always re-tokenised as a whole string,
    so the ids are exactly what `encode_prompt` gives for the shortened prompt.
    """
    start, end = _check_span(prompt, history_span, record_id)
    prefix = special_prefix(tokenizer)
    full = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids = prefix + full["input_ids"]
    if len(ids) <= budget:
        return ids, 0

    turns = split_turns(prompt[start:end], record_id)
    # Tokens per turn from the offsets of the full tokenisation: a token belongs to the turn its first char is in.
    bounds = [start]
    for turn in turns:
        bounds.append(bounds[-1] + len(turn))
    per_turn = [0] * len(turns)
    turn_index = 0
    for tok_start, _tok_end in full["offset_mapping"]:
        if tok_start < start or tok_start >= end:
            continue
        while tok_start >= bounds[turn_index + 1]:
            turn_index += 1
        per_turn[turn_index] += 1

    excess = len(ids) - budget
    dropped, removed = 0, 0
    while dropped < len(turns) and removed < excess:
        removed += per_turn[dropped]
        dropped += 1
    # Token boundaries at a cut can differ by a token or two from the estimate: verify, drop one more if needed.
    while True:
        kept = prompt[:start] + prompt[bounds[dropped] : end] + prompt[end:]
        ids = prefix + _text_ids(tokenizer, kept)
        if len(ids) <= budget:
            return ids, dropped
        if dropped == len(turns):
            raise TooLong(record_id, len(ids), budget)
        dropped += 1


def encode_example(
    tokenizer,
    prompt: str,
    target: str,
    history_span: Sequence[int],
    max_length: int,
    record_id: str = "?",
) -> Encoded:
    """prompt + target + EOS within `max_length` tokens, labels -100 everywhere but target + EOS.

    Raises TooLong when the target does not fit next to the history-less prompt, RecordError on a malformed record.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the model could not learn where a role's output ends")
    if not target:
        raise RecordError(record_id, "empty target")
    target_ids = _text_ids(tokenizer, target) + [tokenizer.eos_token_id]
    budget = max_length - len(target_ids)
    if budget <= 0:
        raise TooLong(record_id, len(target_ids), max_length)
    try:
        prompt_ids, dropped = fit_prompt(tokenizer, prompt, history_span, budget, record_id)
    except TooLong as e:
        raise TooLong(record_id, e.needed + len(target_ids), max_length) from None
    return Encoded(
        input_ids=prompt_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids,
        dropped_turns=dropped,
    )


class CompletionCollator:
    """Pads a batch to its own longest example (not to max_length): pad id in inputs, -100 in labels, 0 in the mask.

    Right padding; with causal attention the real tokens never attend to the padding after them.
    `pad_to_multiple_of` (8 on GPUs) keeps tensor shapes friendly to tensor cores at the cost of a few tokens.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        input_ids, labels, attention = [], [], []
        for f in features:
            n = len(f["input_ids"])
            pad = longest - n
            input_ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            attention.append([1] * n + [0] * pad)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
        }
