"""GGUF files from role checkpoints, for the llama.cpp backend.

`export_gguf(checkpoint, gguf_type)` writes the checkpoint (a Hugging Face causal LM directory and its tokenizer) as a
GGUF of f32, bf16 or q8_0 weights, and returns its path. The conversion is llama.cpp's own `convert_hf_to_gguf.py`,
taken from the sdist of the installed llama-cpp-python version (the `conversion` package and `gguf-py` it vendors
beside it, so converter and runtime are the same llama.cpp), run in a subprocess by umi.inference.gguf_convert. The
sdist comes from the wheel cache the Makefile built llama-cpp-python from (`<cache>/llama-cpp-python-<version>/`),
else `pip download` fetches it once; the converter files are extracted next to it.

Each GGUF records the fingerprint of the checkpoint it was written from (umi.vocabulary.checkpoint_fingerprint, the
one identity umi gives a checkpoint: a stage's fingerprint, else its weight files' names, sizes and times) under
`umi.checkpoint_fingerprint`. The cache is keyed by that fingerprint (`<gguf_dir>/<sha256 of it>/<type>.gguf`, by
default in `<cache>/gguf`),
written atomically, and `check_gguf` refuses a GGUF whose recorded fingerprint is not its checkpoint's, so a GGUF
never serves other weights than the checkpoint it is named for.

The converter needs torch, transformers and sentencepiece (the training environment's packages); reading a GGUF's
fingerprint needs only the `gguf` package.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from umi.atomic import fsync_dir
from umi.vocabulary import ADAPTER_CONFIG, checkpoint_fingerprint

log = logging.getLogger(__name__)

__all__ = [
    "FINGERPRINT_KEY",
    "GGUF_TYPES",
    "GgufMismatch",
    "UNVERIFIED_TOKENIZER_KEY",
    "check_gguf",
    "converter_dir",
    "export_gguf",
    "gguf_cache_path",
    "gguf_type",
    "is_f32",
    "recorded_fingerprint",
    "umi_cache",
]

GGUF_TYPES: tuple[str, ...] = ("f32", "bf16", "q8_0")  # the converter's --outtype values umi offers
FINGERPRINT_KEY = "umi.checkpoint_fingerprint"
UNVERIFIED_TOKENIZER_KEY = "umi.tokenizer_unverified"  # umi.inference.gguf_convert: llama.cpp's tokenizer unchecked
LLAMA_CPP_DIST = "llama_cpp_python"
# what the converter needs from the sdist's vendor/llama.cpp/: the script, its model classes, its gguf package
CONVERTER_PARTS: tuple[str, ...] = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


class GgufMismatch(ValueError):
    """A GGUF that does not record the fingerprint of the checkpoint it is used for."""


def umi_cache() -> Path:
    """umi's cache folder for files derived once per machine (the llama-cpp-python wheel and sdist, GGUFs):
    $UMI_CACHE, else $XDG_CACHE_HOME/umi, else ~/.cache/umi. Outside the checkout, so a fresh clone on the same
    machine (CI's) reuses it. The Makefile's UMI_CACHE default is the same rule."""
    if os.environ.get("UMI_CACHE"):
        return Path(os.environ["UMI_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "umi"


def _llama_cpp_version() -> str:
    try:
        return metadata.version(LLAMA_CPP_DIST)
    except metadata.PackageNotFoundError as e:
        raise RuntimeError("llama-cpp-python is not installed (requirements.lock; `make setup` builds it)") from e


def converter_dir() -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py (with its `conversion` and `gguf-py`) of the installed
    llama-cpp-python version, extracted once from its sdist (module doc)."""
    version = _llama_cpp_version()
    home = umi_cache() / f"llama-cpp-python-{version}"
    dest = home / "convert"
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    sdist = home / f"{LLAMA_CPP_DIST}-{version}.tar.gz"
    if not sdist.is_file():
        home.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet"]
        cmd += ["--disable-pip-version-check", f"llama-cpp-python=={version}", "-d", str(home)]
        log.info("downloading the llama-cpp-python %s sdist into %s (for its GGUF converter)", version, home)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not sdist.is_file():
            raise RuntimeError(f"could not fetch the llama-cpp-python {version} sdist:\n{done.stderr.strip()}")
    root = f"{LLAMA_CPP_DIST}-{version}/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(prefix=".convert.", dir=home))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                inner = m.name.removeprefix(root)
                if m.name.startswith(root) and any(inner == p or inner.startswith(p) for p in CONVERTER_PARTS):
                    m.name = inner
                    members.append(m)
            tar.extractall(tmp, members=members, filter="data")  # "data": nothing absolute or outside tmp
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            raise RuntimeError(f"{sdist.name} holds no {root}convert_hf_to_gguf.py")
        try:
            os.rename(tmp, dest)  # atomic; a concurrent extraction that got there first wins
        except OSError:
            if not (dest / "convert_hf_to_gguf.py").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def gguf_cache_path(checkpoint: str | Path, gguf_type: str = "f32", gguf_dir: str | Path | None = None) -> Path:
    """Where the GGUF of `checkpoint` of that type is cached (in `gguf_dir`, default `<cache>/gguf`): keyed by the
    checkpoint's fingerprint."""
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    key = hashlib.sha256(checkpoint_fingerprint(checkpoint).encode()).hexdigest()[:32]
    return Path(gguf_dir or umi_cache() / "gguf") / key / f"{gguf_type}.gguf"


def recorded_fingerprint(gguf_file: str | Path) -> str | None:
    """The checkpoint fingerprint a GGUF records (None: it records none, e.g. written by another tool)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_file)).get_field(FINGERPRINT_KEY)
    return None if field is None else field.contents()


def gguf_type(gguf_file: str | Path) -> str:
    """A GGUF's weight type (its `general.file_type`): one of GGUF_TYPES, else llama.cpp's name for it (lower case;
    `unknown` when it records none)."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(str(gguf_file)).get_field("general.file_type")
    if field is None:
        return "unknown"
    file_type = LlamaFileType(field.contents())
    named = {LlamaFileType.ALL_F32: "f32", LlamaFileType.MOSTLY_BF16: "bf16", LlamaFileType.MOSTLY_Q8_0: "q8_0"}
    return named.get(file_type, file_type.name.lower())


def is_f32(gguf_file: str | Path) -> bool:
    """Whether a GGUF's weights are all float32."""
    return gguf_type(gguf_file) == "f32"


def check_gguf(gguf_file: str | Path, checkpoint: str | Path) -> None:
    """Refuse (GgufMismatch) a GGUF that does not record `checkpoint`'s fingerprint."""
    expected = checkpoint_fingerprint(checkpoint)
    recorded = recorded_fingerprint(gguf_file)
    if recorded != expected:
        raise GgufMismatch(
            f"{gguf_file} was written from checkpoint {recorded or '(none recorded)'}, not from {checkpoint} "
            f"({expected}): convert it again (umi.inference.gguf_export.export_gguf)"
        )


def export_gguf(checkpoint: str | Path, gguf_type: str = "f32", gguf_dir: str | Path | None = None) -> Path:
    """The GGUF of `checkpoint` in `gguf_dir` (module doc): the cached one when it records this checkpoint's
    fingerprint, else converted now (written atomically: a reader sees the old file or the new one)."""
    checkpoint = Path(checkpoint)
    if (checkpoint / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{checkpoint} is a LoRA adapter: merge it into its base before converting it to GGUF")
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint (config.json) at {checkpoint}")
    out = gguf_cache_path(checkpoint, gguf_type, gguf_dir)
    fingerprint = checkpoint_fingerprint(checkpoint)
    if out.is_file() and recorded_fingerprint(out) == fingerprint:
        return out
    converter = converter_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter's own gguf-py
        cmd = [sys.executable, "-m", "umi.inference.gguf_convert", str(converter), str(checkpoint), tmp, gguf_type]
        log.info("converting %s to %s GGUF", checkpoint, gguf_type)
        done = subprocess.run([*cmd, fingerprint], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"converting {checkpoint} to GGUF failed:\n{done.stderr.strip()[-4000:]}")
        if recorded_fingerprint(tmp) != fingerprint:  # pragma: no cover - the converter changed under us
            raise RuntimeError(f"the GGUF converted from {checkpoint} does not record its fingerprint")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
