"""The generation backend over llama.cpp (llama-cpp-python): a role checkpoint's GGUF decoded on the CPU.

`LlamaCppBackend.from_checkpoint(dir, gguf_type)` converts the checkpoint to GGUF once (umi.inference.gguf_export:
cached by its fingerprint, refused when the fingerprint does not match) and loads it with the checkpoint's own
tokenizer. It is a ModelBackend like `TransformersBackend`, and generates what that one does from the same inputs:

- prompts: the token ids training made (umi.inference.tokens, whole history turns dropped from the left to fit the
  context), passed to llama.cpp as ids: llama.cpp's own tokenizer is never used, and the output ids are decoded by the
  checkpoint's tokenizer, so stop strings and text are cut exactly as the transformers backend cuts them
  (umi.inference.decoding);
- precision: an f32 GGUF runs with an f32 KV cache, so that its logits are the transformers fp32 model's up to
  summation order (llama.cpp's default f16 cache moves them by about 1e-3, enough to flip close greedy choices);
  other GGUFs keep llama.cpp's f16 cache;
- next token: the argmax of llama.cpp's logits at temperature 0; above 0 a draw seeded by the request's seed
  (numpy's generator: reproducible by seed, not the draw torch's sampler makes);
- prefix reuse: llama.cpp's KV cache (one sequence) holds the last prompt and its output; a new prompt keeps the token
  prefix it shares with them (llama-cpp-python's `n_tokens`: `Llama.eval` drops the cache past it) and evaluates only
  the rest, so an episode's next step on a role model runs only its new tokens. One cache: a model that plays several
  roles keeps the prefix its alternating prompts share (their tool docs), not one cache per role as the transformers
  backend's slots do (max_cache_slots is 1).
- one sequence at a time: `generate_batch`, `generate_many` and `decode_together` run their requests one after another
  (`decodes_together` False: the service queues requests on the model's lock rather than batch them).

Not thread-safe on its own: a lock serialises concurrent calls (umi.inference.sharing shares it between threads).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from umi.inference.decoding import (
    decode_one_at_a_time,
    eos_ids,
    fit_request,
    generate_in_order,
    generation,
    next_token_numpy,
)
from umi.inference.gguf_export import check_gguf, export_gguf
from umi.inference.gguf_export import gguf_type as type_of_gguf
from umi.inference.prefix_cache import shared_prefix
from umi.inference.protocol import BackendStats, Finish, Generation, GenerationRequest, Take
from umi.inference.tokens import request_ids

__all__ = ["LlamaCppBackend"]


class LlamaCppBackend:
    """Generation with a llama.cpp model (see the module doc).

    gguf_file: the model; tokenizer: the Hugging Face tokenizer of the checkpoint it was converted from; eos: the
    tokens that end a generation (umi.inference.decoding.eos_ids). context_length: prompt + new tokens fit it
    (default: the GGUF's training context). reuse_cache: keep the shared token prefix of consecutive prompts (False:
    every prompt is evaluated whole). threads: CPU threads llama.cpp decodes with (default: every CPU this process may
    use). batch_tokens: prompt tokens evaluated per llama.cpp batch. gguf_type (f32, bf16, q8_0) and engine
    (`llama.cpp/<gguf_type>`, the protocol's) are read from the GGUF."""

    adapter = None  # LoRA roles are merged into their base before conversion
    max_cache_slots = 1
    decodes_together = False

    def __init__(
        self,
        gguf_file: str | Path,
        tokenizer,
        eos: frozenset[int],
        *,
        context_length: int | None = None,
        reuse_cache: bool = True,
        threads: int | None = None,
        batch_tokens: int = 512,
    ):
        import llama_cpp

        from umi.machine import cpu_count

        threads = threads or cpu_count()
        self.gguf_file = Path(gguf_file)
        self.gguf_type = type_of_gguf(gguf_file)
        self.engine = f"llama.cpp/{self.gguf_type}"  # the protocol's: a GGUF type is the weights' precision
        kv_type = llama_cpp.GGML_TYPE_F32 if self.gguf_type == "f32" else llama_cpp.GGML_TYPE_F16
        self.model = llama_cpp.Llama(
            model_path=str(gguf_file),
            n_ctx=int(context_length or 0),  # 0: the GGUF's training context
            n_batch=batch_tokens,
            n_threads=threads,
            n_threads_batch=threads,
            type_k=kv_type,
            type_v=kv_type,
            verbose=False,
        )
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos)
        self.reuse_cache = reuse_cache
        # llama.cpp pads its context up (to a multiple of 256): llama-cpp-python's token buffer keeps the size asked
        self.context_length = min(int(self.model.n_ctx()), len(self.model.input_ids))
        self.threads = threads
        self.stats = BackendStats()
        self._vocab = int(self.model.n_vocab())
        if len(tokenizer) > self._vocab:
            raise ValueError(f"{gguf_file} has {self._vocab} tokens, its tokenizer {len(tokenizer)}: not its model")
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        gguf_type: str = "f32",
        *,
        gguf_file: str | Path | None = None,
        gguf_dir: str | Path | None = None,
        **options: Any,
    ) -> "LlamaCppBackend":
        """The backend over a checkpoint directory: its GGUF of `gguf_type` from the cache in `gguf_dir` (converted
        when missing; umi.inference.gguf_export), or `gguf_file`, refused unless it records the checkpoint's
        fingerprint (GgufMismatch)."""
        from transformers import AutoTokenizer

        if gguf_file is None:
            gguf_file = export_gguf(checkpoint, gguf_type, gguf_dir)
        check_gguf(gguf_file, checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        return cls(gguf_file, tokenizer, eos_ids(_generation_config(checkpoint), tokenizer), **options)

    # --- the protocol -----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.model.reset()  # n_tokens 0: the next evaluation drops the whole cache

    def prompt_ids(self, request: GenerationRequest) -> tuple[list[int], int]:
        return request_ids(self.tokenizer, request, self.context_length)

    def generate(self, request: GenerationRequest) -> Generation:
        with self._lock:
            return self._generate(request)

    def generate_batch(self, requests: Sequence[GenerationRequest], batch_size: int = 8) -> list[Generation]:
        """The requests one after another, in order (every request validated before any runs)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        with self._lock:
            for r in requests:
                fit_request(self.tokenizer, r, self.context_length, self.eos_ids)
            return [self._generate(r) for r in requests]

    def generate_many(
        self, requests: Sequence[GenerationRequest], **options: Any
    ) -> list[Generation | Exception | None]:
        """The requests one after another, in order (`options`: max_rows, dropped, done, as the protocol's)."""
        return generate_in_order(self.decode_together, requests, **options)

    def decode_together(self, take: Take, finish: Finish, dropped: Callable[[Any], bool], *, max_rows: int = 8) -> None:
        with self._lock:
            decode_one_at_a_time(self._generate, take, finish, dropped)

    def with_context(self, context_length: int) -> "LlamaCppBackend":
        return LlamaCppBackend(
            self.gguf_file,
            self.tokenizer,
            self.eos_ids,
            context_length=context_length,
            reuse_cache=self.reuse_cache,
            threads=self.threads,
        )

    # --- decoding (the lock held) -----------------------------------------------------------------------------------
    def _generate(self, request: GenerationRequest) -> Generation:
        import numpy as np

        started = time.perf_counter()
        decoder, ids, dropped = fit_request(self.tokenizer, request, self.context_length, self.eos_ids)
        rng = np.random.default_rng(request.seed) if request.temperature > 0 else None
        reused = self._prefill(ids)
        prefill_seconds = time.perf_counter() - started
        token = next_token_numpy(self._last_logits(), request, rng)
        try:
            while not decoder.push(token, self.tokenizer):
                self.model.eval([token])
                token = next_token_numpy(self._last_logits(), request, rng)
        except BaseException:
            self.model.reset()  # the cache may hold part of an evaluation: start the next prompt afresh
            raise
        g = generation(
            decoder,
            self.tokenizer,
            prompt_tokens=len(ids),
            reused=reused,
            dropped_turns=dropped,
            started=started,
            prefill_seconds=prefill_seconds,
        )
        self.stats.add(g)
        return g

    def _prefill(self, ids: list[int]) -> int:
        """Evaluate the prompt from the longest prefix the cache holds; how many tokens were kept. The last prompt
        token always runs: its logits give the first new token."""
        keep = 0
        if self.reuse_cache:
            held = self.model.input_ids[: self.model.n_tokens].tolist()
            keep = min(shared_prefix(held, ids), len(ids) - 1)
        self.model.n_tokens = keep
        try:
            self.model.eval(ids[keep:])
        except BaseException:
            self.model.reset()
            raise
        return keep

    def _last_logits(self):
        """The logits after the last evaluated token (a copy: llama.cpp reuses the buffer)."""
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self.model.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._vocab,)).copy()


def _generation_config(checkpoint: str | Path):
    """The checkpoint's generation config (its EOS tokens), else the one its model config implies."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(checkpoint))
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(checkpoint)))
