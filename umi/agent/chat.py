"""`umi chat`: talk to an agent in the terminal and watch it work.

Each line you type is a user turn; the agent runs it with the conversation so far as history (as BFCL's multi-turn
entries run), and every step is shown as it happens, from the loop's AgentEvent stream: the planner's thought and
decision, the call, the tool's observation, the answer (or the give-up).

Tools, one of:
- a BFCL toolkit: `--toolkit GorillaFileSystem,MathAPI` (BFCL's executable classes; `--config state.json` sets their
  initial state as a BFCL entry's `initial_config` does; state lives for the whole session);
- your Python tools: `--tools my_tools.py` or `--tools my_package.my_tools`, a module with `TOOLS`, a list of
  `(schema, function)` pairs (OpenAI-style function schemas: name, description, parameters), or a `registry()`
  returning a umi.tools.registry.ToolRegistry;
- schemas only: `--tools schemas.json`, a JSON list of OpenAI-style function schemas (`{"type": "function",
  "function": {...}}` wrappers accepted). Nothing executes them: when the agent calls one, you type the result.

Commands in the session: `/reset` clears the conversation (a BFCL toolkit is rebuilt from its initial state),
`/exit` (or `/quit`, an empty line, end of input) leaves.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from umi.inference.presets import MAX_STEPS

__all__ = ["ChatSession", "chat_cmd", "load_runtime", "render_event", "SchemaOnlyTools"]

EXIT_COMMANDS = {"/exit", "/quit", "exit", "quit"}


# --- tools ---------------------------------------------------------------------------------------------------------
def _schema(item: Any) -> dict:
    """An OpenAI-style function schema, unwrapped from `{"type": "function", "function": {...}}` when wrapped."""
    if hasattr(item, "model_dump"):
        return item.model_dump()
    if not isinstance(item, Mapping):
        raise ValueError(f"a tool schema must be an object, got {type(item).__name__}")
    if item.get("type") == "function" and isinstance(item.get("function"), Mapping):
        return dict(item["function"])
    return dict(item)


class SchemaOnlyTools:
    """Tools known only by their schemas: a call is checked against its schema, then the user types its result
    (`ask` is called with the call's text and returns the observation)."""

    def __init__(self, schemas: list, ask: Callable[[str], str]):
        from umi.tools.registry import ToolRegistry

        self.registry = ToolRegistry(timeout_s=None)
        self.ask = ask
        for item in schemas:
            schema = _schema(item)
            self.registry.register(schema, lambda _name=schema.get("name"), **kwargs: None)

    @property
    def specs(self):
        return self.registry.specs

    def dispatch(self, name: str, arguments: Mapping[str, Any] | None = None):
        from umi.tools.registry import Observation

        tool = self.registry.get(name) if isinstance(name, str) else None
        if tool is None:
            return self.registry.dispatch(name, arguments)  # the registry's own unknown-tool observation
        problem = self.registry.check_arguments(name, dict(arguments or {}))
        if problem is not None:
            return Observation.failure(name, "invalid_arguments", f"Error: invalid arguments for {name}: {problem}")
        text = self.ask(f"{name}({json.dumps(dict(arguments or {}), ensure_ascii=False)})")
        return Observation(ok=True, text=text, tool_name=name, value=text)


def _import_module(ref: str):
    path = Path(ref)
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(f"no tools module at {path}")
        spec = importlib.util.spec_from_file_location(f"umi_user_tools_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    return importlib.import_module(ref)


def load_runtime(
    toolkit: str | None = None,
    tools: str | None = None,
    config: Mapping[str, Any] | None = None,
    ask: Callable[[str], str] | None = None,
):
    """The session's tool runtime from `--toolkit` (comma-separated BFCL classes) or `--tools` (a .py file or module
    with TOOLS / registry(), or a .json file of schemas). ValueError naming the problem for bad input."""
    if bool(toolkit) == bool(tools):
        raise ValueError("give exactly one of --toolkit (BFCL classes) or --tools (a Python module or a JSON file)")
    if toolkit:
        from umi.tools.bfcl import BFCLToolkit

        classes = [c.strip() for c in toolkit.split(",") if c.strip()]
        return BFCLToolkit(classes, dict(config or {}))
    assert tools is not None
    if tools.endswith(".json"):
        path = Path(tools)
        if not path.is_file():
            raise FileNotFoundError(f"no schema file at {path}")
        try:
            schemas = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON: {e}") from None
        if not isinstance(schemas, list) or not schemas:
            raise ValueError(f"{path} must hold a non-empty JSON list of function schemas")
        return SchemaOnlyTools(schemas, ask or (lambda call: input(f"result of {call}> ")))
    from umi.tools.registry import ToolRegistry

    module = _import_module(tools)
    if hasattr(module, "registry"):
        registry = module.registry()
        if not isinstance(registry, ToolRegistry):
            raise ValueError(f"{tools}.registry() must return a ToolRegistry, got {type(registry).__name__}")
        return registry
    pairs = getattr(module, "TOOLS", None)
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError(f"{tools} has neither a TOOLS list of (schema, function) pairs nor a registry() function")
    registry = ToolRegistry()
    for k, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{tools}.TOOLS[{k}] must be a (schema, function) pair")
        registry.register(_schema(pair[0]), pair[1])
    return registry


# --- showing events ------------------------------------------------------------------------------------------------
_SHOWN = 600  # characters of an observation shown (the agent itself reads up to its observation limit)


def render_event(console: Console, event) -> None:
    """Print one AgentEvent: thought, call, observation, answer, give-up, end of turn."""
    kind, step = event.kind, event.step
    if kind == "planner":
        decision = event.data.get("decision", "?")
        console.print(f"[bold cyan]thought[/] [dim]#{step}[/] {escape(event.text)} [magenta](next: {decision})[/]")
    elif kind == "caller":
        if event.data.get("failure"):
            shown = escape(event.text[:_SHOWN])
            console.print(f"[bold yellow]call[/] [dim]#{step}[/] [red]unreadable ({event.data['failure']})[/] {shown}")
        else:
            console.print(f"[bold yellow]call[/] [dim]#{step}[/] {escape(event.text)}")
    elif kind == "observation":
        text = event.text if len(event.text) <= _SHOWN else event.text[:_SHOWN] + " ..."
        style = "green" if event.data.get("ok", True) else "red"
        console.print(f"[bold {style}]observation[/] [dim]#{step}[/] {escape(text)}")
    elif kind == "answer":
        console.print(f"[bold green]answer[/] {escape(event.text)}")
    elif kind == "give_up":
        console.print(f"[bold red]gave up[/] {escape(event.text)}")
    elif kind == "end":
        totals = event.data.get("totals", {})
        console.print(
            f"[dim]({event.data.get('status')}, {step} step(s), {totals.get('new_tokens', 0)} tokens written, "
            f"{totals.get('seconds', 0):.1f} s)[/]"
        )


class ChatSession:
    """A conversation with one agent over one tool runtime; `turn(text)` runs one user turn, showing its events."""

    def __init__(self, agent, runtime, console: Console | None = None, rebuild: Callable[[], Any] | None = None):
        self.agent = agent
        self.runtime = runtime
        self.console = console or Console()
        self.rebuild = rebuild
        self.history: list = []
        self.turns = 0

    def reset(self) -> None:
        self.history = []
        if self.rebuild is not None:
            self.runtime = self.rebuild()
        self.agent.reset()

    def turn(self, text: str):
        self.turns += 1
        result = self.agent.run(
            text,
            self.runtime,
            history=self.history,
            task_id=f"chat-{self.turns}",
            on_event=lambda e: render_event(self.console, e),
        )
        self.history = list(result.trajectory.steps)
        return result

    def loop(self, read: Callable[[str], str]) -> int:
        """Read lines until /exit, an empty line or end of input; returns the number of turns run."""
        names = ", ".join(spec.name for spec in self.runtime.specs)
        self.console.print(f"[dim]{len(self.runtime.specs)} tools: {escape(names[:400])}[/]")
        self.console.print("[dim]/reset clears the conversation, /exit (or an empty line) leaves[/]")
        ran = 0
        while True:
            try:
                line = read("you> ")
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                break
            line = line.strip()
            if not line or line.lower() in EXIT_COMMANDS:
                break
            if line.lower() == "/reset":
                self.reset()
                self.console.print("[dim]conversation cleared[/]")
                continue
            self.turn(line)
            ran += 1
        return ran


# --- the command ----------------------------------------------------------------------------------------------------
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
