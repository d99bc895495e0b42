"""One model shared by concurrent threads: the service's requests, live evaluation's entries rolled out together.

`TransformersBackend` keeps KV caches of earlier prompts and is not safe to enter from two threads. Every role
backend over one model shares that model's lock (`SharedBackend.lock`), so generations on a model are serialised (a
LoRA switch included) while requests otherwise run concurrently. A request waits for the lock no longer than its own
deadline allows, and checks the deadline before each generation (`guarded`): a request past its time ends at the next
generation with RequestTimeout instead of holding the model. One generation is bounded by its max_new_tokens.

Batching (`max_batch` > 1): a MicroBatcher per model (umi.inference.micro_batching) takes the place of queuing on the
lock: concurrent generations run as one batch, with the same deadline rules.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from umi.inference.deadlines import Deadline, RequestTimeout
from umi.inference.micro_batching import MicroBatcher
from umi.inference.protocol import Backend, Generation, GenerationRequest, ModelBackend
from umi.inference.wrapping import ForwardingBackend, per_backend

__all__ = ["SharedBackend", "batched_backends", "guarded", "shared_backends"]


class SharedBackend(ForwardingBackend):
    """A backend as concurrent threads see it: `generate` joins the model's batcher when there is one, else waits
    for the model's lock (no longer than the request's deadline); `generate_batch` and `generate_many` (static
    prompts, one caller) run alone under the lock; `reset` does nothing, since concurrent episodes share the model's
    KV caches (the backend keeps them LRU-bounded)."""

    def __init__(self, inner: ModelBackend, lock: threading.Lock, batcher: MicroBatcher | None = None):
        super().__init__(inner)
        self.lock = lock
        self.batcher = batcher

    def generate(self, request: GenerationRequest, deadline: Deadline | None = None) -> Generation:
        if self.batcher is not None:
            return self.batcher.submit(self.inner, request, deadline)
        wait = -1 if deadline is None else max(deadline.remaining, 0.0)
        if deadline is not None:
            deadline.check(f"the {request.record_id} generation")
        if not self.lock.acquire(timeout=wait):
            assert deadline is not None  # without one the wait has no limit
            raise RequestTimeout(f"the model stayed busy past the request's time limit of {deadline.seconds:g} s")
        try:
            if deadline is not None:
                deadline.check(f"the {request.record_id} generation")
            return self.inner.generate(request)  # a LoRA role's backend switches its adapter in itself
        finally:
            self.lock.release()

    def generate_batch(self, requests, batch_size: int = 8) -> list:
        with self.lock:
            return self.inner.generate_batch(requests, batch_size=batch_size)

    def generate_many(self, requests, **options) -> list:
        with self.lock:
            return self.inner.generate_many(requests, **options)

    def reset(self) -> None:
        pass


def shared_backends(
    backends: Mapping[str, ModelBackend], *, max_batch: int = 1, wait_s: float = 0.005
) -> dict[str, SharedBackend]:
    """{role: SharedBackend} over load_backends' result: one lock per model, and with `max_batch` > 1 one
    MicroBatcher per model whose backend decodes sequences together (batches of up to that many, waiting `wait_s` for
    company), shared by the roles over it (a LoRA role's backend shares its base's). A backend that decodes one
    sequence at a time (ModelBackend.decodes_together False) gets no batcher: its requests queue on the lock, without
    the wait for company or the hop to a worker thread."""
    locks: dict[int, threading.Lock] = {}
    batchers: dict[int, MicroBatcher] = {}

    def share(backend: ModelBackend, roles: list[str]) -> SharedBackend:
        model = id(backend.model)
        if model not in locks:
            locks[model] = threading.Lock()
            if max_batch > 1 and backend.decodes_together:  # the worker thread is named for the first role
                batchers[model] = MicroBatcher(locks[model], max_batch, wait_s, name=roles[0])
        return SharedBackend(backend, locks[model], batchers.get(model))

    return per_backend(backends, share)


@contextmanager
def batched_backends(backends: Mapping[str, ModelBackend], max_batch: int) -> Iterator[dict[str, Any]]:
    """shared_backends with batches of `max_batch` (live evaluation's concurrent entries), the batchers closed on
    exit; `max_batch` < 2: the backends as they are (one entry at a time needs no lock, and keeps its resets)."""
    if max_batch < 2:
        yield dict(backends)
        return
    shared = shared_backends(backends, max_batch=max_batch)
    try:
        yield shared
    finally:
        for batcher in {id(b.batcher): b.batcher for b in shared.values() if b.batcher is not None}.values():
            batcher.close()


class _Guarded:
    """A backend as one request sees it: every generation checks the request's deadline first."""

    def __init__(self, backend: Backend, deadline: Deadline):
        self.inner = backend
        self.deadline = deadline

    def generate(self, request: GenerationRequest) -> Generation:
        if isinstance(self.inner, SharedBackend):
            return self.inner.generate(request, self.deadline)
        self.deadline.check(f"the {request.record_id} generation")
        return self.inner.generate(request)

    def reset(self) -> None:
        self.inner.reset()


def guarded(backend: Backend, deadline: Deadline) -> Backend:
    """`backend` with `deadline` checked before each generation (the service's view of a shared model per request)."""
    return _Guarded(backend, deadline)
