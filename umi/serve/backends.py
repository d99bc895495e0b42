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

Batching (`max_batch` > 1): a `MicroBatcher` per model takes the place of queuing on the lock: concurrent
generations run as one batch (umi.batching), with the same deadline rules.

Device and dtype follow umi.inference's rule (bf16 where the device computes it natively), as evaluation's do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umi.backend import Backend, Generation, GenerationRequest, TransformersBackend, load_backends
from umi.batching import Deadline, MicroBatcher, RequestCancelled, RequestTimeout
from umi.inference import ADAPTER_CONFIG, is_adapter_dir

log = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_CONFIG",
    "Deadline",
    "RequestCancelled",
    "RequestTimeout",
    "RoleBackend",
    "SharedModel",
    "load_role_backends",
    "guarded",
    "is_adapter_dir",
]


@dataclass
class SharedModel:
    """One loaded model and the lock every role backend over it takes; `peft` is set when roles are adapters."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    peft: Any = None
    source: str = ""
    batcher: MicroBatcher | None = None  # set when concurrent generations on this model run as batches


class RoleBackend:
    """One role's generation over a (possibly shared) model: takes the model's lock, switches in the role's adapter."""

    def __init__(self, backend: TransformersBackend, shared: SharedModel, adapter: str | None = None):
        self.backend = backend
        self.shared = shared
        self.adapter = adapter

    def generate(self, request: GenerationRequest, deadline: Deadline | None = None) -> Generation:
        if self.shared.batcher is not None:
            return self.shared.batcher.submit(self.backend, request, deadline)
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
            return self.backend.generate(request)  # a LoRA role's backend switches its adapter in itself
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


def load_role_backends(
    dirs: Mapping[str, str | Path],
    *,
    base_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str = "auto",
    backend_options: Mapping[str, Any] | None = None,
    max_batch: int = 1,
    batch_wait_s: float = 0.005,
) -> dict[str, RoleBackend]:
    """{role: RoleBackend} for {role: checkpoint or adapter directory}, by the loader evaluation and chat use
    (umi.backend.load_backends, umi.inference's device and dtype rule). See the module doc for what is shared.
    max_batch > 1: concurrent generations on one model run as batches of up to that many (umi.batching)."""
    backends = load_backends(dirs, base_dir=base_dir, device=device, dtype=dtype, **dict(backend_options or {}))
    shared: dict[int, SharedModel] = {}
    wrapped: dict[int, RoleBackend] = {}
    out: dict[str, RoleBackend] = {}
    for role, backend in backends.items():
        if id(backend) not in wrapped:
            model = shared.setdefault(
                id(backend.model),
                SharedModel(
                    peft=backend.model if backend.adapter is not None else None,
                    source=str(getattr(backend.model, "name_or_path", "")),
                ),
            )
            if max_batch > 1 and model.batcher is None:
                model.batcher = MicroBatcher(model.lock, max_batch, batch_wait_s, name=Path(model.source).name)
            wrapped[id(backend)] = RoleBackend(backend, model, adapter=backend.adapter)
        out[role] = wrapped[id(backend)]
    return out
