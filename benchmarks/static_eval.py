"""Static evaluation with continuous batching in trajectory order against left-padded batches by length.

    .venv/bin/python benchmarks/static_eval.py [--single artifacts/runs/global/model | --multi PLANNER,CALLER,SUMMARIZER]
        [--test-set bfcl|ood] [--trajectories 12] [--batch 16] [--max-prompt-tokens 1024] [--max-new-tokens N]

The same trajectories are evaluated twice by one agent (float32, the `full` profile's generation caps, no generation
cache): first with `static_batching="padded"` (prompts sorted by length, decoded in left-padded batches, every prompt
prefilled whole, a batch running until its longest row stops), then `continuous` (a role's prompts in trajectory
order, each prefilled from the KV cache of the step before it, a finished row's place taken at once). Prints each
run's wall time (model loading and a warm-up generation left out), the prompt tokens each run prefilled, on how many
steps the raw outputs of every role are identical both ways, and last the line
`static continuous batching speed-up: N.NNx` (padded time / continuous time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # test support (the fixtures' folder) imports as tests.support

from tests.support.fixtures import TOOLBENCH_OOD_TEST  # noqa: E402
from umi import prompts  # noqa: E402
from umi.data.params import dataset_doc_style  # noqa: E402
from umi.eval.agents import loaded_backends  # noqa: E402
from umi.eval.settings import PROFILES  # noqa: E402
from umi.eval.static import run_static  # noqa: E402
from umi.eval.testsets import load_bfcl_test, load_toolbench_ood  # noqa: E402
from umi.inference.agent_specs import AgentSpec  # noqa: E402
from umi.inference.protocol import GenerationRequest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    agent = parser.add_mutually_exclusive_group()
    agent.add_argument("--single", default="artifacts/runs/global/model", help="a single-LLM checkpoint")
    agent.add_argument("--multi", help="PLANNER,CALLER,SUMMARIZER checkpoints (an α-UMi agent)")
    parser.add_argument("--test-set", choices=("bfcl", "ood"), default="bfcl")
    parser.add_argument("--data", default="data", help="the imported BFCL data (make run / umi data import bfcl)")
    parser.add_argument("--trajectories", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-prompt-tokens", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, help="one cap for every role (default: the full profile's)")
    parser.add_argument("--params", default="params.yaml", help="split fractions and doc style")
    args = parser.parse_args(argv)
    console = Console()

    if args.multi:
        spec = AgentSpec.multi("bench", *args.multi.split(","))
    else:
        spec = AgentSpec.single("bench", args.single)
    if args.test_set == "bfcl":
        test_set = load_bfcl_test(Path(args.data), args.trajectories, params=args.params)
    else:
        test_set = load_toolbench_ood(TOOLBENCH_OOD_TEST, args.trajectories)
    settings = PROFILES["full"].with_(batch_size=args.batch, max_prompt_tokens=args.max_prompt_tokens, dtype="float32")
    if args.max_new_tokens:
        settings = settings.with_(max_new_tokens={role: args.max_new_tokens for role in settings.max_new_tokens})
    loading = dict(
        max_prompt_tokens=settings.max_prompt_tokens, max_new_tokens=settings.max_new_tokens, dtype="float32"
    )
    # the prompt format the checkpoints were trained with, as umi.eval.run takes it
    doc_style = prompts.agreed_prompt_format(spec.roles, prompts.prompt_format(dataset_doc_style(args.params), None))
    doc_style = doc_style["doc_style"]
    console.print(f"{spec.name}: {dict(spec.roles)}; {len(test_set.trajectories)} {args.test_set} trajectories")

    runs = {}
    for mode in ("padded", "continuous"):
        with loaded_backends(spec, **loading) as backends:
            distinct = list({id(b): b for b in backends.values()}.values())
            distinct[0].generate(GenerationRequest(prompt="warm up", max_new_tokens=2))
            before = sum(b.stats.prefill_tokens for b in distinct)
            started = time.perf_counter()
            result = run_static(
                backends, test_set.trajectories, settings=settings.with_(static_batching=mode), doc_style=doc_style
            )
            seconds = time.perf_counter() - started
            prefilled = sum(b.stats.prefill_tokens for b in distinct) - before
        runs[mode] = (result, seconds)
        console.print(
            f"{mode}: {seconds:.1f} s, {result.metrics.steps} steps, {result.generations} generations, "
            f"{result.new_tokens} new tokens, {prefilled} prompt tokens prefilled"
        )
    (padded, padded_s), (continuous, continuous_s) = runs["padded"], runs["continuous"]
    same = sum(a["outputs"] == b["outputs"] for a, b in zip(padded.records, continuous.records))
    console.print(f"identical outputs: {same} of {len(padded.records)} steps")
    console.print(f"static continuous batching speed-up: {padded_s / continuous_s:.2f}x", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
