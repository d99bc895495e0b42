"""A disk cache of role generations, so that a long evaluation survives being stopped and resumes where it was.

A full evaluation on a 2-core CPU takes hours: every generation it finishes is stored at once (sqlite, one committed
row per generation), and a rerun with the same cache answers those requests from disk and computes only the rest.
The key is everything the text depends on: the checkpoint's bytes (umi.vocabulary.content_digest of its weights,
config and tokenizer: a retrain to the same bytes, on another machine, hits the cache; other weights never do),
the adapter, the dtype (on an engine other than transformers, the engine and its weights' type: `model_key`), the
context length, and the request
(prompt, history span, caps, stop strings, temperature and seed: sampled retries are seeded, so they are repeatable
too). Two runs that share a cache therefore see the same texts; a resumed run batches its remaining prompts among
themselves, which in bfloat16 can change a rare low-margin token versus an uninterrupted run (padding changes the
kernels' reduction order), as any change of batch composition can.

**Twins.** Kernels are chosen by the CPU, so the same commit and seed train different bytes on machines of other
kinds (docs/training.md "Same seed, same weights"), and such a retrain would start a long evaluation from nothing.
A checkpoint whose bytes have no rows may be answered from another checkpoint's rows once it has shown, on requests
it had to compute anyway, that it writes the same: TWIN_CHECKS generations (TWIN_TOKENS generated tokens) identical
token for token (text, token ids, stop reason, prompt fitting) and none different. One difference and that candidate
is refused for good. Candidates are the cache's other checkpoints trained by the same recipe (the same stage of the
same config, data and init: umi.vocabulary.training_recipe; never a model trained on from it, nor another role) with
the same adapter, dtype and context length; every comparison is
kept in the cache (table `twins`), and `CacheStats.twin_hits` counts the answers a twin gave, so a report says how
many of its texts came from the twin's bytes.

`cost_seconds` is each generation's share of the wall time spent generating (`GenerationCache.charge`: the time since
the later of its start and the last generation stored), so generations that overlapped (a batch's rows, continuous
batching, concurrent live rollouts) share their wall time instead of each counting all of it, and a resumed report can
still say what the whole evaluation cost: `CacheStats.cost_seconds`. Rows that continuous batching or live rollouts
stored before this rule (most of docs/results/full-eval's) carry their own lifetime instead: their sum overstates.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from umi.inference.protocol import TRANSFORMERS, Generation, GenerationRequest, ModelBackend
from umi.inference.tokens import TooLong
from umi.inference.wrapping import ForwardingBackend, per_backend

__all__ = [
    "GenerationCache",
    "CachedBackend",
    "CacheStats",
    "cached_backends",
    "model_key",
    "TWIN_CHECKS",
    "TWIN_TOKENS",
]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY, generation TEXT NOT NULL, cost_seconds REAL NOT NULL, created REAL NOT NULL)""",
    # every checkpoint (model key) this cache has served, with how it was trained (umi.vocabulary.training_recipe):
    # the candidates of a twin check are the other checkpoints of the same recipe
    "CREATE TABLE IF NOT EXISTS models (model_key TEXT PRIMARY KEY, recipe TEXT, created REAL NOT NULL)",
    # what a twin check has seen so far: generations of `model_key` computed afresh and found identical (matched,
    # with their generated tokens) or not (differed) to the rows of `twin` for the same requests
    """CREATE TABLE IF NOT EXISTS twins (model_key TEXT NOT NULL, twin TEXT NOT NULL, matched INTEGER NOT NULL,
    tokens INTEGER NOT NULL, differed INTEGER NOT NULL, PRIMARY KEY (model_key, twin))""",
)

# How many identical generations (and generated tokens), and no different one, make another checkpoint's rows this
# one's. The first generations of a static run are its shortest prompts, so a token floor too: long outputs are where
# rounding would show. At 64 of 64 the 95% upper bound on the share of answers that would differ is about 4.6% (rule
# of three, were they a random sample); measured between two trainings on two machine kinds: 0 of 1,751 differed
# (docs/results/full-eval).
TWIN_CHECKS = 64
TWIN_TOKENS = 4096

# the fields of a Generation that the weights decide (not the timings, not the prefix-cache reuse)
_COMPARED = ("text", "token_ids", "stop_reason", "prompt_tokens", "new_tokens", "dropped_turns")


@dataclass
class CacheStats:
    """hits / misses (generations computed and stored) of this process; cost_seconds: the stored compute of every generation it returned (hits
    included), i.e. what the run would have cost without the cache."""

    hits: int = 0
    misses: int = 0
    cost_seconds: float = 0.0
    twin_hits: int = 0  # of the hits, those answered from a verified twin's rows
    twins: dict[str, dict[str, int]] = field(default_factory=dict)  # model key -> its twin's key and the check's counts

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hits": self.hits, "misses": self.misses, "cost_seconds": round(self.cost_seconds, 3)}
        if self.twin_hits or self.twins:
            out.update(twin_hits=self.twin_hits, twins=self.twins)
        return out


class GenerationCache:
    """key -> Generation in one sqlite file (WAL; every put is committed before it returns)."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.perf_counter):
        self.path = Path(path)
        self.clock = clock
        self._charged_until = float("-inf")  # the clock when the last charged generation was stored
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, key: str, twin_key: str | None = None) -> Generation | TooLong | None:
        """The stored generation, or the TooLong the request raised (a prompt that cannot fit is as repeatable as a
        text), or None. `twin_key`: where to look when `key` has no row (the same request on a verified twin)."""
        query = "SELECT generation, cost_seconds FROM generations WHERE key = ?"
        with self._lock:  # rows and counts: live rollouts call from several threads
            row = self._db.execute(query, (key,)).fetchone()
            if row is None and twin_key is not None:
                row = self._db.execute(query, (twin_key,)).fetchone()
                self.stats.twin_hits += row is not None
            if row is None:
                return None  # a miss is counted when its generation is stored (put)
            self.stats.hits += 1
            self.stats.cost_seconds += float(row[1])
        return _decode(row[0])

    def charge(self, started: float) -> float:
        """The seconds to store with a generation that started at `started` (self.clock) and is done now: the time
        since the later of its start and the last charge, so that overlapping generations (from any backend sharing
        this cache) split their wall time and the charges add up to the wall time spent generating."""
        with self._lock:
            now = self.clock()
            seconds = max(0.0, now - max(started, self._charged_until))
            self._charged_until = now
            return seconds

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
            self.stats.misses += 1
            self.stats.cost_seconds += float(cost_seconds)

    def register_model(self, model_key: str, recipe: str | None = None) -> None:
        """Name `model_key` as a checkpoint of this cache, trained by `recipe` (a twin candidate for checkpoints of the
        same recipe that come later; None: never one)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO models VALUES (?, ?, ?) ON CONFLICT (model_key) DO UPDATE SET recipe = excluded.recipe",
                (model_key, recipe, time.time()),
            )

    def models(self, recipe: str) -> list[str]:
        """The checkpoints of `recipe`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT model_key FROM models WHERE recipe = ? ORDER BY created, model_key", (recipe,)
            )
            return [r[0] for r in rows]

    def twin_counts(self, model_key: str) -> dict[str, tuple[int, int, int]]:
        """{candidate: (matched, matched tokens, differed)} of `model_key`'s twin checks so far."""
        with self._lock:
            rows = self._db.execute(
                "SELECT twin, matched, tokens, differed FROM twins WHERE model_key = ?", (model_key,)
            )
            return {twin: (int(m), int(t), int(d)) for twin, m, t, d in rows}

    def add_twin_counts(self, model_key: str, twin: str, matched: int, tokens: int, differed: int) -> None:
        with self._lock:
            self._db.execute(
                """INSERT INTO twins VALUES (?, ?, ?, ?, ?) ON CONFLICT (model_key, twin) DO UPDATE
                SET matched = matched + excluded.matched, tokens = tokens + excluded.tokens,
                differed = differed + excluded.differed""",
                (model_key, twin, matched, tokens, differed),
            )

    def peek(self, key: str) -> Generation | TooLong | None:
        """get without counting a hit or a miss (what a twin check reads)."""
        with self._lock:
            row = self._db.execute("SELECT generation FROM generations WHERE key = ?", (key,)).fetchone()
        return None if row is None else _decode(row[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _decode(text: str) -> Generation | TooLong:
    data = json.loads(text)
    if "too_long" in data:
        return TooLong(*data["too_long"])
    data["token_ids"] = tuple(data["token_ids"])
    return Generation(**data)


def _kind(model_key: str) -> list | None:
    """A model key's adapter, dtype and context length (what a twin must share besides the recipe)."""
    try:
        parts = json.loads(model_key)
    except ValueError:
        return None
    return parts[1:] if isinstance(parts, list) else None


def _same(a: Generation, b: Generation) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _COMPARED)


def model_key(content_digest: str, backend: ModelBackend, dtype: str) -> str:
    """The part of every request key that names the model: the checkpoint's bytes (umi.vocabulary.content_digest),
    the adapter, the precision and the context length. The precision is `dtype` (the torch dtype) on transformers;
    another engine's label (ModelBackend.engine, e.g. `llama.cpp/q8_0`) takes its place, naming the engine and the
    weights it runs whatever torch dtype the caller names. So transformers keys are the ones made before there were
    engines (existing caches keep answering), and no other engine's generation can answer for transformers, nor one
    GGUF type's for another (twins too: they must share this part but the checkpoint's bytes)."""
    precision = dtype if backend.engine == TRANSFORMERS else backend.engine
    return json.dumps([content_digest, backend.adapter, precision, backend.context_length])


def request_key(model_key: str, request: GenerationRequest) -> str:
    """The cache key of `request` on the model `model_key` (record_id is a label, not an input)."""
    fields = asdict(request)
    fields.pop("record_id", None)
    payload = json.dumps([model_key, fields], sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CachedBackend(ForwardingBackend):
    """A backend whose generate / generate_batch / generate_many answer from `cache` where they can; everything else
    (prompt_ids, reset, stats, the model) is the wrapped backend's. `recipe` (umi.vocabulary.training_recipe of the
    checkpoint): other checkpoints of the same recipe, adapter, dtype and context length are its twin candidates
    (module doc)."""

    def __init__(
        self,
        inner: ModelBackend,
        cache: GenerationCache,
        model_key: str,
        recipe: str | None = None,
        *,
        twin_checks: int = TWIN_CHECKS,
        twin_tokens: int = TWIN_TOKENS,
    ):
        super().__init__(inner)
        self.cache = cache
        self.model_key = model_key
        self.twin_checks, self.twin_tokens = twin_checks, twin_tokens
        cache.register_model(model_key, recipe)
        kind = _kind(model_key)
        same = cache.models(recipe) if recipe is not None and kind is not None else []
        self._candidates = [k for k in same if k != model_key and _kind(k) == kind]
        self.twin: str | None = None
        self._counts = cache.twin_counts(model_key)
        self._checking = threading.Lock()  # twin checks from concurrent live rollouts
        self._settle()

    def _key(self, request: GenerationRequest) -> str:
        return request_key(self.model_key, request)

    def _settle(self) -> None:
        """Drop the candidates with a difference (the twin too, should it be one); take the first that passed."""
        self._candidates = [c for c in self._candidates if self._counts.get(c, (0, 0, 0))[2] == 0]
        if self.twin is not None and self.twin not in self._candidates:
            self.twin = None
            self.cache.stats.twins.pop(self.model_key, None)
        for candidate in self._candidates:
            matched, tokens, _ = self._counts.get(candidate, (0, 0, 0))
            if self.twin is None and matched >= self.twin_checks and tokens >= self.twin_tokens:
                self.twin = candidate
                check = {"twin": candidate, "matched": matched, "tokens": tokens, "differed": 0}
                self.cache.stats.twins[self.model_key] = check

    def _lookup(self, request: GenerationRequest, key: str) -> Generation | TooLong | None:
        twin = self.twin
        return self.cache.get(key, None if twin is None else request_key(twin, request))

    def _check_twins(self, request: GenerationRequest, made: Generation | TooLong) -> None:
        """Compare a generation computed afresh with each candidate's row for the same request, if it has one."""
        if not self._candidates:
            return
        with self._checking:
            for candidate in self._candidates:
                theirs = self.cache.peek(request_key(candidate, request))
                if theirs is None or (isinstance(theirs, TooLong) and isinstance(made, TooLong)):
                    continue  # nothing to compare (a prompt that fits neither says nothing about the weights)
                same = isinstance(made, Generation) and isinstance(theirs, Generation) and _same(made, theirs)
                tokens = made.new_tokens if same and isinstance(made, Generation) else 0
                self.cache.add_twin_counts(self.model_key, candidate, int(same), tokens, int(not same))
                matched, counted, differed = self._counts.get(candidate, (0, 0, 0))
                self._counts[candidate] = (matched + same, counted + tokens, differed + (not same))
            self._settle()

    def _store(self, request: GenerationRequest, key: str, made: Generation | TooLong, seconds: float) -> None:
        self.cache.put(key, made, seconds)
        self._check_twins(request, made)

    def generate(self, request: GenerationRequest) -> Generation:
        key = self._key(request)
        hit = self._lookup(request, key)
        if isinstance(hit, TooLong):
            raise hit
        if hit is not None:
            return hit
        started = self.cache.clock()
        try:
            g = self.inner.generate(request)
        except TooLong as e:
            self._store(request, key, e, self.cache.charge(started))
            raise
        self._store(request, key, g, self.cache.charge(started))
        return g

    def generate_batch(self, requests: Sequence[GenerationRequest], batch_size: int = 8) -> list[Generation]:
        keys = [self._key(r) for r in requests]
        out: list[Generation | None] = [self._lookup(r, k) for r, k in zip(requests, keys)]
        todo = [i for i, g in enumerate(out) if g is None]
        while todo:  # one batch at a time, so each is stored as soon as it is done
            chunk, todo = todo[:batch_size], todo[batch_size:]
            started = self.cache.clock()
            made = self.inner.generate_batch([requests[i] for i in chunk], batch_size=batch_size)
            share = self.cache.charge(started) / max(1, len(chunk))
            twin = self.twin
            for i, g in zip(chunk, made):
                self._store(requests[i], keys[i], g, share)
                out[i] = g
            if self.twin is not None and self.twin != twin:  # a twin check passed in this batch: the rest may be its
                for i in todo:
                    out[i] = self._lookup(requests[i], keys[i])
                todo = [i for i in todo if out[i] is None]
        return out  # type: ignore[return-value]

    def generate_many(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_rows: int | None = None,
        done: Callable[[int, Generation | Exception | None], None] | None = None,
    ) -> list[Generation | Exception | None]:
        """TransformersBackend.generate_many from the cache where it can: the rest decoded by the wrapped backend
        (continuous batching, in order), each stored as it finishes, so a run stopped half way keeps what it made.
        A prompt that does not fit gets its TooLong as result (and is stored as such)."""
        keys = [self._key(r) for r in requests]
        out: list[Generation | Exception | None] = [None] * len(requests)
        todo = []
        for i, (request, key) in enumerate(zip(requests, keys)):
            hit = self._lookup(request, key)
            if hit is None:
                todo.append(i)
                continue
            out[i] = hit
            if done is not None:
                done(i, hit)
        if not todo:
            return out

        started = self.cache.clock()

        def finished(j: int, made: Generation | Exception | None) -> None:
            i = todo[j]
            if isinstance(made, (Generation, TooLong)):  # not made.seconds: a row's lifetime overlaps the others'
                self._store(requests[i], keys[i], made, self.cache.charge(started))
            out[i] = made
            if done is not None:
                done(i, made)

        self.inner.generate_many([requests[i] for i in todo], max_rows=max_rows, done=finished)
        return out


def cached_backends(
    backends: Mapping[str, ModelBackend], roles: Mapping[str, str], cache: GenerationCache, dtype: str
) -> dict[str, CachedBackend]:
    """{role: CachedBackend} over loaded backends; roles: role -> checkpoint directory. One wrapper per distinct
    backend, so roles sharing a model share its key (and its KV caches, as before)."""
    from umi.vocabulary import content_digest, training_recipe

    def cached(backend: ModelBackend, played: list[str]) -> CachedBackend:
        directory = roles[played[0]]
        return CachedBackend(
            backend, cache, model_key(content_digest(directory), backend, dtype), training_recipe(directory)
        )

    return per_backend(backends, cached)
