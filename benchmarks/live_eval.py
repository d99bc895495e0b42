"""Live evaluation with entries rolled out one at a time and several at once (EvalSettings.live_concurrency).

    .venv/bin/python benchmarks/live_eval.py [--model artifacts/backbone] [--entries 8] [--concurrency 8]

The same held-out BFCL multi-turn entries are rolled out twice by the α-UMi agent with --model in every role (the
untrained backbone by default: it rarely stops early, so every generation runs to --max-new-tokens), float32, first
one entry after another, then --concurrency entries at once with their generations decoded together
(umi.inference.sharing).
Prints each run's wall time (model loading and a warm-up generation left out), how many entries got the identical record both ways (timings aside), and last the line
`live batching speed-up: N.NNx` (sequential time / concurrent time).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from umi.agent.loop import build_agent
from umi.eval.agents import loaded_backends
from umi.eval.budget import base_budget
from umi.eval.live import run_live, without_timings
from umi.eval.settings import EvalSettings
from umi.eval.testsets import live_entries
from umi.inference.agent_specs import AgentSpec
from umi.inference.protocol import GenerationRequest
from umi.inference.sharing import batched_backends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="artifacts/backbone")
    parser.add_argument("--data", default="data", help="the imported BFCL data (make run / umi data import bfcl)")
    parser.add_argument("--entries", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    console = Console()
    entries, available = live_entries(Path(args.data), None)
    entries = entries[: args.entries]
    caps = {role: args.max_new_tokens for role in ("planner", "caller", "summarizer", "global")}
    settings = EvalSettings(max_new_tokens=caps, max_steps=1, stop_on_failure=True, dtype="float32")
    spec = AgentSpec.multi("bench", args.model, args.model, args.model)
    budget = base_budget(spec, settings.max_prompt_tokens, settings.untrained_prompt_tokens)  # as evaluate() fits
    loading = dict(max_prompt_tokens=budget, max_new_tokens=caps, dtype="float32")
    console.print(f"{len(entries)} of {available} held-out live entries, {args.model} in every role, caps {caps}")

    warm_up = GenerationRequest(prompt="warm up", max_new_tokens=2)  # first-call costs outside the timed part

    with loaded_backends(spec, **loading) as backends:
        backends["planner"].generate(warm_up)
        started = time.perf_counter()
        alone = run_live(backends, entries, build_agent=build_agent, settings=settings, doc_style="compact")
        sequential = time.perf_counter() - started
    console.print(f"one at a time: {sequential:.1f} s")

    together = settings.with_(live_concurrency=args.concurrency)
    with (
        loaded_backends(spec, max_cache_slots=3 * args.concurrency, **loading) as loaded,
        batched_backends(loaded, args.concurrency) as backends,
    ):
        backends["planner"].generate(warm_up)
        started = time.perf_counter()
        batched = run_live(backends, entries, build_agent=build_agent, settings=together, doc_style="compact")
        concurrent = time.perf_counter() - started
        largest = backends["planner"].batcher.stats.largest
    same = sum(without_timings(a) == without_timings(b) for a, b in zip(alone.records, batched.records))
    console.print(f"{args.concurrency} at once: {concurrent:.1f} s (largest batch {largest})")
    console.print(f"identical records: {same} of {len(entries)} entries")
    console.print(f"live batching speed-up: {sequential / concurrent:.2f}x", highlight=False)


if __name__ == "__main__":
    main()
