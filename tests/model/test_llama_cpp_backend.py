"""The llama.cpp backend on a tiny random Llama converted to an f32 GGUF: the transformers backend's greedy outputs
token for token, stop strings and EOS cut the same way, an episode's next step evaluating only its new tokens (by
llama.cpp's own counters), and a GGUF refused for a checkpoint it was not converted from."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make setup` builds it)")

from tests.support.episodes import history, planner_request  # noqa: E402
from tests.support.tiny import lively  # noqa: E402
from umi.inference.gguf_export import (  # noqa: E402
    FINGERPRINT_KEY,
    GgufMismatch,
    export_gguf,
    gguf_cache_path,
    recorded_fingerprint,
)
from umi.inference.llama_cpp_backend import LlamaCppBackend  # noqa: E402
from umi.inference.loading import load_checkpoint  # noqa: E402
from umi.inference.protocol import GenerationRequest  # noqa: E402
from umi.inference.sharing import shared_backends  # noqa: E402
from umi.inference.transformers_backend import TransformersBackend  # noqa: E402
from umi.prompts import summarizer_prompt  # noqa: E402
from umi.vocabulary import STAGE_MANIFEST, checkpoint_fingerprint  # noqa: E402

pytestmark = pytest.mark.slow  # a GGUF conversion (a subprocess importing torch) and two engines


def requests() -> list[GenerationRequest]:
    """Several prompts: an episode's growing planner prompts, a summarizer prompt, one decoding past EOS."""
    out = [planner_request(k, max_new_tokens=24) for k in range(4)]
    out.append(GenerationRequest(prompt=summarizer_prompt(history(2)), max_new_tokens=24))
    out.append(planner_request(1, max_new_tokens=40, ignore_eos=True))
    return out


@pytest.fixture(scope="module")
def checkpoint(tiny_backbone, tmp_path_factory):
    """The tiny backbone with lively float32 weights, saved as a checkpoint directory."""
    import torch

    model, tokenizer = load_checkpoint(tiny_backbone)
    out = tmp_path_factory.mktemp("lively")
    lively(model).to(torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def gguf_file(checkpoint, gguf_dir):
    return export_gguf(checkpoint, "f32", gguf_dir)


@pytest.fixture(scope="module")
def transformers_backend(checkpoint):
    model, tokenizer = load_checkpoint(checkpoint)
    return TransformersBackend(model.eval(), tokenizer, reuse_cache=False)


def llama(checkpoint, gguf_file, **options) -> LlamaCppBackend:
    return LlamaCppBackend.from_checkpoint(checkpoint, gguf_file=gguf_file, threads=1, **options)


def evaluated(backend: LlamaCppBackend) -> tuple[int, int]:
    """llama.cpp's counters since their last reset: (prompt tokens evaluated in batches, single tokens evaluated)."""
    perf = llama_cpp.llama_perf_context(backend.model.ctx)
    return perf.n_p_eval, perf.n_eval


def test_greedy_outputs_equal_the_transformers_backends(checkpoint, gguf_file, transformers_backend):
    backend = llama(checkpoint, gguf_file, reuse_cache=False)
    for request in requests():
        want = transformers_backend.generate(request)
        got = backend.generate(request)
        assert got.token_ids == want.token_ids, request.prompt[-60:]
        assert (got.text, got.stop_reason, got.prompt_tokens) == (want.text, want.stop_reason, want.prompt_tokens)
    distinct = {t for r in requests() for t in transformers_backend.generate(r).token_ids}
    assert len(distinct) > 10  # the outputs vary: agreement is not a repeated token's


def test_the_episodes_prompts_with_prefix_reuse_give_the_same_tokens(checkpoint, gguf_file, transformers_backend):
    backend = llama(checkpoint, gguf_file)
    made = backend.generate_many(requests())
    assert [g.token_ids for g in made] == [transformers_backend.generate(r).token_ids for r in requests()]
    assert sum(g.reused_tokens for g in made) > 0


def test_the_next_step_of_an_episode_evaluates_only_its_new_tokens(checkpoint, gguf_file):
    backend = llama(checkpoint, gguf_file)
    first_ids, _ = backend.prompt_ids(planner_request(1))
    first = backend.generate(planner_request(1, max_new_tokens=8, ignore_eos=True))
    llama_cpp.llama_perf_context_reset(backend.model.ctx)
    ids, _ = backend.prompt_ids(planner_request(2))
    second = backend.generate(planner_request(2, max_new_tokens=8, ignore_eos=True))
    # the cache held the first prompt and its output (but the last token, never fed back); the second prompt shares
    # the tool docs and the first history with it, and differs from where the history gained turns
    held = first_ids + list(first.token_ids[:-1])
    shared = next(i for i, (a, b) in enumerate(zip(held, ids)) if a != b)
    assert second.reused_tokens == shared > len(first_ids) // 2
    assert second.prefill_tokens == len(ids) - shared > 1
    assert evaluated(backend) == (second.prefill_tokens, second.new_tokens - 1)  # llama.cpp's own count

    backend.reset()  # a new episode: nothing kept
    llama_cpp.llama_perf_context_reset(backend.model.ctx)
    again = backend.generate(planner_request(2, max_new_tokens=8, ignore_eos=True))
    assert again.reused_tokens == 0 and evaluated(backend) == (len(ids), again.new_tokens - 1)
    assert again.token_ids == second.token_ids


def test_stop_strings_and_eos_cut_the_output_as_the_transformers_backend_does(
    checkpoint, gguf_file, transformers_backend
):
    backend = llama(checkpoint, gguf_file, reuse_cache=False)
    tokenizer = backend.tokenizer
    free = backend.generate(planner_request(1, max_new_tokens=30, ignore_eos=True))
    written = list(free.token_ids)
    written = written[: next((i for i, t in enumerate(written) if t in backend.eos_ids), len(written))]
    text = tokenizer.decode(written)  # what it writes before the model's own EOS
    assert len(written) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # a piece of what it writes, past its start
    cut = planner_request(1, max_new_tokens=30, stop_strings=(stop,))
    got, want = backend.generate(cut), transformers_backend.generate(cut)
    assert got.stop_reason == "stop_string" and got.text == text[: text.index(stop)]
    assert (got.token_ids, got.text) == (want.token_ids, want.text)

    # an EOS token: one the model writes, first at position i > 2
    i = next(i for i, t in enumerate(written) if i > 2 and t not in written[:i])
    model_eos = transformers_backend.eos_ids
    backend.eos_ids = transformers_backend.eos_ids = frozenset({free.token_ids[i]})
    try:
        request = planner_request(1, max_new_tokens=30, stop_strings=())
        got, want = backend.generate(request), transformers_backend.generate(request)
    finally:
        transformers_backend.eos_ids = model_eos
    assert got.stop_reason == "eos" and list(got.token_ids) == written[: i + 1]
    assert got.text == tokenizer.decode(written[:i])  # the EOS is not part of the text
    assert (got.token_ids, got.text) == (want.token_ids, want.text)


def test_sampling_is_reproducible_by_seed(checkpoint, gguf_file):
    backend = llama(checkpoint, gguf_file)
    a = backend.generate(planner_request(1, max_new_tokens=16, temperature=1.0, seed=3, ignore_eos=True))
    b = backend.generate(planner_request(1, max_new_tokens=16, temperature=1.0, seed=3, ignore_eos=True))
    c = backend.generate(planner_request(1, max_new_tokens=16, temperature=1.0, seed=4, ignore_eos=True))
    greedy = backend.generate(planner_request(1, max_new_tokens=16, ignore_eos=True))
    assert a.token_ids == b.token_ids
    assert a.token_ids != greedy.token_ids and a.token_ids != c.token_ids


def test_the_gguf_is_cached_by_the_checkpoints_fingerprint_and_refused_for_another(checkpoint, gguf_file, gguf_dir):
    assert gguf_file == gguf_cache_path(checkpoint, "f32", gguf_dir)
    assert recorded_fingerprint(gguf_file) == checkpoint_fingerprint(checkpoint)
    mtime = gguf_file.stat().st_mtime_ns
    assert export_gguf(checkpoint, "f32", gguf_dir) == gguf_file and gguf_file.stat().st_mtime_ns == mtime

    other = gguf_dir.parent / "other-checkpoint"
    shutil.copytree(checkpoint, other)
    (other / STAGE_MANIFEST).write_text('{"fingerprint": "another-stage"}')
    assert checkpoint_fingerprint(other) == "another-stage"
    with pytest.raises(GgufMismatch, match="another-stage"):
        LlamaCppBackend.from_checkpoint(other, gguf_file=gguf_file)

    # a GGUF put at the other checkpoint's cache place (copied by hand) is not taken for it: converted anew
    planted = gguf_cache_path(other, "f32", gguf_dir)
    planted.parent.mkdir(parents=True)
    shutil.copyfile(gguf_file, planted)
    assert export_gguf(other, "f32", gguf_dir) == planted
    assert recorded_fingerprint(planted) == "another-stage"
    assert FINGERPRINT_KEY.startswith("umi.")


def test_it_is_a_model_backend_that_decodes_one_sequence_at_a_time(checkpoint, gguf_file):
    backend = llama(checkpoint, gguf_file)
    shared = shared_backends({"planner": backend, "caller": backend}, max_batch=8)
    assert shared["planner"].batcher is None and shared["planner"].lock is shared["caller"].lock
    request = planner_request(1, max_new_tokens=12)
    assert shared["planner"].generate(request).token_ids == backend.generate(request).token_ids
    assert [g.token_ids for g in backend.generate_batch([request, request])] == [
        backend.generate(request).token_ids
    ] * 2
    smaller = backend.with_context(300)  # not a multiple of 256: llama.cpp pads its own context, not the budget
    assert smaller.context_length == 300 and smaller.generate(request).token_ids == backend.generate(request).token_ids
    filling = planner_request(6, max_new_tokens=12)  # a prompt longer than the context: history dropped to fit it
    prompt_tokens, _ = smaller.prompt_ids(filling)
    assert 200 < len(prompt_tokens) <= 300 - 12
    assert smaller.generate(filling).prompt_tokens == len(prompt_tokens)


@pytest.mark.parametrize("gguf_type", ["bf16", "q8_0"])
def test_smaller_gguf_types_convert_load_and_generate(checkpoint, gguf_file, gguf_dir, gguf_type):
    smaller = export_gguf(checkpoint, gguf_type, gguf_dir)
    assert smaller == gguf_cache_path(checkpoint, gguf_type, gguf_dir) != gguf_file
    assert recorded_fingerprint(smaller) == checkpoint_fingerprint(checkpoint)
    assert smaller.stat().st_size < gguf_file.stat().st_size
    backend = LlamaCppBackend.from_checkpoint(checkpoint, gguf_type, gguf_dir=gguf_dir, threads=1)
    assert (backend.gguf_type, backend.engine) == (gguf_type, f"llama.cpp/{gguf_type}")
    g = backend.generate(planner_request(1, max_new_tokens=6, ignore_eos=True))
    assert g.new_tokens == 6 and g.stop_reason == "max_new_tokens"


def test_static_evaluation_on_llama_cpp_writes_transformers_texts_under_keys_of_its_own(
    checkpoint, gguf_file, data_dir, tmp_path, monkeypatch
):
    """`umi eval --engine llama.cpp --gguf-type f32`: the checkpoint's GGUF from the fingerprint-keyed cache (not
    converted again), the same static records as transformers float32 (the tiny model's identical greedy tokens), and
    the generation cache keeps the two engines' rows apart: neither run is answered by the other's."""
    from umi.agent.loop import build_agent
    from umi.eval.run import EvalRun, evaluate
    from umi.eval.settings import EvalSettings
    from umi.inference import gguf_export
    from umi.inference.agent_specs import AgentSpec

    monkeypatch.setattr(gguf_export, "umi_cache", lambda: tmp_path / "umi-cache")  # the default GGUF cache, here
    cached = gguf_export.gguf_cache_path(checkpoint, "f32")
    cached.parent.mkdir(parents=True)
    shutil.copyfile(gguf_file, cached)

    def no_conversion():
        raise AssertionError("the cached GGUF was converted again")

    monkeypatch.setattr(gguf_export, "converter_dir", no_conversion)
    settings = EvalSettings(
        max_new_tokens={"planner": 12, "caller": 12, "summarizer": 12, "global": 12},
        batch_size=4,
        max_prompt_tokens=1536,
        dtype="float32",
    )
    common = EvalRun(
        out_dir=tmp_path / "transformers",
        settings=settings,
        data_dir=data_dir / "data",
        params=data_dir / "params.yaml",
        static=True,
        live=False,
        toolbench_ood=None,
        tracking=False,
        progress=False,
        baselines=False,
        build_agent=build_agent,
        cache=tmp_path / "gen.sqlite",
    )
    agents = [AgentSpec.multi("alpha-umi", checkpoint, checkpoint, checkpoint)]
    on_llama_cpp = dataclasses.replace(common, settings=settings.with_(engine="llama.cpp"))
    on_transformers = evaluate(agents, common)
    on_llama = evaluate(agents, dataclasses.replace(on_llama_cpp, out_dir=tmp_path / "llama"))
    assert on_llama.settings["engine"] == "llama.cpp" and on_llama.settings["gguf_type"] == "f32"
    assert on_llama.settings["resolved_dtype"] is None  # dtype does not apply to llama.cpp

    made = on_transformers.settings["generation_cache"]
    assert made["misses"] > 0
    assert on_llama.settings["generation_cache"]["hits"] == 0  # no transformers row answered llama.cpp
    assert on_llama.settings["generation_cache"]["misses"] == made["misses"]

    def generated(report_dir):
        records = [json.loads(x) for x in (report_dir / "details" / "static-alpha-umi-bfcl-test.jsonl").open()]
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]

    ran = generated(tmp_path / "transformers")
    assert ran == generated(tmp_path / "llama")
    outputs = {json.dumps(r["outputs"], sort_keys=True) for r in ran}
    assert len(outputs) > 2  # the predictions vary: agreement is not one repeated text

    again = evaluate(agents, dataclasses.replace(on_llama_cpp, out_dir=tmp_path / "again"))
    assert again.settings["generation_cache"]["misses"] == 0  # llama.cpp's own rows answer it
    assert again.settings["generation_cache"]["hits"] == made["misses"] + made["hits"]
