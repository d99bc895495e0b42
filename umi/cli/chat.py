"""`umi chat`: talk to an agent in the terminal and watch it work (the session, the tools and the rendering of its
events: umi.agent.chat)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from umi.agent.chat import ChatSession, load_runtime
from umi.inference.presets import MAX_STEPS


def _agent(
    agent: str,
    runs: Path,
    backbone: Path,
    model: Optional[Path],
    planner: Optional[Path],
    caller: Optional[Path],
    summarizer: Optional[Path],
):
    from umi.inference.agent_specs import AgentSpec, default_agents

    if model is not None:
        return AgentSpec.single("single-llm", model)
    if planner or caller or summarizer:
        if not (planner and caller and summarizer):
            raise ValueError("give all three of --planner, --caller and --summarizer (or --model)")
        return AgentSpec.multi("alpha-umi", planner, caller, summarizer)
    found, skipped = default_agents(runs, backbone, one_stage_runs=None)
    by_name = {a.name: a for a in found}
    if agent in by_name:
        return by_name[agent]
    if agent in skipped:
        raise ValueError(f"agent {agent!r}: {skipped[agent]} (train it first, or pass --planner/--caller/--summarizer)")
    raise ValueError(f"unknown agent {agent!r} (backbone, single-llm, alpha-umi; or give checkpoints)")


def chat_cmd(
    toolkit: Annotated[Optional[str], typer.Option(help="BFCL classes, e.g. GorillaFileSystem,MathAPI.")] = None,
    tools: Annotated[Optional[str], typer.Option(help="A .py file/module (TOOLS) or .json schemas.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON initial state of the BFCL classes.")] = None,
    agent: Annotated[str, typer.Option(help="alpha-umi | single-llm | backbone (--runs, --backbone).")] = "alpha-umi",
    runs: Annotated[Path, typer.Option(help="Training runs folder (<runs>/<stage>/model).")] = Path("artifacts/runs"),
    backbone: Annotated[Path, typer.Option(help="The backbone checkpoint.")] = Path("artifacts/backbone"),
    model: Annotated[Optional[Path], typer.Option(help="A single-LLM checkpoint (overrides --agent).")] = None,
    planner: Annotated[Optional[Path], typer.Option(help="Planner checkpoint (with --caller, --summarizer).")] = None,
    caller: Annotated[Optional[Path], typer.Option(help="Caller checkpoint.")] = None,
    summarizer: Annotated[Optional[Path], typer.Option(help="Summarizer checkpoint.")] = None,
    doc_style: Annotated[
        str, typer.Option(help="Tool-doc style for checkpoints that record no prompt format (a trained one's wins).")
    ] = "compact",
    max_steps: Annotated[int, typer.Option(min=1, help="Planner turns per user turn.")] = MAX_STEPS,
    max_prompt_tokens: Annotated[int, typer.Option(min=16, help="Prompt token budget (training's max_length).")] = 1024,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16 (auto: bf16 where native).")] = "auto",
) -> None:
    """Chat with an agent over a BFCL toolkit or your own tools; shows thought, call, observation and answer live."""
    from umi.agent.loop import AgentConfig, AlphaUMiAgent, SingleLLMAgent
    from umi.inference.devices import DTYPE_NAMES
    from umi.inference.loading import load_backends
    from umi.inference.presets import CHAT
    from umi.prompts import agreed_prompt_format, prompt_format

    console = Console()
    try:
        initial = json.loads(config.read_text(encoding="utf-8")) if config is not None else None
        if initial is not None and not isinstance(initial, dict):
            raise ValueError(f"{config} must hold a JSON object ({{class name: initial config}})")
        ask = lambda call: console.input(f"[bold]result of {escape(call)}>[/] ")  # noqa: E731
        runtime = load_runtime(toolkit, tools, initial, ask=ask)
        spec = _agent(agent, runs, backbone, model, planner, caller, summarizer)
        # the prompt format the checkpoints were trained with; --doc-style only for checkpoints that record none
        doc_style = agreed_prompt_format(spec.roles, prompt_format(doc_style, None))["doc_style"]
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    except (ValueError, FileNotFoundError, ImportError) as e:
        console.print(f"[red]{escape(str(e))}[/]")
        raise typer.Exit(2)
    console.print(f"[dim]loading {spec.name}: {', '.join(sorted(set(spec.roles.values())))}[/]")
    # the loader and dtype rule of evaluation and serving (umi.inference.loading), so chat talks to the evaluated model
    # umi.inference.presets' CHAT preset: evaluation's caps, so the context is fitted as evaluation fits it
    backends = load_backends(spec.roles, max_prompt_tokens=max_prompt_tokens, max_new_tokens=CHAT.caps(), dtype=dtype)
    cfg = AgentConfig.from_generation(CHAT, max_steps=max_steps, doc_style=doc_style)
    if spec.kind == "single":
        bot = SingleLLMAgent(backends["global"], config=cfg)
    else:
        bot = AlphaUMiAgent(backends["planner"], backends["caller"], backends["summarizer"], config=cfg)
    rebuild = (lambda: load_runtime(toolkit, None, initial)) if toolkit else None
    session = ChatSession(bot, runtime, console, rebuild=rebuild)
    session.loop(lambda prompt: console.input(f"[bold]{prompt}[/]") if sys.stdin.isatty() else input(prompt))
