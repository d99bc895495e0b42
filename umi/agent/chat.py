"""A chat with an agent in the terminal, watching it work: the session, its tools and how its events are shown (the
`umi chat` command is umi.cli.chat).

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["ChatSession", "load_runtime", "render_event", "SchemaOnlyTools"]

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
