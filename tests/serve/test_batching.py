"""Batched generation (TransformersBackend.generate_many) and the service's micro-batcher
(umi.inference.micro_batching).

Exactness is tested in float32: greedy batched outputs equal the outputs of each request alone. (In bfloat16 the
padded batch sums in another order and a near-tie can flip a greedy token, so exact equality is not promised there.)"""

from __future__ import annotations

import threading
import time

import pytest
from serve_helpers import OPENAI_WEATHER, make_settings, make_toolkits
from starlette.testclient import TestClient

from umi.inference.deadlines import Deadline, RequestTimeout
from umi.inference.loading import load_backends, load_checkpoint
from umi.inference.protocol import GenerationRequest
from umi.inference.sharing import shared_backends
from umi.serve.app import create_app
from umi.serve.engine import AgentEngine

PROMPTS = [
    "user: What is the weather in Paris?</s>assistant: ",
    "user: Weather?</s>assistant: ",
    "user: What is the weather in Rome today, and tomorrow, and the day after?</s>assistant: I will look",
    "user: What is the weather in Paris?</s>assistant: Let me",
    "user: Is it raining in Oslo?</s>",
]


def requests(**common):
    # different lengths, caps and stop rules in one batch
    caps = [12, 5, 9, 12, 1]
    return [
        GenerationRequest(prompt=p, max_new_tokens=n, record_id=f"r{i}", **common)
        for i, (p, n) in enumerate(zip(PROMPTS, caps))
    ]


@pytest.fixture(scope="module")
def sharp_model(tiny_role_dirs, tmp_path_factory):
    """The tiny random model with sharpened attention: at the usual init scale its attention is almost uniform and its
    greedy tokens hardly depend on positions or masks, so a padding or position bug would go unseen."""
    import torch

    model, tokenizer = load_checkpoint(tiny_role_dirs["planner"], dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(25.0)
            elif name.endswith(("v_proj.weight", "o_proj.weight")):
                p.mul_(8.0)
    out = tmp_path_factory.mktemp("sharp")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def fp32_backend(path, **options):
    return load_backends({"m": path}, dtype="float32", **options)["m"]


def shared_fp32(dirs, max_batch: int, wait_s: float = 0.005):
    """The service's role backends (build_engine) in float32."""
    return shared_backends(load_backends(dirs, dtype="float32"), max_batch=max_batch, wait_s=wait_s)


@pytest.mark.parametrize("reuse_cache", [True, False])
@pytest.mark.parametrize("stops", ["ignore_eos", "stop_strings"])
def test_greedy_batched_equals_each_alone(sharp_model, reuse_cache, stops):
    path = sharp_model
    common = {"ignore_eos": True, "stop_strings": ()} if stops == "ignore_eos" else {"stop_strings": ("</s>", "in")}
    alone = fp32_backend(path, reuse_cache=reuse_cache)
    expected = [alone.generate(r) for r in requests(**common)]
    batched = fp32_backend(path, reuse_cache=reuse_cache)
    batched.generate(requests(**common)[0])  # a warm cache slot: some rows reuse a prefix, others do not
    got = batched.generate_many(requests(**common))
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    assert [g.text for g in got] == [g.text for g in expected]
    assert [g.stop_reason for g in got] == [g.stop_reason for g in expected]
    if reuse_cache:
        assert got[0].reused_tokens > 0 and got[1].reused_tokens < got[0].reused_tokens
    if stops == "ignore_eos":
        assert [g.new_tokens for g in got] == [12, 5, 9, 12, 1]  # each its own max_new_tokens
    # and the batch leaves the caches usable: the next request alone still gives its result
    assert batched.generate(requests(**common)[2]).token_ids == expected[2].token_ids


def test_sampling_is_per_request_seeded(sharp_model):
    path = sharp_model
    reqs = [
        GenerationRequest(prompt=p, max_new_tokens=8, temperature=0.9, seed=7 + i, ignore_eos=True, stop_strings=())
        for i, p in enumerate(PROMPTS[:3])
    ]
    alone = [fp32_backend(path).generate(r).token_ids for r in reqs]
    assert [g.token_ids for g in fp32_backend(path).generate_many(reqs)] == alone


def test_a_dropped_row_leaves_the_batch_and_the_others_are_unchanged(sharp_model):
    path = sharp_model
    reqs = requests(ignore_eos=True, stop_strings=())
    expected = [fp32_backend(path).generate(r).token_ids for r in reqs]
    backend = fp32_backend(path)
    steps = {"n": 0}

    def dropped(i: int) -> bool:  # row 0 is dropped after a few decode steps (its deadline passed)
        if i == 0:
            steps["n"] += 1
        return i == 0 and steps["n"] > 3

    got = backend.generate_many(reqs, dropped=dropped)
    assert got[0] is None
    assert [g.token_ids for g in got[1:]] == expected[1:]
    too_long = GenerationRequest(prompt="word " * 5000, max_new_tokens=4)
    mixed = backend.generate_many([too_long, reqs[1]])
    assert isinstance(mixed[0], Exception) and mixed[1].token_ids == expected[1]


def test_the_batcher_batches_concurrent_requests_and_keeps_their_results(tiny_role_dirs):
    role = shared_fp32({"planner": tiny_role_dirs["planner"]}, max_batch=8, wait_s=0.05)["planner"]
    reqs = requests(ignore_eos=True, stop_strings=()) * 2
    expected = [fp32_backend(tiny_role_dirs["planner"]).generate(r).token_ids for r in reqs]
    got: list = [None] * len(reqs)

    def one(i: int) -> None:
        got[i] = role.generate(reqs[i], Deadline(60)).token_ids

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
    stats = role.batcher.stats
    assert stats.generations == len(reqs) and stats.largest > 1 and stats.batches < len(reqs)


def test_an_expired_request_is_dropped_from_the_batch(tiny_role_dirs):
    role = shared_fp32({"planner": tiny_role_dirs["planner"]}, max_batch=8)["planner"]
    slow = GenerationRequest(prompt=PROMPTS[0], max_new_tokens=400, ignore_eos=True, stop_strings=())
    quick = GenerationRequest(prompt=PROMPTS[1], max_new_tokens=400, ignore_eos=True, stop_strings=())
    outcome: dict = {}

    def run(name, request, seconds):
        started = time.monotonic()
        try:
            outcome[name] = role.generate(request, Deadline(seconds)).new_tokens
        except RequestTimeout as e:
            outcome[name] = e
        outcome[name + "_s"] = time.monotonic() - started

    threads = [
        threading.Thread(target=run, args=("short", quick, 0.2)),
        threading.Thread(target=run, args=("long", slow, 60)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(outcome["short"], RequestTimeout) and outcome["short_s"] < 5
    assert outcome["long"] == 400
    assert role.batcher.stats.dropped >= 1


def test_concurrent_service_requests_with_batching_give_the_serial_results(tiny_role_dirs):
    settings = make_settings(planner_tokens=12, caller_tokens=12, summarizer_tokens=12, default_steps=2)
    dirs = tiny_role_dirs

    def app(max_batch: int):
        backends = shared_fp32(dirs, max_batch=max_batch, wait_s=0.02)
        return create_app(settings, AgentEngine(backends, settings), make_toolkits(settings)), backends

    queries = [f"What is the weather in {c}?" for c in ("Rome", "Oslo", "Lima", "Kyiv", "Doha", "Bern")]

    def run(client, q):
        r = client.post(
            "/v1/chat/completions",
            json={"model": "umi-agent", "tools": [OPENAI_WEATHER], "messages": [{"role": "user", "content": q}]},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        return body["choices"][0]["message"], body["umi"]["thought"]

    serial_app, _ = app(1)
    with TestClient(serial_app) as c:
        serial = [run(c, q) for q in queries]
    batched_app, backends = app(8)
    got: list = [None] * len(queries)
    with TestClient(batched_app) as c:
        threads = [
            threading.Thread(target=lambda i=i: got.__setitem__(i, run(c, queries[i]))) for i in range(len(queries))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got == serial
    assert backends["planner"].batcher.stats.largest > 1


def test_requests_joining_a_running_batch_get_their_results(sharp_model):
    """Continuous batching: requests taken between decode steps (longer and shorter prompts than the running rows)
    give what they give alone, as do the rows they joined."""
    reqs = requests(ignore_eos=True, stop_strings=())
    expected = [fp32_backend(sharp_model).generate(r).token_ids for r in reqs]
    calls = {"n": 0}
    arrivals = {0: [0, 1], 3: [2], 5: [3, 4]}  # call number -> request indices arriving then

    def take(room: int):
        arriving = arrivals.get(calls["n"], [])
        calls["n"] += 1
        assert len(arriving) <= room
        return [(i, reqs[i]) for i in arriving]

    got: dict = {}
    fp32_backend(sharp_model).decode_together(take, got.__setitem__, lambda _: False, max_rows=8)
    assert calls["n"] > 5  # every arrival was taken
    assert [got[i].token_ids for i in range(len(reqs))] == expected


class GatedBackend:
    """A scripted backend for the batcher's scheduling: its first batch holds until `gate` opens, then finishes one
    row per step; every batch's backend name goes to `batches`."""

    def __init__(self, name: str, batches: list, gate: threading.Event):
        self.name, self.batches, self.gate = name, batches, gate

    def decode_together(self, take, finish, gone, max_rows):
        self.batches.append(self.name)
        active = [item for item, _ in take(max_rows)]
        self.gate.wait(10)
        while True:
            active += [item for item, _ in take(max_rows - len(active))]
            if not active:
                return
            item = active.pop(0)
            finish(item, f"{self.name}:{item.request.record_id}")


def test_a_busy_adapter_does_not_keep_another_from_the_model():
    """Two backends on one model (LoRA adapters): a generation of B queued while A's batch runs goes before A's
    generations queued after it (arrival order), rather than waiting while A keeps the model busy."""
    from umi.inference.micro_batching import MicroBatcher

    batches: list[str] = []
    gate = threading.Event()
    a, b = GatedBackend("A", batches, gate), GatedBackend("B", batches, threading.Event())
    b.gate.set()
    batcher = MicroBatcher(threading.Lock(), max_batch=8, wait_s=0.0)
    results: dict = {}

    def submit(backend, rid):
        results[rid] = batcher.submit(backend, GenerationRequest(prompt="x", max_new_tokens=1, record_id=rid))

    def queued(n):
        deadline = time.monotonic() + 10
        while len(batcher._queue) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(batcher._queue) == n

    threads = [threading.Thread(target=submit, args=(a, "a1"))]
    threads[0].start()
    deadline = time.monotonic() + 10
    while batches != ["A"] and time.monotonic() < deadline:  # A's batch is running, holding at its gate
        time.sleep(0.005)
    for backend, rid, n in ((b, "b1", 1), (a, "a2", 2)):
        threads.append(threading.Thread(target=submit, args=(backend, rid)))
        threads[-1].start()
        queued(n)
    gate.set()
    for t in threads:
        t.join(10)
    batcher.close()
    assert results == {"a1": "A:a1", "b1": "B:b1", "a2": "A:a2"}
    assert batches == ["A", "B", "A"]  # a2 did not join A's running batch ahead of b1, nor start the next one


@pytest.mark.slow
def test_the_compare_benchmark_runs_both_modes(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "compare.json"
    done = subprocess.run(
        [
            sys.executable,
            str(repo / "benchmarks" / "service_load.py"),
            "--serve",
            "tiny",
            "--compare",
            "--clients",
            "2",
            "--requests-per-client",
            "1",
            "--max-new-tokens",
            "4",
            "--json",
            str(out),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["off"]["max_batch"] == 1 and figures["on"]["max_batch"] == 8
    for mode in ("off", "on"):
        assert figures[mode]["errors"] == 0 and figures[mode]["requests"] == 2
    last = done.stdout.strip().splitlines()[-1]
    assert last == f"batching speed-up: {figures['speedup']:.2f}x"
