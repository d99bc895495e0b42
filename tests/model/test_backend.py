"""The transformers generation backend on a tiny random Llama: greedy decoding, stopping, prompt fitting, batching and
prefix KV-cache reuse (same tokens as recomputing, fewer tokens prefilled)."""

from __future__ import annotations

import pytest
import torch

from tests.support.episodes import DOC, history, planner_request
from tests.support.tiny import lively
from umi.inference.decoding import Decoder
from umi.inference.loading import load_checkpoint
from umi.inference.protocol import Generation, GenerationRequest
from umi.inference.tokens import TooLong, encode_prompt, fit_prompt
from umi.inference.transformers_backend import TransformersBackend
from umi.prompts import TURN_END, planner_prompt, summarizer_prompt


@pytest.fixture(scope="module")
def tiny(tiny_backbone):
    """A lively tiny model in float64: a prefill split in two chunks stays within rounding of one prefill, so argmax
    ties cannot flip."""
    model, tokenizer = load_checkpoint(tiny_backbone)
    return lively(model).to(torch.float64), tokenizer


def test_reuse_gives_the_same_tokens_as_recompute_and_prefills_fewer(tiny):
    model, tokenizer = tiny
    reuse = TransformersBackend(model, tokenizer, reuse_cache=True)
    recompute = TransformersBackend(model, tokenizer, reuse_cache=False)
    reused_total = 0
    previous = None
    for k in range(5):
        request = planner_request(k, max_new_tokens=24)
        a, b = reuse.generate(request), recompute.generate(request)
        assert a.token_ids == b.token_ids  # token for token
        assert a.text == b.text
        assert len(set(a.token_ids)) > 3  # the comparison is not between two runs of one repeated token
        assert b.prefill_tokens == b.prompt_tokens and b.reused_tokens == 0
        assert a.prefill_tokens + a.reused_tokens == a.prompt_tokens == b.prompt_tokens
        if previous is not None:  # the doc and the previous history are shared with the previous step's prompt
            shared = encode_prompt(tokenizer, previous.prompt[: previous.history_span[1]])
            assert a.reused_tokens >= len(shared) - 1  # (the last token may merge differently in the longer text)
            assert a.prefill_tokens < b.prefill_tokens
        reused_total += a.reused_tokens
        previous = request
    assert reuse.stats.prefill_tokens + reused_total == recompute.stats.prefill_tokens
    assert reuse.stats.prefill_tokens < recompute.stats.prefill_tokens / 2


def test_reuse_matches_recompute_when_the_prompt_shrinks_and_repeats(tiny):
    """A shorter prompt (a new episode), the same prompt twice (the cache holds more than the prompt) and a prompt
    that is a strict prefix of the cache: the slot is cropped, the last prompt token always runs."""
    model, tokenizer = tiny
    reuse = TransformersBackend(model, tokenizer, reuse_cache=True)
    recompute = TransformersBackend(model, tokenizer, reuse_cache=False)
    for k in (3, 1, 1, 2):
        request = planner_request(k, max_new_tokens=12)
        a, b = reuse.generate(request), recompute.generate(request)
        assert a.token_ids == b.token_ids
        assert a.prefill_tokens >= 1
    # the same prompt again: everything but its last token comes from the cache
    again = reuse.generate(planner_request(2, max_new_tokens=12))
    assert again.prefill_tokens == 1


def test_one_model_in_all_roles_keeps_a_cache_per_prompt_family(tiny):
    model, tokenizer = tiny
    backend = TransformersBackend(model, tokenizer, reuse_cache=True, max_cache_slots=3)
    summary = GenerationRequest(summarizer_prompt(history(2)), max_new_tokens=4)
    first = [backend.generate(planner_request(2, max_new_tokens=4)), backend.generate(summary)]
    assert first[1].reused_tokens <= 1  # shares nothing (maybe the special prefix) with the planner prompt
    second = [backend.generate(planner_request(3, max_new_tokens=4)), backend.generate(summary)]
    assert second[0].reused_tokens > second[0].prompt_tokens // 2  # the planner slot survived the summarizer call
    assert second[1].prefill_tokens == 1  # and the summarizer slot the planner call


def test_cache_slots_are_bounded_and_reset_clears_them(tiny):
    model, tokenizer = tiny
    backend = TransformersBackend(model, tokenizer, max_cache_slots=2, min_shared_tokens=4)
    for text in ("alpha beta gamma delta epsilon", "0123456789 0123456789", "Paris Rome Oslo Lima Kyiv"):
        backend.generate(GenerationRequest(prompt=text, max_new_tokens=2))
    assert len(backend.prefix_cache.slots) == 2
    backend.reset()
    g = backend.generate(GenerationRequest(prompt="Paris Rome Oslo Lima Kyiv", max_new_tokens=2))
    assert g.reused_tokens == 0


def test_batched_generation_matches_one_at_a_time(tiny):
    model, tokenizer = tiny
    backend = TransformersBackend(model, tokenizer, reuse_cache=False)
    requests = [planner_request(k, max_new_tokens=10 + 3 * k) for k in range(4)]  # different lengths: left padding
    batched = backend.generate_batch(requests, batch_size=4)
    assert len({g.prompt_tokens for g in batched}) == 4
    for request, g in zip(requests, batched):
        alone = backend.generate(request)
        assert g.token_ids == alone.token_ids
        assert g.text == alone.text
        assert g.new_tokens == request.max_new_tokens or g.stop_reason != "max_new_tokens"


def test_continuous_batching_in_trajectory_order_reuses_each_steps_prefix_and_matches_alone(tiny):
    """Static evaluation's path: a trajectory's steps through generate_many in order, a few rows at a time. Each
    step's prompt is prefilled from the cache of the step before it, and every output is the one it gets alone."""
    model, tokenizer = tiny
    backend = TransformersBackend(model, tokenizer, reuse_cache=True)
    recompute = TransformersBackend(model, tokenizer, reuse_cache=False)
    requests = [planner_request(k, max_new_tokens=6 + 4 * (k % 3)) for k in range(6)]
    finished = []
    got = backend.generate_many(requests, max_rows=2, done=lambda i, g: finished.append(i))
    assert sorted(finished) == list(range(6))
    for request, g in zip(requests, got):
        assert g.token_ids == recompute.generate(request).token_ids
    for previous, g in zip(requests, got[1:]):  # the docs and the history of the step before
        assert g.reused_tokens >= len(encode_prompt(tokenizer, previous.prompt[: previous.history_span[1]])) - 1
    assert backend.stats.prefill_tokens < recompute.stats.prefill_tokens / 2


def test_a_prompt_sharing_part_of_a_cache_copies_that_part_and_leaves_the_cache(tiny):
    """Another trajectory on the same docs shares only their prefix with a slot: it gets a copy of that prefix in a
    slot of its own, and the first trajectory's next step still finds its whole history cached."""
    model, tokenizer = tiny
    backend = TransformersBackend(model, tokenizer, reuse_cache=True, max_cache_slots=3)
    recompute = TransformersBackend(model, tokenizer, reuse_cache=False)
    other = GenerationRequest(planner_prompt(DOC, "user: Is it raining in Lima?" + TURN_END), max_new_tokens=5)
    first, second, again = planner_request(3, max_new_tokens=5), other, planner_request(4, max_new_tokens=5)
    outputs = [backend.generate(r) for r in (first, second, again)]
    assert [g.token_ids for g in outputs] == [recompute.generate(r).token_ids for r in (first, second, again)]
    assert outputs[1].reused_tokens >= len(encode_prompt(tokenizer, planner_prompt(DOC, ""))) // 2  # the docs
    shared = encode_prompt(tokenizer, first.prompt[: first.history_span[1]])
    assert outputs[2].reused_tokens >= len(shared) - 1  # not cropped to the docs by the other trajectory


def test_prompt_ids_are_trainings_and_history_is_dropped_from_the_left(tiny):
    model, tokenizer = tiny
    request = planner_request(6, max_new_tokens=16)
    full = encode_prompt(tokenizer, request.prompt)
    roomy = TransformersBackend(model, tokenizer, context_length=len(full) + 16)
    ids, dropped = roomy.prompt_ids(request)
    assert ids == full and dropped == 0
    tight = TransformersBackend(model, tokenizer, context_length=len(full) - 20 + 16)
    ids, dropped = tight.prompt_ids(request)
    assert dropped > 0 and len(ids) <= len(full) - 20
    assert (ids, dropped) == fit_prompt(tokenizer, request.prompt, request.history_span, len(full) - 20)
    g = tight.generate(request)
    assert g.dropped_turns == dropped and g.prompt_tokens == len(ids)
    # no history span: a prompt that does not fit is refused, naming the record
    with pytest.raises(TooLong, match="task-7"):
        tight.generate(GenerationRequest(prompt=request.prompt, max_new_tokens=16, record_id="task-7"))
    # even the history-less prompt does not fit
    with pytest.raises(TooLong):
        TransformersBackend(model, tokenizer, context_length=40).generate(planner_request(1, max_new_tokens=8))


def test_generation_stops_at_the_cap_and_ignore_eos_decodes_exactly_the_cap(tiny):
    model, tokenizer = tiny
    backend = TransformersBackend(model, tokenizer)
    g = backend.generate(planner_request(1, max_new_tokens=7))
    assert g.new_tokens <= 7 and isinstance(g, Generation)
    assert g.stop_reason in ("eos", "stop_string", "max_new_tokens")
    forced = backend.generate(planner_request(1, max_new_tokens=30, ignore_eos=True))
    assert forced.new_tokens == 30 and forced.stop_reason == "max_new_tokens"


def test_decoder_stops_at_eos_and_at_the_turn_end(tiny):
    _, tokenizer = tiny
    eos = tokenizer.eos_token_id
    d = Decoder(50, (TURN_END,), frozenset({eos}), window=8)
    body = tokenizer("I will call it.\n Next: caller.", add_special_tokens=False)["input_ids"]
    assert not any(d.push(t, tokenizer) for t in body)
    assert d.push(eos, tokenizer) and d.stop_reason == "eos"
    assert d.text(tokenizer) == "I will call it.\n Next: caller."

    d = Decoder(50, (TURN_END,), frozenset({eos}), window=8)
    ids = tokenizer(f"Action: get_weather{TURN_END}caller: more", add_special_tokens=False)["input_ids"]
    finished_at = next(i for i, t in enumerate(ids) if d.push(t, tokenizer))
    assert d.stop_reason == "stop_string" and finished_at < len(ids) - 1
    assert d.text(tokenizer) == "Action: get_weather"

    d = Decoder(3, (TURN_END,), frozenset({eos}), window=8)
    assert [d.push(t, tokenizer) for t in body[:3]] == [False, False, True] and d.stop_reason == "max_new_tokens"


def test_sampling_is_reproducible_by_seed(tiny):
    model, tokenizer = tiny
    backend = TransformersBackend(model, tokenizer, reuse_cache=False)
    a = backend.generate(planner_request(1, max_new_tokens=12, temperature=1.0, seed=3))
    b = backend.generate(planner_request(1, max_new_tokens=12, temperature=1.0, seed=3))
    greedy = backend.generate(planner_request(1, max_new_tokens=12))
    assert a.token_ids == b.token_ids
    assert a.token_ids != greedy.token_ids


def test_bad_requests_are_refused(tiny):
    model, tokenizer = tiny
    backend = TransformersBackend(model, tokenizer, context_length=64)
    with pytest.raises(ValueError, match="no room"):
        backend.generate(GenerationRequest(prompt="hi", max_new_tokens=64))
    with pytest.raises(ValueError, match="max_new_tokens"):
        backend.generate(GenerationRequest(prompt="hi", max_new_tokens=0))
    with pytest.raises(ValueError):
        TransformersBackend(model, tokenizer, max_cache_slots=0)


def test_reuse_is_off_for_sliding_window_caches(tiny, caplog):
    """A sliding-window layer past its window has dropped the tokens a crop would need: no reuse, and it says so."""
    from transformers import MistralConfig, MistralForCausalLM

    _, tokenizer = tiny
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=16,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = MistralForCausalLM(config)
    with caplog.at_level("WARNING", logger="umi.inference.transformers_backend"):
        backend = TransformersBackend(model, tokenizer, reuse_cache=True)
    assert backend.reuse_cache is False and "reuse is off" in caplog.text
    for k in (1, 2):
        g = backend.generate(planner_request(k, max_new_tokens=4))
        assert g.reused_tokens == 0 and g.prefill_tokens == g.prompt_tokens


def test_static_evaluation_in_trajectory_order_equals_the_padded_batches_and_prefills_less(tiny):
    """The whole static path on real BFCL trajectories (a multi-turn one included), one lively model in every role:
    continuous batching in trajectory order gives every step the prediction the padded path gives it."""
    import itertools

    from umi.data.bfcl import import_category
    from umi.eval.settings import EvalSettings
    from umi.eval.static import run_static

    model, tokenizer = tiny
    trajectories = [
        *itertools.islice(import_category("simple_python"), 2),
        *itertools.islice(import_category("multi_turn_base"), 1),
    ]
    settings = EvalSettings(batch_size=3, max_new_tokens={"planner": 12, "caller": 12, "summarizer": 12, "global": 12})
    # long enough for the multi-turn entry's prompts whole: a prompt that does not fit is not prompted (issue 25)
    in_order = TransformersBackend(model, tokenizer, context_length=8192)
    padded = TransformersBackend(model, tokenizer, context_length=8192)
    roles = ("planner", "caller", "summarizer")
    a = run_static({r: in_order for r in roles}, trajectories, settings=settings)
    b = run_static({r: padded for r in roles}, trajectories, settings=settings.with_(static_batching="padded"))
    assert a.metrics.steps > 8 and a.generations == b.generations
    assert [r["outputs"] for r in a.records] == [r["outputs"] for r in b.records]
    assert in_order.stats.reused_tokens > 0
    assert in_order.stats.prefill_tokens < padded.stats.prefill_tokens / 2


def test_the_generation_cache_keys_are_the_ones_made_before_the_inference_package(tiny):
    """umi.eval.generation_cache keys on the backend's adapter and context length and on every request field; the
    move into umi.inference (issue 26) kept every key, so existing caches still answer. The hex digests were computed
    on the code before the move."""
    from umi.eval.generation_cache import model_key, request_key
    from umi.inference.sharing import batched_backends

    model, tokenizer = tiny
    with_adapter = TransformersBackend(model, tokenizer, context_length=1024, adapter="planner")
    plain = TransformersBackend(model, tokenizer)
    assert model_key("sha256:abc", with_adapter, "float32") == '["sha256:abc", "planner", "float32", 1024]'
    assert model_key("sha256:abc", plain, "float32") == '["sha256:abc", null, "float32", 4096]'
    with batched_backends({"planner": with_adapter}, 4) as shared:  # live evaluation's wrapper keys as its backend
        assert model_key("sha256:abc", shared["planner"], "float32") == model_key("sha256:abc", with_adapter, "float32")
    request = GenerationRequest(
        prompt="user: hi</s>assistant:",
        history_span=(0, 14),
        max_new_tokens=7,
        stop_strings=("</s>", "x"),
        temperature=0.7,
        seed=3,
        record_id="r1",
        ignore_eos=True,
    )
    key = request_key(model_key("sha256:abc", with_adapter, "float32"), request)
    assert key == "2e65f0bd7a81817778dffc02602ef371db45860d92452c1e5dbd806fa629771e"
    key = request_key(model_key("sha256:abc", plain, "bfloat16"), GenerationRequest(prompt="p"))
    assert key == "c510923245752b43b28281716d0cf037b3edc3fc0103604cd9bedc3c0825fc69"
