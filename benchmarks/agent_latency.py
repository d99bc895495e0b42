"""Agent latency: prefill tokens and wall time per task, KV-cache reuse against recomputing every prompt, one run.

    .venv/bin/python benchmarks/agent_latency.py [--model DIR | --tiny] [--tasks 2] [--calls 8] [--json OUT]

What runs: the α-UMi loop (umi.agent.loop.AlphaUMiAgent, one model in all three roles) on long episodes, twice per
task: once with `TransformersBackend(reuse_cache=True)` and once with `reuse_cache=False`, same model, same prompts.

Forcing long episodes: an untrained backbone rarely plans 8 tool calls, so the episodes are scripted. Each task is a
real ToolBench trajectory from the α-UMi out-of-domain test fixture (its real tool docs, thoughts, calls and
observations), its call steps cycled until the episode has --calls tool calls, then a conclusion. A replay backend
wraps the real one: for every request the agent makes, the real model prefills the real prompt and greedily decodes
exactly as many tokens as the scripted output has (EOS ignored), then the scripted text is handed back to the loop,
so both runs walk the same path and do the same decoding work; only prefill differs. Tools replay the trajectory's
observations. Prompts, history and truncation are the agent's own (the same as training).

Model: artifacts/backbone (SmolLM2-135M-Instruct, imported by `umi backbone import`) when present, else a tiny random
Llama built in code (--tiny forces it). The tiny model checks the plumbing; its timings say little (a 4-layer model
spends its time in per-token framework overhead, not in prefill). Reports per task: planner steps, generations,
prompt tokens, prefill tokens and wall seconds for reuse and recompute, the wall-time ratio, and whether both runs
decoded the same tokens. Torch runs on one thread by default (--threads).
Goal (issue 4): reuse takes at most half the wall time of recompute at 8 or more steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from umi import prompts  # noqa: E402
from umi.agent.loop import AgentConfig, AlphaUMiAgent  # noqa: E402
from umi.inference.protocol import Generation, GenerationRequest  # noqa: E402
from umi.inference.transformers_backend import TransformersBackend  # noqa: E402
from umi.prompts import role_of_prompt  # noqa: E402
from umi.schema import Step, ToolSpec, Trajectory  # noqa: E402

FIXTURE = ROOT.parent / "shared" / "fixtures" / "alpha-umi" / "toolbench_out_of_domain_test.json"
BACKBONE = ROOT / "artifacts" / "backbone"


@dataclass
class Script:
    """One long episode: what each role writes, in order, and what each tool call returns."""

    task_id: str
    query: str
    tools: list[ToolSpec]
    outputs: list[tuple[str, str]]  # (role, text)
    observations: list[str]


def script_from(traj: Trajectory, calls: int) -> Script | None:
    """The trajectory's (thought, call, observation) rounds cycled to `calls` rounds, then a conclusion."""
    rounds = []
    steps = traj.steps
    for i, s in enumerate(steps[:-2]):
        if (
            s.role == "assistant"
            and s.decision == "caller"
            and steps[i + 1].role == "caller"
            and steps[i + 2].role == "observation"
        ):
            rounds.append((s.content, steps[i + 1], steps[i + 2].content))
    if not rounds:
        return None
    conclusion = next((s.content for s in steps if s.role == "conclusion"), "Here is what I found.")
    outputs: list[tuple[str, str]] = []
    observations: list[str] = []
    for thought, call, observation in itertools.islice(itertools.cycle(rounds), calls):
        outputs.append(("planner", prompts.planner_target(thought, "caller")))
        outputs.append(("caller", prompts.caller_target(call.tool_name or "", call.arguments_json)))
        observations.append(observation)
    outputs.append(("planner", prompts.planner_target("I have everything I need.", "conclusion")))
    outputs.append(("summarizer", conclusion))
    return Script(traj.id, traj.instruction, traj.tools, outputs, observations)


def synthetic_script(calls: int) -> Script:
    tool = ToolSpec(
        name="get_weather",
        description="Get the weather of a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    cities = ["Paris", "Rome", "Oslo", "Lima", "Kyiv", "Doha", "Nice", "Bern", "Riga", "Baku", "Faro", "Split"]
    steps = [Step(role="user", content="Weather in all of these cities?")]
    for city in cities:
        observation = json.dumps({"city": city, "temperature": len(city) * 3})
        steps += [
            Step(role="assistant", content=f"I should look up {city}.", decision="caller"),
            Step(role="caller", tool_name="get_weather", arguments={"city": city}),
            Step(role="observation", content=observation),
        ]
    traj = Trajectory(
        id="synthetic-weather", source="benchmark", tools=[tool], instruction=steps[0].content, steps=steps
    )
    script = script_from(traj, calls)
    assert script is not None
    return script


def load_scripts(n: int, calls: int) -> list[Script]:
    if not FIXTURE.exists():
        return [synthetic_script(calls)]
    from umi.data.alpha_umi import import_alpha_umi

    scripts = []
    for traj in import_alpha_umi(FIXTURE):
        if not isinstance(traj, Trajectory):
            continue
        script = script_from(traj, calls)
        # several distinct rounds, so the history is not one turn repeated
        if script is not None and len({o for o in script.observations}) >= 3:
            scripts.append(script)
        if len(scripts) == n:
            break
    return scripts or [synthetic_script(calls)]


@dataclass
class ReplayBackend:
    """The real backend does the work (prefill the real prompt, decode len(scripted tokens) tokens); the loop gets the
    scripted text back."""

    backend: TransformersBackend
    outputs: list[tuple[str, str]]
    decoded: list[tuple[int, ...]] = field(default_factory=list)

    def generate(self, request: GenerationRequest) -> Generation:
        role, text = self.outputs.pop(0)
        if role_of_prompt(request.prompt) != role:
            raise RuntimeError(f"the agent asked for {role_of_prompt(request.prompt)}, the script has {role}")
        n = len(self.backend.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        g = self.backend.generate(replace(request, max_new_tokens=n, ignore_eos=True))
        self.decoded.append(g.token_ids)
        return replace(g, text=text)

    def reset(self) -> None:
        self.backend.reset()


@dataclass
class Observed:
    text: str
    ok: bool = True


class ReplayTools:
    """A tool runtime (umi.agent.loop.ToolRuntime) that returns the script's observations in order."""

    def __init__(self, tools: list[ToolSpec], observations: list[str]):
        self.specs = tools
        self.observations = list(observations)

    def dispatch(self, name: str, arguments: dict) -> Observed:
        return Observed(self.observations.pop(0))


def run_once(model, tokenizer, script: Script, reuse: bool, context_length: int) -> dict:
    backend = TransformersBackend(model, tokenizer, reuse_cache=reuse, context_length=context_length)
    replay = ReplayBackend(backend, list(script.outputs))
    agent = AlphaUMiAgent(replay, config=AgentConfig(max_steps=len(script.observations) + 1))
    started = time.perf_counter()
    result = agent.run(script.query, ReplayTools(script.tools, script.observations), task_id=script.task_id)
    wall = time.perf_counter() - started
    if result.status != "answered" or replay.outputs:
        raise RuntimeError(f"{script.task_id}: the scripted episode did not play out ({result.status})")
    totals = result.trajectory.meta["totals"]
    return {
        "wall_seconds": wall,
        "planner_steps": result.steps,
        "generations": len(result.trajectory.meta["generations"]),
        "prompt_tokens": totals["prompt_tokens"],
        "prefill_tokens": totals["prefill_tokens"],
        "new_tokens": totals["new_tokens"],
        "dropped_turns": sum(g["dropped_turns"] for g in result.trajectory.meta["generations"]),
        "decoded": replay.decoded,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: artifacts/backbone)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random Llama built in code")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--calls", type=int, default=8, help="tool calls per episode (planner steps = calls + 1)")
    parser.add_argument("--context-length", type=int, default=None, help="default: the model's maximum")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 0: torch's default. Default 1: on a shared CPU, more threads than "
        "free cores slows torch down many times over",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args(argv)

    import torch

    from tests.support.tiny import make_tiny_backbone
    from umi.inference.loading import load_role_models

    if args.threads:
        torch.set_num_threads(args.threads)
    tiny = args.tiny or (args.model is None and not (BACKBONE / "config.json").exists())
    if tiny:
        import tempfile

        path = make_tiny_backbone(Path(tempfile.mkdtemp(prefix="umi-tiny-")), hidden_size=256, layers=4, heads=4)
        model_name = "tiny random Llama (4 layers, 256 wide; byte-level BPE of 1k tokens)"
    else:
        path = args.model or BACKBONE
        model_name = str(path)
    loaded = load_role_models({"model": path})["model"]  # the device and dtype evaluation and serving use
    model, tokenizer = loaded.model, loaded.tokenizer
    # the tiny tokenizer needs ~3x the tokens of a real one: give it room so that no history turn is dropped
    context = args.context_length or int(model.config.max_position_embeddings) * (4 if tiny else 1)
    scripts = load_scripts(args.tasks, args.calls)
    device = next(model.parameters()).device
    print(
        f"model: {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, {device}, "
        f"{str(loaded.dtype).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} threads); context {context}; {len(scripts)} task(s), {args.calls} tool calls "
        f"each"
    )
    # warm-up: first calls pay for lazy initialisation
    TransformersBackend(model, tokenizer).generate(GenerationRequest(prompt="warm up " * 50, max_new_tokens=4))

    rows = []
    header = (
        f"{'task':<44} {'steps':>5} {'gens':>4} {'prompt tok':>10} {'prefill reuse':>13} {'prefill recomp':>14} "
        f"{'wall reuse s':>12} {'wall recomp s':>13} {'ratio':>6} {'same tokens':>11}"
    )
    print(header)
    for script in scripts:
        recompute = run_once(model, tokenizer, script, False, context)
        reuse = run_once(model, tokenizer, script, True, context)
        same = sum(a == b for a, b in zip(reuse["decoded"], recompute["decoded"]))
        row = {
            "task": script.task_id,
            "planner_steps": reuse["planner_steps"],
            "generations": reuse["generations"],
            "prompt_tokens": reuse["prompt_tokens"],
            "prefill_tokens_reuse": reuse["prefill_tokens"],
            "prefill_tokens_recompute": recompute["prefill_tokens"],
            "new_tokens": reuse["new_tokens"],
            "dropped_turns": reuse["dropped_turns"],
            "wall_seconds_reuse": round(reuse["wall_seconds"], 3),
            "wall_seconds_recompute": round(recompute["wall_seconds"], 3),
            "wall_ratio": round(reuse["wall_seconds"] / recompute["wall_seconds"], 3),
            "identical_generations": f"{same}/{len(reuse['decoded'])}",
        }
        rows.append(row)
        print(
            f"{row['task'][:44]:<44} {row['planner_steps']:>5} {row['generations']:>4} {row['prompt_tokens']:>10} "
            f"{row['prefill_tokens_reuse']:>13} {row['prefill_tokens_recompute']:>14} "
            f"{row['wall_seconds_reuse']:>12.2f} {row['wall_seconds_recompute']:>13.2f} {row['wall_ratio']:>6.2f} "
            f"{row['identical_generations']:>11}"
        )
    wall_reuse = sum(r["wall_seconds_reuse"] for r in rows)
    wall_recompute = sum(r["wall_seconds_recompute"] for r in rows)
    prefill_reuse = sum(r["prefill_tokens_reuse"] for r in rows)
    prefill_recompute = sum(r["prefill_tokens_recompute"] for r in rows)
    summary = {
        "model": model_name,
        "context_length": context,
        "calls_per_task": args.calls,
        "wall_seconds_reuse": round(wall_reuse, 3),
        "wall_seconds_recompute": round(wall_recompute, 3),
        "wall_ratio": round(wall_reuse / wall_recompute, 3),
        "prefill_ratio": round(prefill_reuse / prefill_recompute, 3),
        "goal_met": wall_reuse <= 0.5 * wall_recompute,
        "tasks": rows,
    }
    print(
        f"total: prefill {prefill_reuse} vs {prefill_recompute} tokens (ratio {summary['prefill_ratio']:.3f}); "
        f"wall {wall_reuse:.2f}s vs {wall_recompute:.2f}s (ratio {summary['wall_ratio']:.3f}); "
        f"goal reuse <= 0.5 x recompute: {'met' if summary['goal_met'] else 'NOT met'}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
