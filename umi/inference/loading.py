"""How role checkpoints are loaded for inference: the one loader of evaluation, `umi chat` and the service.

- `load_checkpoint`: (model, tokenizer) from a checkpoint directory (an imported backbone or a trained stage);
- `load_role_models`: {role: checkpoint directory} to {role: LoadedRole}, on the device and in the dtype of
  umi.inference.devices. A directory named for several roles is loaded once and plays each of them; role directories
  that are LoRA adapters (an `adapter_config.json`, as peft saves them) on one base load that base once, the adapters
  attached to it under the role's name (the backend switches its adapter in before each generation);
- `load_backends`: {role: backend} on an engine (umi.inference.protocol.ENGINES): TransformersBackends over those
  models, one per (model, adapter), so roles over the same weights share one backend and its KV caches; or
  LlamaCppBackends over each checkpoint's GGUF (umi.inference.gguf_export's cache), one per directory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umi.inference.devices import inference_device, inference_dtype
from umi.inference.protocol import ENGINES, TRANSFORMERS, ModelBackend
from umi.inference.transformers_backend import TransformersBackend
from umi.vocabulary import ADAPTER_CONFIG

log = logging.getLogger(__name__)

__all__ = [
    "LoadedRole",
    "is_adapter_dir",
    "load_backend",
    "load_backends",
    "load_checkpoint",
    "load_role_models",
]


def load_checkpoint(path: str | Path, dtype=None):
    """(model, tokenizer) from a checkpoint directory written by `umi backbone import` or by a training stage."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), **({"dtype": dtype} if dtype is not None else {}))
    return model, tokenizer


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


@dataclass(frozen=True)
class LoadedRole:
    """A role's model as loaded: `model` is shared (the same object) by every role over the same weights; `adapter` is
    the name of the role's LoRA adapter inside it (None for a plain checkpoint)."""

    model: Any
    tokenizer: Any
    source: Path  # the checkpoint directory (the base's, for an adapter)
    adapter: str | None
    device: str
    dtype: Any


def _adapter_base(adapter_dirs: Mapping[str, Path], base_dir: Path | None) -> Path:
    if base_dir is not None:
        return Path(base_dir)
    bases = {
        json.loads((Path(p) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
        for p in adapter_dirs.values()
    }
    if len(bases) != 1:
        raise ValueError(f"the role adapters name different bases {sorted(bases)}: give the base directory explicitly")
    base = Path(bases.pop())
    if not base.is_dir():
        raise ValueError(f"the adapters' base {str(base)!r} is not a local directory: give the base directory")
    return base


def _existing_dirs(dirs: Mapping[str, str | Path]) -> dict[str, Path]:
    """{role: resolved directory}; FileNotFoundError naming every one that is not a directory."""
    resolved = {role: Path(p).resolve() for role, p in dirs.items()}
    missing = sorted({str(p) for p in resolved.values() if not p.is_dir()})
    if missing:
        raise FileNotFoundError(f"no checkpoint directory at {', '.join(missing)}")
    return resolved


def load_role_models(
    dirs: Mapping[str, str | Path],
    *,
    base_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str = "auto",
) -> dict[str, LoadedRole]:
    """{role: LoadedRole} for {role: checkpoint or LoRA adapter directory}; see the module doc for what is shared."""
    device = device or inference_device()
    torch_dtype = inference_dtype(device, dtype)
    resolved = _existing_dirs(dirs)
    adapters = {role: p for role, p in resolved.items() if is_adapter_dir(p)}
    out: dict[str, LoadedRole] = {}

    plain: dict[Path, tuple[Any, Any]] = {}
    for role, path in resolved.items():
        if role in adapters:
            continue
        if path not in plain:
            model, tokenizer = load_checkpoint(path, dtype=torch_dtype)
            plain[path] = (model.to(device).eval(), tokenizer)
            log.info("loaded %s (%s on %s) for %s", path, str(torch_dtype).removeprefix("torch."), device, role)
        out[role] = LoadedRole(*plain[path], source=path, adapter=None, device=device, dtype=torch_dtype)
    if adapters:
        base = _adapter_base(adapters, Path(base_dir) if base_dir else None)
        out.update(_load_adapters(adapters, base, device, torch_dtype))
    return out


def _load_adapters(adapters: Mapping[str, Path], base: Path, device: str, torch_dtype) -> dict[str, LoadedRole]:
    """The adapter roles over one copy of `base`, each adapter directory attached once (named for its first role)."""
    from peft import PeftModel

    model, tokenizer = load_checkpoint(base, dtype=torch_dtype)
    names: dict[Path, str] = {}
    peft_model = None
    for role, path in adapters.items():
        if path in names:
            continue
        names[path] = role
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=role)
        else:
            peft_model.load_adapter(str(path), adapter_name=role)
    assert peft_model is not None
    peft_model = peft_model.to(device).eval()
    log.info("loaded base %s once for the adapters of %s", base, ", ".join(adapters))
    return {
        role: LoadedRole(
            peft_model, tokenizer, source=base.resolve(), adapter=names[path], device=device, dtype=torch_dtype
        )
        for role, path in adapters.items()
    }


def load_backends(
    dirs: Mapping[str, str | Path],
    *,
    engine: str = TRANSFORMERS,
    gguf_type: str = "f32",
    gguf_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str = "auto",
    max_prompt_tokens: int | None = None,
    max_new_tokens: Mapping[str, int] | None = None,
    **backend_options,
) -> dict[str, ModelBackend]:
    """{role: backend} on `engine` for {role: checkpoint or LoRA adapter directory}.

    transformers: roles over the same weights and adapter share one backend (one model in every role also shares its
    KV caches between them); each adapter role gets its own backend over the shared base, since its keys differ.
    device and dtype: umi.inference.devices' rule. backend_options go to TransformersBackend.
    llama.cpp: one LlamaCppBackend per distinct directory, over its GGUF of `gguf_type` (f32, bf16, q8_0) from the
    cache in `gguf_dir` (converted once per checkpoint fingerprint; umi.inference.gguf_export), on the CPU. LoRA
    adapter roles are refused (they must be merged into their base first). Of backend_options it takes reuse_cache
    and threads (it keeps one KV cache, so max_cache_slots does not apply).
    max_prompt_tokens: the token budget prompts are fitted to (history dropped from the left, as training does). A
    backend's context is that plus the largest `max_new_tokens` of the roles it plays, so every role's prompt gets at
    least max_prompt_tokens. None: `context_length` when given, else the model's own maximum context."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    caps = dict(max_new_tokens or {})
    fixed_context = backend_options.pop("context_length", None)

    def context_of(roles: list[str]) -> int | None:
        if max_prompt_tokens is None:
            return fixed_context
        return max_prompt_tokens + max((int(caps.get(r, 0)) for r in roles), default=0)

    if engine != TRANSFORMERS:
        return _load_llama_cpp(dirs, gguf_type, gguf_dir, context_of, backend_options)
    loaded = load_role_models(dirs, base_dir=base_dir, device=device, dtype=dtype)
    groups: dict[tuple[int, str | None], list[str]] = {}
    for role, item in loaded.items():
        groups.setdefault((id(item.model), item.adapter), []).append(role)
    out: dict[str, ModelBackend] = {}
    for roles in groups.values():
        item = loaded[roles[0]]
        backend = TransformersBackend(
            item.model, item.tokenizer, context_length=context_of(roles), adapter=item.adapter, **backend_options
        )
        for role in roles:
            out[role] = backend
    return out


def _load_llama_cpp(
    dirs: Mapping[str, str | Path],
    gguf_type: str,
    gguf_dir: str | Path | None,
    context_of: Callable[[list[str]], int | None],
    backend_options: Mapping[str, Any],
) -> dict[str, ModelBackend]:
    """load_backends on llama.cpp (see there)."""
    from umi.inference.llama_cpp_backend import LlamaCppBackend

    resolved = _existing_dirs(dirs)
    adapters = sorted(role for role, p in resolved.items() if is_adapter_dir(p))
    if adapters:
        raise ValueError(
            f"the {', '.join(adapters)} checkpoint(s) are LoRA adapters: llama.cpp runs merged checkpoints only "
            "(merge each into its base first, or use the transformers engine)"
        )
    options = {k: backend_options[k] for k in ("reuse_cache", "threads") if k in backend_options}
    groups: dict[Path, list[str]] = {}
    for role, path in resolved.items():
        groups.setdefault(path, []).append(role)
    out: dict[str, ModelBackend] = {}
    for path, roles in groups.items():
        backend = LlamaCppBackend.from_checkpoint(
            path, gguf_type, gguf_dir=gguf_dir, context_length=context_of(roles), **options
        )
        log.info("loaded %s (GGUF %s on llama.cpp) for %s", path, gguf_type, ", ".join(roles))
        for role in roles:
            out[role] = backend
    return out


def load_backend(path: str | Path, **options) -> ModelBackend:
    """The backend over one checkpoint directory (`options` as load_backends')."""
    return load_backends({"model": path}, **options)["model"]
