"""Live rollouts of several entries at once (EvalSettings.live_concurrency): their generations decode together
(umi.inference.micro_batching) and every entry's record is the one it gets rolled out alone."""

from __future__ import annotations

import itertools

from umi.agent.loop import build_agent
from umi.data.bfcl import import_category
from umi.eval.agents import loaded_backends
from umi.eval.budget import base_budget
from umi.eval.live import run_live, without_timings
from umi.eval.settings import EvalSettings
from umi.eval.testsets import LiveEntry
from umi.inference.agent_specs import AgentSpec
from umi.inference.sharing import batched_backends


def test_entries_rolled_out_together_get_the_records_they_get_alone(tiny_backbone):
    entries = [LiveEntry.from_trajectory(t) for t in itertools.islice(import_category("multi_turn_base"), 4)]
    caps = {"planner": 8, "caller": 8, "summarizer": 8, "global": 8}
    settings = EvalSettings(max_new_tokens=caps, max_steps=1, stop_on_failure=True, dtype="float32")
    spec = AgentSpec.multi("tiny", tiny_backbone, tiny_backbone, tiny_backbone)
    budget = base_budget(spec, settings.max_prompt_tokens, settings.untrained_prompt_tokens)  # as evaluate() fits
    loading = dict(max_prompt_tokens=budget, max_new_tokens=caps, dtype="float32")

    with loaded_backends(spec, **loading) as backends:
        alone = run_live(backends, entries, build_agent=build_agent, settings=settings, doc_style="compact")
    together = settings.with_(live_concurrency=4)
    with loaded_backends(spec, **loading) as loaded, batched_backends(loaded, 4) as backends:
        shown: list[tuple[int, int]] = []
        batched = run_live(
            backends,
            entries,
            build_agent=build_agent,
            settings=together,
            doc_style="compact",
            progress=lambda k, n: shown.append((k, n)),
        )
        stats = backends["planner"].batcher.stats
        assert backends["caller"].batcher is backends["planner"].batcher  # one model in every role: one batcher
    assert stats.largest > 1  # entries' generations did decode together
    assert [r["entry_id"] for r in batched.records] == [e.entry_id for e in entries]
    assert without_timings(batched.records) == without_timings(alone.records)
    assert shown[0] == (0, 4) and shown[-1] == (4, 4)
