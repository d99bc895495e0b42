"""Completion-only encoding of role examples: prompt + target + EOS, loss on target + EOS only.

The one place that turns a role-dataset record into token ids. The prompt half (its ids, fitting it into a budget)
is inference's, umi.inference.tokens: training and generation see exactly the same token sequence for one prompt.

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

from umi.inference.tokens import TooLong, fit_prompt, text_ids
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
    target_ids = text_ids(tokenizer, target) + [tokenizer.eos_token_id]
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
