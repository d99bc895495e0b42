"""Wrapping backends: a base class that passes the whole ModelBackend interface through, and the one loop that wraps
a {role: backend} mapping once per distinct backend.

Roles over one model share one backend (umi.inference.loading); every wrapper keeps that sharing, so the roles keep
sharing its KV caches, its lock and its batcher. The wrappers: umi.inference.sharing.SharedBackend (a model shared by
threads), umi.eval.generation_cache.CachedBackend (answers from disk), umi.eval.budget.DocsFirstBackend (a raised
budget for prompts whose docs overflow).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from umi.inference.protocol import BackendStats, Finish, Generation, GenerationRequest, ModelBackend, Take

__all__ = ["ForwardingBackend", "per_backend"]

B = TypeVar("B")
W = TypeVar("W")


def per_backend(backends: Mapping[str, B], wrap: Callable[[B, list[str]], W]) -> dict[str, W]:
    """{role: wrap(backend, roles it plays)}, calling `wrap` once per distinct backend (in the order of first use)."""
    roles_of: dict[int, list[str]] = {}
    for role, backend in backends.items():
        roles_of.setdefault(id(backend), []).append(role)
    made: dict[int, W] = {}
    out: dict[str, W] = {}
    for role, backend in backends.items():
        if id(backend) not in made:
            made[id(backend)] = wrap(backend, roles_of[id(backend)])
        out[role] = made[id(backend)]
    return out


class ForwardingBackend:
    """A ModelBackend over `inner` that passes every member through; a subclass overrides what it changes."""

    def __init__(self, inner: ModelBackend):
        self.inner = inner

    @property
    def model(self) -> Any:
        return self.inner.model

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    @property
    def adapter(self) -> str | None:
        return self.inner.adapter

    @property
    def context_length(self) -> int:
        return self.inner.context_length

    @property
    def max_cache_slots(self) -> int:
        return self.inner.max_cache_slots

    @property
    def decodes_together(self) -> bool:
        return self.inner.decodes_together

    @property
    def engine(self) -> str:
        return self.inner.engine

    @property
    def stats(self) -> BackendStats:
        return self.inner.stats

    def with_context(self, context_length: int) -> ModelBackend:
        """The wrapped backend's, unwrapped (a wrapper's state belongs to the backend it wraps): wrap it again."""
        return self.inner.with_context(context_length)

    def prompt_ids(self, request: GenerationRequest) -> tuple[list[int], int]:
        return self.inner.prompt_ids(request)

    def generate(self, request: GenerationRequest) -> Generation:
        return self.inner.generate(request)

    def generate_batch(self, requests: Sequence[GenerationRequest], batch_size: int = 8) -> list[Generation]:
        return self.inner.generate_batch(requests, batch_size=batch_size)

    def generate_many(
        self, requests: Sequence[GenerationRequest], **options: Any
    ) -> list[Generation | Exception | None]:
        return self.inner.generate_many(requests, **options)

    def decode_together(self, take: Take, finish: Finish, dropped: Callable[[Any], bool], *, max_rows: int = 8) -> None:
        self.inner.decode_together(take, finish, dropped, max_rows=max_rows)

    def reset(self) -> None:
        self.inner.reset()
