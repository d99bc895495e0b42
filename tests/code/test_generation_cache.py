"""The generation cache: keys, persistence across processes' instances, batches stored one by one."""

from __future__ import annotations

import pytest

from umi.eval.generation_cache import CachedBackend, GenerationCache, model_key, request_key
from umi.inference.protocol import Generation, GenerationRequest
from umi.inference.tokens import TooLong


def _generation(text: str) -> Generation:
    return Generation(
        text=text,
        token_ids=(1, 2),
        stop_reason="eos",
        prompt_tokens=3,
        prefill_tokens=3,
        reused_tokens=0,
        new_tokens=2,
        dropped_turns=0,
        prefill_seconds=0.1,
        seconds=0.2,
    )


class Echo:
    """Writes the prompt back; counts what it was asked; fails on the prompt 'boom'."""

    def __init__(self):
        self.asked: list[str] = []
        self.context_length = 64

    def generate(self, request):
        self.asked.append(request.prompt)
        if request.prompt == "long":
            raise TooLong("r1", 99, 64)
        return _generation(request.prompt.upper())

    def generate_batch(self, requests, batch_size=8):
        if any(r.prompt == "boom" for r in requests):
            raise RuntimeError("killed")
        self.asked.extend(r.prompt for r in requests)
        return [_generation(r.prompt.upper()) for r in requests]


def test_keys_depend_on_inputs_not_labels():
    a = GenerationRequest(prompt="p", record_id="x")
    assert request_key("m", a) == request_key("m", GenerationRequest(prompt="p", record_id="y"))
    assert request_key("m", a) != request_key("m2", a)
    for change in (
        dict(prompt="q"),
        dict(max_new_tokens=7),
        dict(temperature=0.7),
        dict(seed=3),
        dict(history_span=(0, 1)),
        dict(stop_strings=("x",)),
    ):
        assert request_key("m", a) != request_key("m", GenerationRequest(**{"prompt": "p", **change})), change


def test_the_model_key_names_the_engine_unless_it_is_transformers():
    """A transformers key is the one made before engines existed (docs/results/full-eval's cache keeps answering);
    another engine's label takes the dtype's place, whatever dtype the caller names, so its rows answer neither
    transformers nor another GGUF type."""
    from types import SimpleNamespace

    def backend(engine: str):
        return SimpleNamespace(engine=engine, adapter=None, context_length=4096)

    assert model_key("sha256:abc", backend("transformers"), "float32") == '["sha256:abc", null, "float32", 4096]'
    f32 = model_key("sha256:abc", backend("llama.cpp/f32"), "float32")
    assert f32 == '["sha256:abc", null, "llama.cpp/f32", 4096]'
    assert f32 == model_key("sha256:abc", backend("llama.cpp/f32"), "bfloat16")
    keys = {f32, model_key("sha256:abc", backend("llama.cpp/q8_0"), "float32")}
    keys |= {model_key("sha256:abc", backend("transformers"), d) for d in ("float32", "bfloat16")}
    assert len(keys) == 4


def test_cached_generations_survive_the_process_and_a_failed_batch(tmp_path):
    path = tmp_path / "c.sqlite"
    inner = Echo()
    backend = CachedBackend(inner, GenerationCache(path), "model-a")
    requests = [GenerationRequest(prompt=p) for p in ("a", "b", "c", "boom")]
    with pytest.raises(RuntimeError):
        backend.generate_batch(requests, batch_size=2)  # the first batch is stored before the second fails
    assert inner.asked == ["a", "b"]

    resumed_inner = Echo()
    resumed = CachedBackend(resumed_inner, GenerationCache(path), "model-a")  # a new process over the same file
    out = resumed.generate_batch(requests[:3], batch_size=2)
    assert [g.text for g in out] == ["A", "B", "C"] and resumed_inner.asked == ["c"]
    assert resumed.cache.stats.hits == 2 and resumed.cache.stats.misses == 1
    assert resumed.generate(GenerationRequest(prompt="c")).text == "C" and resumed_inner.asked == ["c"]
    other_model = CachedBackend(Echo(), GenerationCache(path), "model-b")
    other_model.generate(GenerationRequest(prompt="a"))
    assert other_model.inner.asked == ["a"]  # another checkpoint never reads model-a's texts
    assert resumed.context_length == 64  # everything else is the wrapped backend's


def test_a_prompt_that_does_not_fit_is_remembered_too(tmp_path):
    first = CachedBackend(Echo(), GenerationCache(tmp_path / "c.sqlite"), "m")
    with pytest.raises(TooLong):
        first.generate(GenerationRequest(prompt="long"))
    again = CachedBackend(Echo(), GenerationCache(tmp_path / "c.sqlite"), "m")
    with pytest.raises(TooLong, match="needs 99 tokens"):
        again.generate(GenerationRequest(prompt="long"))
    assert again.inner.asked == [] and again.cache.stats.hits == 1


def test_the_cache_key_of_a_checkpoint_is_its_bytes(tmp_path):
    """A retrain to the same bytes (another folder, another machine, other timestamps and stage manifest) keys the same
    generations; a changed weight, config or tokenizer file does not; the run's own records do not count."""
    import json
    import os
    from pathlib import Path

    from umi.vocabulary import STAGE_MANIFEST, content_digest

    def checkpoint(name: str, weights: bytes) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(weights)
        (d / "config.json").write_text('{"n_layer": 2}')
        (d / "tokenizer.json").write_text("{}")
        (d / STAGE_MANIFEST).write_text(json.dumps({"fingerprint": name, "metrics": {"train_runtime": len(name)}}))
        (d / "training_args.bin").write_bytes(name.encode())
        return d

    a, b = checkpoint("a", b"\x01\x02"), checkpoint("run-b", b"\x01\x02")
    os.utime(b / "model.safetensors", (1, 1))
    assert content_digest(a) == content_digest(b)
    assert content_digest(a) != content_digest(checkpoint("c", b"\x01\x03"))
    (b / "tokenizer.json").write_text('{"added": 1}')
    assert content_digest(a) != content_digest(b)
    assert content_digest(tmp_path / "HuggingFaceTB/SmolLM2") == f"ref:{tmp_path / 'HuggingFaceTB/SmolLM2'}"


def test_the_cache_key_of_a_lora_adapter_covers_its_base(tmp_path):
    """The same adapter bytes over a retrained base generate other text: another key. So do another rank or scale."""
    import json

    from umi.vocabulary import content_digest

    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"\x01")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\x02")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 8}))
    before = content_digest(adapter)
    (base / "model.safetensors").write_bytes(b"\x03")
    after_base = content_digest(adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 16}))
    assert len({before, after_base, content_digest(adapter)}) == 3
    (adapter / "adapter_config.json").write_text("{not json")  # a damaged config keys as its bytes, never crashes
    assert content_digest(adapter) not in {before, after_base}


class Lower(Echo):
    """Another model: writes the prompt back in lower case."""

    def generate_batch(self, requests, batch_size=8):
        self.asked.extend(r.prompt for r in requests)
        return [_generation(r.prompt.lower()) for r in requests]


def test_other_bytes_are_answered_from_a_twin_only_after_writing_the_same_and_never_after_one_difference(tmp_path):
    """A retrain on another machine kind (other bytes, same recipe, same outputs) resumes from the first checkpoint's
    rows once `twin_checks` fresh generations (and `twin_tokens` tokens) equal them; a checkpoint that writes one
    thing differently never does; a checkpoint of another recipe (a model trained on from it, another role) or
    another dtype is no candidate, whatever it writes."""
    import json

    def key(digest: str, dtype: str = "float32") -> str:
        return json.dumps([digest, None, dtype, 64])

    path = tmp_path / "c.sqlite"
    requests = [GenerationRequest(prompt=p) for p in "abcdefghij"]

    def backend(inner, digest, recipe="recipe-1", dtype="float32", checks=3, tokens=4):
        return CachedBackend(
            inner, GenerationCache(path), key(digest, dtype), recipe, twin_checks=checks, twin_tokens=tokens
        )

    first = backend(Echo(), "bytes-1")
    first.generate_batch(requests, batch_size=2)
    assert first.twin is None and first.inner.asked == list("abcdefghij")

    retrain = backend(Echo(), "bytes-2")
    out = retrain.generate_batch(requests, batch_size=2)
    assert [g.text for g in out] == list("ABCDEFGHIJ")
    assert retrain.inner.asked == list("abcd")  # two batches computed (3 identical settle it), then the twin answers
    assert retrain.twin == key("bytes-1")
    assert (retrain.cache.stats.twin_hits, retrain.cache.stats.misses) == (6, 4)
    check = retrain.cache.stats.to_dict()["twins"][key("bytes-2")]
    assert check == {"twin": key("bytes-1"), "matched": 3, "tokens": 6, "differed": 0}

    again = backend(Echo(), "bytes-2")  # a new process: no recheck
    assert again.twin == key("bytes-1")
    assert [g.text for g in again.generate_batch(requests, batch_size=2)] == list("ABCDEFGHIJ")
    assert again.inner.asked == [] and again.cache.stats.twin_hits == 6 and again.generate(requests[9]).text == "J"

    few_tokens = backend(Echo(), "bytes-4", tokens=100)  # 3 identical generations but too few tokens: no twin yet
    few_tokens.generate_batch(requests[:4], batch_size=2)
    assert few_tokens.twin is None and few_tokens.inner.asked == list("abcd")

    other = backend(Lower(), "bytes-3")
    assert [g.text for g in other.generate_batch(requests, batch_size=2)] == list("abcdefghij")
    assert other.twin is None and other.inner.asked == list("abcdefghij") and other.cache.stats.twin_hits == 0
    counts = other.cache.twin_counts(key("bytes-3"))
    assert {k: v[2] for k, v in counts.items()} == {key("bytes-1"): 1, key("bytes-2"): 1, key("bytes-4"): 1}
    assert backend(Echo(), "bytes-3").twin is None  # refused for good

    for not_a_candidate in (backend(Echo(), "bytes-5", recipe="recipe-2"), backend(Echo(), "bytes-6", recipe=None)):
        not_a_candidate.generate_batch(requests, batch_size=5)
        assert not_a_candidate.twin is None and not_a_candidate.inner.asked == list("abcdefghij")
    bf16 = backend(Echo(), "bytes-1", dtype="bfloat16", checks=1, tokens=0)
    bf16.generate_batch(requests, batch_size=5)
    assert bf16.twin is None and bf16.inner.asked == list("abcdefghij")


def test_a_prompt_that_fits_one_twin_and_not_the_other_is_a_difference(tmp_path):
    import json

    key = json.dumps(["bytes-1", None, "float32", 64])
    first = CachedBackend(Echo(), GenerationCache(tmp_path / "c.sqlite"), key, "r", twin_checks=1, twin_tokens=0)
    with pytest.raises(TooLong):
        first.generate(GenerationRequest(prompt="long"))
    other = key.replace("bytes-1", "bytes-2")
    fits = CachedBackend(Echo(), GenerationCache(tmp_path / "c.sqlite"), other, "r", twin_checks=1, twin_tokens=0)
    fits.inner.generate = lambda request: _generation("fits")  # this one fits it: not the same model after all
    assert fits.generate(GenerationRequest(prompt="long")).text == "fits"
    assert fits.twin is None and fits.cache.twin_counts(other) == {key: (0, 0, 1)}


def test_the_report_says_how_much_the_cache_and_a_twin_answered():
    from umi.eval.report import table_markdown

    agents = {"a": {"static": {"bfcl-test": {"steps": 3, "plan_acc": 100.0}}, "live": None}}
    twins = {"k2": {"twin": "k1", "matched": 64, "tokens": 5000, "differed": 0}}
    text = table_markdown(agents, {}, {"hits": 10, "misses": 70, "twin_hits": 6, "twins": twins})
    assert (
        "- generation cache: 10 generations answered from it, 70 computed; 6 of the answers were made by twin" in text
    )
    assert "64 identical of 64 (5000 tokens)" in text
    assert "generation cache" not in table_markdown(agents, {}, {"hits": 0, "misses": 5})


class EchoInOrder(Echo):
    """Echo with continuous batching's interface: finishes requests in order, calling `done` for each; the prompt
    'long' does not fit (its TooLong is its result), 'boom' kills the process."""

    def generate_many(self, requests, *, max_rows=None, done=None):
        out = []
        for i, r in enumerate(requests):
            if r.prompt == "boom":
                raise RuntimeError("killed")
            self.asked.append(r.prompt)
            made = TooLong("r", 99, 64) if r.prompt == "long" else _generation(r.prompt.upper())
            out.append(made)
            done(i, made)
        return out


def test_generate_many_stores_each_generation_as_it_finishes_and_answers_hits_first(tmp_path):
    path = tmp_path / "c.sqlite"
    inner = EchoInOrder()
    backend = CachedBackend(inner, GenerationCache(path), "model-a")
    requests = [GenerationRequest(prompt=p) for p in ("a", "long", "b", "boom", "c")]
    with pytest.raises(RuntimeError):
        backend.generate_many(requests, max_rows=2)  # killed half way: what finished is kept
    assert inner.asked == ["a", "long", "b"]

    resumed_inner = EchoInOrder()
    resumed = CachedBackend(resumed_inner, GenerationCache(path), "model-a")
    finished: list[int] = []
    out = resumed.generate_many([requests[i] for i in (0, 1, 2, 4)], max_rows=2, done=lambda i, g: finished.append(i))
    assert resumed_inner.asked == ["c"]  # only what the killed run did not finish
    assert [g.text for g in (out[0], out[2], out[3])] == ["A", "B", "C"] and isinstance(out[1], TooLong)
    assert sorted(finished) == [0, 1, 2, 3]
    assert resumed.cache.stats.hits == 3 and resumed.cache.stats.misses == 1


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_overlapping_generations_share_their_wall_time_in_the_stored_cost(tmp_path):
    clock = Clock()
    cache = GenerationCache(tmp_path / "c.sqlite", clock=clock)

    class Overlapping(EchoInOrder):
        """Continuous batching: every row lives from the call's start, one finishing every 2 s; each reports its
        whole lifetime as its seconds (2, 4, 6), which summed would say 12 s for 6 s of work."""

        def generate_many(self, requests, *, max_rows=None, done=None):
            out = []
            for i, r in enumerate(requests):
                clock.now += 2.0
                made = _generation(r.prompt.upper())
                made = Generation(**{**made.__dict__, "seconds": 2.0 * (i + 1)})
                out.append(made)
                done(i, made)
            return out

    backend = CachedBackend(Overlapping(), cache, "model-a")
    backend.generate_many([GenerationRequest(prompt=p) for p in ("a", "b", "c")])
    assert cache.stats.cost_seconds == pytest.approx(6.0)

    # two live rollouts at once: both start at t, one is done at t+3, the other at t+4: 4 s of wall time, not 7
    start = clock.now
    clock.now = start + 3.0
    first = cache.charge(start)
    clock.now = start + 4.0
    second = cache.charge(start)
    assert (first, second) == (pytest.approx(3.0), pytest.approx(1.0))
    clock.now += 10.0  # idle: nothing is charged for it
    assert cache.charge(clock.now - 0.5) == pytest.approx(0.5)
    rows = cache._db.execute("SELECT sum(cost_seconds) FROM generations").fetchone()[0]
    assert rows == pytest.approx(6.0)  # what was stored is what the stats say
