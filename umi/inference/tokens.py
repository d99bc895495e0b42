"""The prompt half of tokenisation: a prompt's token ids, and a prompt fitted into a token budget.

Training (umi.train.tokenize) builds its examples from these, so generation feeds the model exactly the ids it was
trained on for the same prompt: `[special prefix, e.g. BOS] tok(prompt)`. The prompt is tokenised on its own (not
with its target) because at inference the model receives tok(prompt) alone and continues from there.

Budget: when a prompt does not fit, whole history turns (each ending in `</s>`) are dropped from the LEFT of the
history span until it fits. If even the prompt without any history does not fit, it is TooLong (by id): cutting the
tool docs or the instructions instead would show the model a prompt it never saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

from umi.inference.protocol import GenerationRequest
from umi.prompts import TURN_END
from umi.schema import RecordError

__all__ = [
    "TooLong",
    "check_span",
    "encode_prompt",
    "fit_prompt",
    "request_ids",
    "special_prefix",
    "split_turns",
    "text_ids",
]


class TooLong(Exception):
    """The prompt (or example) does not fit the budget even with the whole history dropped."""

    def __init__(self, record_id: str, needed: int, budget: int):
        self.record_id = record_id
        self.needed = needed
        self.budget = budget
        super().__init__(f"record {record_id}: needs {needed} tokens without any history, budget is {budget}")


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text (BOS for Llama-2, nothing for SmolLM2); never a trailing EOS."""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return [i for i in ids if i != tokenizer.eos_token_id]


def text_ids(tokenizer, text: str) -> list[int]:
    """`text`'s ids without any special token."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The model input for a prompt, exactly as in training."""
    return special_prefix(tokenizer) + text_ids(tokenizer, prompt)


def split_turns(history: str, record_id: str = "?") -> list[str]:
    """The history as whole turns, each ending in `</s>`. Text after the last `</s>` is not a whole turn: an error."""
    if not history:
        return []
    if not history.endswith(TURN_END):
        raise RecordError(record_id, f"history span does not end with {TURN_END!r}: {history[-40:]!r}")
    return [part + TURN_END for part in history.split(TURN_END)[:-1]]


def check_span(prompt: str, history_span: Sequence[int], record_id: str) -> tuple[int, int]:
    """The history span as (start, end) inside `prompt`; RecordError when it is not one."""
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
    start, end = check_span(prompt, history_span, record_id)
    prefix = special_prefix(tokenizer)
    full = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids = prefix + full["input_ids"]
    if len(ids) <= budget:
        return ids, 0

    turns = split_turns(prompt[start:end], record_id)
    bounds = [start]
    for turn in turns:
        bounds.append(bounds[-1] + len(turn))
    per_turn = _tokens_per_turn(full["offset_mapping"], bounds, start, end)

    excess = len(ids) - budget
    dropped, removed = 0, 0
    while dropped < len(turns) and removed < excess:
        removed += per_turn[dropped]
        dropped += 1
    # Token boundaries at a cut can differ by a token or two from the estimate: verify, drop one more if needed.
    while True:
        kept = prompt[:start] + prompt[bounds[dropped] : end] + prompt[end:]
        ids = prefix + text_ids(tokenizer, kept)
        if len(ids) <= budget:
            return ids, dropped
        if dropped == len(turns):
            raise TooLong(record_id, len(ids), budget)
        dropped += 1


def _tokens_per_turn(offsets, bounds: list[int], start: int, end: int) -> list[int]:
    """Tokens per history turn from the offsets of the full tokenisation: a token belongs to the turn its first
    character is in."""
    per_turn = [0] * (len(bounds) - 1)
    turn_index = 0
    for tok_start, _tok_end in offsets:
        if tok_start < start or tok_start >= end:
            continue
        while tok_start >= bounds[turn_index + 1]:
            turn_index += 1
        per_turn[turn_index] += 1
    return per_turn


def request_ids(tokenizer, request: GenerationRequest, context_length: int) -> tuple[list[int], int]:
    """A request's prompt ids as training tokenises them, fitted to a backend's budget (its context less the request's
    max_new_tokens): (ids, dropped history turns). Without a history span a prompt that does not fit is TooLong."""
    budget = context_length - request.max_new_tokens
    if budget <= 0:
        raise ValueError(f"max_new_tokens {request.max_new_tokens} leaves no room in a {context_length} token context")
    if request.history_span is not None:
        return fit_prompt(tokenizer, request.prompt, request.history_span, budget, request.record_id)
    ids = encode_prompt(tokenizer, request.prompt)
    if len(ids) > budget:
        raise TooLong(request.record_id, len(ids), budget)
    return ids, 0
