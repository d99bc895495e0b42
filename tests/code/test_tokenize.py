"""Completion-only encoding: the label mask token by token, left truncation of history, the target never cut."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umi.inference.tokens import TooLong, encode_prompt, fit_prompt, split_turns
from umi.prompts import TURN_END
from umi.schema import RecordError
from umi.train.tokenize import IGNORE_INDEX, CompletionCollator, encode_example

WORDS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "Head:",
    "user:",
    "assistant:",
    "hi",
    "there",
    "go",
    "now",
    "TAIL",
    "T1",
    "T2",
    "</s>",
]


def word_tokenizer(bos: bool = False):
    """One token per whitespace-separated word, ids known by hand; optionally a BOS in front like Llama-2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    # words split on whitespace, and `</s>` always its own word (turns follow it without a space)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split("</s>", behavior="isolated")]
    )
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


ID = {w: i for i, w in enumerate(WORDS)}


def _example(turns: list[str]) -> tuple[str, list[int]]:
    head = "Head: "
    history = "".join(turns)
    return f"{head}{history} TAIL ", [len(head), len(head) + len(history)]


def test_label_mask_token_by_token():
    tok = word_tokenizer()
    prompt, span = _example([f"user: hi {TURN_END}"])
    enc = encode_example(tok, prompt, "T1 T2", span, max_length=64, record_id="r1")
    expected_ids = [ID["Head:"], ID["user:"], ID["hi"], ID["</s>"], ID["TAIL"], ID["T1"], ID["T2"], ID["<eos>"]]
    assert enc.input_ids == expected_ids
    assert enc.labels == [IGNORE_INDEX] * 5 + [ID["T1"], ID["T2"], ID["<eos>"]]
    assert enc.target_tokens == 3
    assert enc.dropped_turns == 0


def test_label_mask_with_bos_prefix():
    tok = word_tokenizer(bos=True)
    prompt, span = _example([f"user: hi {TURN_END}"])
    enc = encode_example(tok, prompt, "T1", span, max_length=64)
    assert enc.input_ids == [
        ID["<bos>"],
        ID["Head:"],
        ID["user:"],
        ID["hi"],
        ID["</s>"],
        ID["TAIL"],
        ID["T1"],
        ID["<eos>"],
    ]
    assert enc.labels == [IGNORE_INDEX] * 6 + [ID["T1"], ID["<eos>"]]
    # what generation is fed for the same prompt is exactly the masked part
    assert encode_prompt(tok, prompt) == enc.input_ids[:6]


def test_history_dropped_whole_turns_from_the_left_target_kept():
    tok = word_tokenizer()
    turns = [f"user: hi there {TURN_END}", f"assistant: go {TURN_END}", f"user: now {TURN_END}"]
    prompt, span = _example(turns)
    full = encode_example(tok, prompt, "T1 T2", span, max_length=64)
    assert len(full.input_ids) == 1 + 4 + 3 + 3 + 1 + 3  # head, turns, tail, target + eos
    # 11 tokens: dropping the first turn (4 tokens) is enough, and exactly fits
    enc = encode_example(tok, prompt, "T1 T2", span, max_length=11)
    assert enc.dropped_turns == 1 and len(enc.input_ids) == 11
    # 10 tokens: the first two turns (4 + 3 tokens) must go, the last turn stays whole
    enc = encode_example(tok, prompt, "T1 T2", span, max_length=10)
    assert enc.dropped_turns == 2
    assert enc.input_ids == [
        ID["Head:"],
        ID["user:"],
        ID["now"],
        ID["</s>"],
        ID["TAIL"],
        ID["T1"],
        ID["T2"],
        ID["<eos>"],
    ]
    assert enc.labels == [IGNORE_INDEX] * 5 + [ID["T1"], ID["T2"], ID["<eos>"]]
    # below 8 tokens the last turn has to go too
    enc = encode_example(tok, prompt, "T1 T2", span, max_length=7)
    assert enc.dropped_turns == 3
    assert enc.input_ids == [ID["Head:"], ID["TAIL"], ID["T1"], ID["T2"], ID["<eos>"]]


def test_too_long_without_history_is_reported_not_cut():
    tok = word_tokenizer()
    prompt, span = _example([f"user: hi {TURN_END}"])
    with pytest.raises(TooLong, match="record r9"):
        encode_example(tok, prompt, "T1 T2", span, max_length=4, record_id="r9")  # Head TAIL T1 T2 eos = 5
    with pytest.raises(TooLong):  # the target alone is over the budget: never cut
        encode_example(tok, prompt, "T1 T2 T1 T2", span, max_length=4, record_id="r9")


def test_malformed_records_name_the_id():
    tok = word_tokenizer()
    prompt, span = _example([f"user: hi {TURN_END}"])
    with pytest.raises(RecordError, match="r2"):
        encode_example(tok, prompt, "T1", [5, 999], max_length=64, record_id="r2")
    with pytest.raises(RecordError, match="r3"):
        encode_example(tok, prompt, "", span, max_length=64, record_id="r3")
    with pytest.raises(RecordError, match="r4"):  # span ending mid-turn
        fit_prompt(tok, prompt, [span[0], span[1] - 2], budget=2, record_id="r4")


def test_split_turns_keeps_turn_ends():
    assert split_turns(f"a{TURN_END}b{TURN_END}") == [f"a{TURN_END}", f"b{TURN_END}"]
    assert split_turns("") == []


def test_collator_pads_to_longest_in_batch_only():
    collate = CompletionCollator(pad_token_id=0)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert CompletionCollator(0, pad_to_multiple_of=8)([{"input_ids": [1], "labels": [1]}])["input_ids"].shape[1] == 8


# --- the same contract on a real byte-level BPE tokenizer, where token boundaries are not whitespace


@pytest.fixture(scope="module")
def bpe():
    from tests.support.tiny import make_tiny_tokenizer

    return make_tiny_tokenizer()


@settings(max_examples=40, deadline=None)
@given(
    turns=st.lists(st.text(alphabet='abc xyz:{}"0123', min_size=0, max_size=30), min_size=0, max_size=6),
    target=st.text(alphabet="abcxyz: {}", min_size=1, max_size=20),
    slack=st.integers(min_value=0, max_value=200),
)
def test_fit_is_minimal_and_exact_on_bpe(bpe, turns, target, slack):
    roles = ["user: ", "assistant: ", "caller: ", "observation: "]
    turn_texts = [f"{roles[i % 4]}{t}{TURN_END}" for i, t in enumerate(turns)]
    prompt, span = "You have assess to the following apis:\n" + "".join(turn_texts) + "\nassistant: ", None
    start = len("You have assess to the following apis:\n")
    span = [start, start + sum(map(len, turn_texts))]
    no_history = encode_prompt(bpe, prompt[:start] + prompt[span[1] :])
    target_len = len(bpe(target, add_special_tokens=False)["input_ids"]) + 1
    max_length = len(no_history) + target_len + slack
    enc = encode_example(bpe, prompt, target, span, max_length)
    assert len(enc.input_ids) <= max_length
    kept = prompt[:start] + "".join(turn_texts[enc.dropped_turns :]) + prompt[span[1] :]
    prompt_ids = encode_prompt(bpe, kept)
    assert enc.input_ids[: len(prompt_ids)] == prompt_ids  # exactly what inference would be fed
    assert bpe.decode(enc.input_ids[len(prompt_ids) : -1]) == target  # the target whole
    if enc.dropped_turns:  # minimal: keeping one more turn would not fit
        one_more = prompt[:start] + "".join(turn_texts[enc.dropped_turns - 1 :]) + prompt[span[1] :]
        assert len(encode_prompt(bpe, one_more)) + target_len > max_length
