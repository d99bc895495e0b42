"""Tiny models built in code (no download) for tests and benchmarks: a byte-level BPE tokenizer and a randomly
initialised Llama saved like an imported backbone. Never a production default."""

from __future__ import annotations

import json
from pathlib import Path

from umi.train.backbone import MANIFEST

__all__ = ["TINY_CORPUS", "lively", "make_tiny_tokenizer", "make_tiny_backbone"]


TINY_CORPUS = (
    "You have assess to the following apis:\n"
    '{"Name": "get_weather", "function": "Get the weather of a city", "input": {"city": "string, the city"}}\n'
    "The conversation history is:\nuser: What is the weather in Paris?</s>assistant: I should call get_weather."
    '\n Next: caller.</s>caller: Action: get_weather\nAction Input: {"city": "Paris"}</s>observation: '
    '{"temperature": 21}</s>conclusion: It is 21 degrees in Paris.</s> Next: conclusion. Next: give up.\n'
    "Make a conclusion based on the conversation history: The thought of this step is: Base on the thought make "
    "an api call in the following format: Action Input: the api call request. caller: assistant: conclusion: "
    "0123456789 {}[]:,\"'. abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def make_tiny_tokenizer(texts: list[str] | None = None, vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained in code (no download); any text encodes, `</s>` stays plain text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts or [TINY_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def make_tiny_backbone(
    out_dir: str | Path,
    *,
    texts: list[str] | None = None,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """A randomly initialised Llama-architecture model and its tokenizer, saved like an imported backbone."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / MANIFEST).write_text(json.dumps({"source": "tiny-random-llama", "seed": seed}, indent=2) + "\n")
    return out_dir


def lively(model, seed: int = 1):
    """`model` with random weights of a wide spread (in place): its greedy outputs vary from token to token, where a
    default-initialised tiny model writes one token over and over, which would make token-for-token comparisons
    trivially true."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model.eval()
