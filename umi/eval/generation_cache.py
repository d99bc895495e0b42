"""A disk cache of role generations, so that a long evaluation survives being stopped and resumes where it was.

A full evaluation on a 2-core CPU takes hours: every generation it finishes is stored at once (sqlite, one committed
row per generation), and a rerun with the same cache answers those requests from disk and computes only the rest.
The key is everything the text depends on: the checkpoint's bytes (umi.vocabulary.content_digest of its weights,
config and tokenizer: a retrain to the same bytes, on another machine, hits the cache; other weights never do),
the adapter, the dtype, the context length, and the request
(prompt, history span, caps, stop strings, temperature and seed: sampled retries are seeded, so they are repeatable
too). Two runs that share a cache therefore see the same texts; a resumed run batches its remaining prompts among
themselves, which in bfloat16 can change a rare low-margin token versus an uninterrupted run (padding changes the
kernels' reduction order), as any change of batch composition can.

`cost_seconds` is each generation's share of the compute that produced it (a batch's wall time split evenly over
its prompts), so a resumed report can still say what the whole evaluation cost: `CacheStats.cost_seconds`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from umi.backend import Generation, GenerationRequest, TooLong

__all__ = ["GenerationCache", "CachedBackend", "CacheStats", "cached_backends"]

_SCHEMA = """CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY, generation TEXT NOT NULL, cost_seconds REAL NOT NULL, created REAL NOT NULL)"""


@dataclass
class CacheStats:
    """hits / misses of this process; cost_seconds: the stored compute of every generation it returned (hits
    included), i.e. what the run would have cost without the cache."""

    hits: int = 0
    misses: int = 0
    cost_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "cost_seconds": round(self.cost_seconds, 3)}


class GenerationCache:
    """key -> Generation in one sqlite file (WAL; every put is committed before it returns)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, key: str) -> Generation | TooLong | None:
        """The stored generation, or the TooLong the request raised (a prompt that cannot fit is as repeatable as a
        text), or None."""
        with self._lock:
            row = self._db.execute("SELECT generation, cost_seconds FROM generations WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.stats.misses += 1
            return None
        data = json.loads(row[0])
        self.stats.hits += 1
        self.stats.cost_seconds += float(row[1])
        if "too_long" in data:
            return TooLong(*data["too_long"])
        data["token_ids"] = tuple(data["token_ids"])
        return Generation(**data)

    def put(self, key: str, generation: Generation | TooLong, cost_seconds: float) -> None:
        if isinstance(generation, TooLong):
            fields: dict = {"too_long": [generation.record_id, generation.needed, generation.budget]}
        else:
            fields = asdict(generation)
        data = json.dumps(fields, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?)", (key, data, float(cost_seconds), time.time())
            )
        self.stats.cost_seconds += float(cost_seconds)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def request_key(model_key: str, request: GenerationRequest) -> str:
    """The cache key of `request` on the model `model_key` (record_id is a label, not an input)."""
    fields = asdict(request)
    fields.pop("record_id", None)
    payload = json.dumps([model_key, fields], sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CachedBackend:
    """A backend whose generate / generate_batch answer from `cache` where they can; everything else (prompt_ids,
    reset, stats, the model) is the wrapped backend's."""

    def __init__(self, inner, cache: GenerationCache, model_key: str):
        self.inner = inner
        self.cache = cache
        self.model_key = model_key

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _key(self, request: GenerationRequest) -> str:
        return request_key(self.model_key, request)

    def generate(self, request: GenerationRequest) -> Generation:
        key = self._key(request)
        hit = self.cache.get(key)
        if isinstance(hit, TooLong):
            raise hit
        if hit is not None:
            return hit
        started = time.perf_counter()
        try:
            g = self.inner.generate(request)
        except TooLong as e:
            self.cache.put(key, e, time.perf_counter() - started)
            raise
        self.cache.put(key, g, time.perf_counter() - started)
        return g

    def generate_batch(self, requests: Sequence[GenerationRequest], batch_size: int = 8) -> list[Generation]:
        keys = [self._key(r) for r in requests]
        out: list[Generation | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, g in enumerate(out) if g is None]
        for start in range(0, len(todo), batch_size):  # one batch at a time, so each is stored as soon as it is done
            chunk = todo[start : start + batch_size]
            started = time.perf_counter()
            made = self.inner.generate_batch([requests[i] for i in chunk], batch_size=batch_size)
            share = (time.perf_counter() - started) / max(1, len(chunk))
            for i, g in zip(chunk, made):
                self.cache.put(keys[i], g, share)
                out[i] = g
        return out  # type: ignore[return-value]


def cached_backends(
    backends: Mapping[str, Any], roles: Mapping[str, str], cache: GenerationCache, dtype: str
) -> dict[str, CachedBackend]:
    """{role: CachedBackend} over load_backends' result; roles: role -> checkpoint directory. One wrapper per
    distinct backend, so roles sharing a model share its key (and its KV caches, as before)."""
    from umi.vocabulary import content_digest

    wrapped: dict[int, CachedBackend] = {}
    out = {}
    for role, backend in backends.items():
        if id(backend) not in wrapped:
            directory = roles[role]
            model_key = json.dumps(
                [
                    content_digest(directory),
                    getattr(backend, "adapter", None),
                    dtype,
                    getattr(backend, "context_length", None),
                ]
            )
            wrapped[id(backend)] = CachedBackend(backend, cache, model_key)
        out[role] = wrapped[id(backend)]
    return out
