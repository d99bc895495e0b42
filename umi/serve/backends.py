"""The role models behind the service: loaded once, shared where they can be, one generation at a time per model.

Loading (`load_role_backends`):
- a directory named for several roles is loaded once and plays each of them (one backbone in every role);
- role directories that are LoRA adapters (an `adapter_config.json`, as peft saves them) on one base load that base
  once: the adapters are attached to the one model under the role's name and switched in before each generation, so
  three adapters cost one base model's memory.

Serving: `TransformersBackend` keeps KV caches of earlier prompts and is not safe to enter from two threads; requests
run in worker threads. Every role backend over one model shares that model's lock (`SharedModel.lock`), so
generations on a model are serialised (a LoRA switch included) while requests otherwise run concurrently. A request
waits for the lock no longer than its own deadline allows (`Deadline`), and checks the deadline before each
generation: a request past its time ends at the next generation with `RequestTimeout` instead of holding the model.
One generation is bounded by its max_new_tokens.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umi.agent.backend import Backend, Generation, GenerationRequest, TransformersBackend

log = logging.getLogger(__name__)

__all__ = [
    "Deadline",
    "RequestCancelled",
    "RequestTimeout",
    "RoleBackend",
    "SharedModel",
    "load_role_backends",
    "guarded",
    "is_adapter_dir",
]

ADAPTER_CONFIG = "adapter_config.json"


class RequestTimeout(Exception):
    """The request ran past its time limit (waiting for a model included)."""


class RequestCancelled(Exception):
    """The client went away; the request stops at its next generation."""


@dataclass
class Deadline:
    """A request's time budget. `cancel()` (the client disconnected) makes the next check raise."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def cancel(self) -> None:
        self.cancelled = True

    def check(self, doing: str) -> None:
        if self.cancelled:
            raise RequestCancelled(f"the client went away before {doing}")
        if self.remaining <= 0:
            raise RequestTimeout(f"the request ran past its time limit of {self.seconds:g} s before {doing}")


@dataclass
class SharedModel:
    """One loaded model and the lock every role backend over it takes; `peft` is set when roles are adapters."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    peft: Any = None
    source: str = ""


class RoleBackend:
    """One role's generation over a (possibly shared) model: takes the model's lock, switches in the role's adapter."""

    def __init__(self, backend: TransformersBackend, shared: SharedModel, adapter: str | None = None):
        self.backend = backend
        self.shared = shared
        self.adapter = adapter

    def generate(self, request: GenerationRequest, deadline: Deadline | None = None) -> Generation:
        wait = -1 if deadline is None else max(deadline.remaining, 0.0)
        if deadline is not None:
            deadline.check(f"the {request.record_id} generation")
        if not self.shared.lock.acquire(timeout=wait):
            raise RequestTimeout(
                f"the model stayed busy past the request's time limit of {deadline.seconds:g} s"  # type: ignore[union-attr]
            )
        try:
            if deadline is not None:
                deadline.check(f"the {request.record_id} generation")
            if self.adapter is not None:
                self.shared.peft.set_adapter(self.adapter)
            return self.backend.generate(request)
        finally:
            self.shared.lock.release()


class _Guarded:
    """A backend as one request sees it: every generation checks the request's deadline first."""

    def __init__(self, backend: Backend, deadline: Deadline):
        self.inner = backend
        self.deadline = deadline

    def generate(self, request: GenerationRequest) -> Generation:
        if isinstance(self.inner, RoleBackend):
            return self.inner.generate(request, self.deadline)
        self.deadline.check(f"the {request.record_id} generation")
        return self.inner.generate(request)


def guarded(backend: Backend, deadline: Deadline) -> Backend:
    return _Guarded(backend, deadline)


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _torch_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _adapter_base(adapter_dirs: Mapping[str, Path], base_dir: Path | None) -> Path:
    if base_dir is not None:
        return Path(base_dir)
    bases = set()
    for role, path in adapter_dirs.items():
        config = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
        bases.add(config.get("base_model_name_or_path") or "")
    if len(bases) != 1:
        raise ValueError(f"the role adapters name different bases {sorted(bases)}: give the base directory explicitly")
    base = Path(bases.pop())
    if not base.is_dir():
        raise ValueError(f"the adapters' base {str(base)!r} is not a local directory: give the base directory")
    return base


def load_role_backends(
    dirs: Mapping[str, str | Path],
    *,
    base_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str = "auto",
    backend_options: Mapping[str, Any] | None = None,
) -> dict[str, RoleBackend]:
    """{role: RoleBackend} for {role: checkpoint or adapter directory}. See the module doc for what is shared."""
    from umi.train.backbone import load_backbone

    device = device or _default_device()
    torch_dtype = _torch_dtype(dtype, device)
    options = dict(backend_options or {})
    resolved = {role: Path(p).resolve() for role, p in dirs.items()}
    adapters = {role: p for role, p in resolved.items() if is_adapter_dir(p)}
    plain = {role: p for role, p in resolved.items() if role not in adapters}
    out: dict[str, RoleBackend] = {}

    loaded: dict[Path, RoleBackend] = {}
    for role, path in plain.items():
        if path not in loaded:
            model, tokenizer = load_backbone(path, dtype=torch_dtype)
            shared = SharedModel(source=str(path))
            loaded[path] = RoleBackend(TransformersBackend(model.to(device), tokenizer, **options), shared)
            log.info("loaded %s for %s", path, role)
        out[role] = loaded[path]

    if adapters:
        from peft import PeftModel

        base = _adapter_base(adapters, Path(base_dir) if base_dir else None)
        model, tokenizer = load_backbone(base, dtype=torch_dtype)
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
        shared = SharedModel(peft=peft_model, source=str(base))
        for role, path in adapters.items():
            # each role keeps its own KV caches: the same prompt gives different keys under another adapter
            backend = TransformersBackend(peft_model, tokenizer, **options)
            out[role] = RoleBackend(backend, shared, adapter=names[path])
        log.info("loaded base %s once for the adapters of %s", base, ", ".join(adapters))
    return out
