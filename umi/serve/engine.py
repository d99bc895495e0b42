"""What the endpoints run: a whole α-UMi episode (`run_agent`, server-side tools) or one turn of it (`next_turn`, the
client runs the tools).

`run_agent` is umi.agent.loop.AlphaUMiAgent over the service's role models, each generation behind the request's
deadline.

`next_turn` is one planner decision and what follows it, for a conversation whose state the client holds (the chat
endpoint, and /agent with tool schemas but no server-side implementation):

    planner -> caller -> a tool call, its arguments checked against the tool's JSON schema   ("call")
            -> summarizer -> the answer                                                      ("answer")
            -> give up                                                                       ("give_up")

The turn is the loop's step (umi.agent.step.AgentStep, the same planner retries and fallback, umi.inference.presets'
SERVING caps as this deployment sets them). The caller's output is untrusted: a call that does not parse, names a tool
that was not offered (or not the one `tool_choice` named), or has arguments that break the tool's schema is retried
with sampling (the step's checked call); if the retry fails too the turn is "failed" with a message saying what was
wrong (the endpoint answers it as text, never as a server error).

`tool_choice` (OpenAI's semantics): "none" turns a `Next: caller` into `Next: conclusion`; "required" or a named tool
turns a conclusion or give-up into `Next: caller` (the planner's thought is kept); a named tool is the only tool the
caller's prompt offers. With no tools at all the planner cannot pick the caller either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from umi.agent.loop import AgentConfig, AgentEvent, AgentResult, AlphaUMiAgent, ToolRuntime
from umi.agent.step import AgentStep, Plan
from umi.inference.deadlines import Deadline
from umi.inference.protocol import Backend
from umi.inference.sharing import guarded
from umi.parsing import ParseFailure, ToolCall
from umi.prompts import PromptBuilder
from umi.schema import Decision, Step, ToolSpec
from umi.serve.settings import ServeSettings
from umi.tools.registry import ToolRegistry
from umi.vocabulary import AGENT_ROLES

__all__ = ["AgentEngine", "ToolChoice", "TurnResult", "build_engine", "client_tool_registry"]

ToolChoice = str  # "none" | "auto" | "required" | the name of one tool
TurnKind = Literal["call", "answer", "give_up", "failed"]


def _not_callable_here(**_: Any) -> Any:  # pragma: no cover - client-side tools are never dispatched
    raise RuntimeError("a client-side tool runs on the client")


def client_tool_registry(specs: Sequence[ToolSpec]) -> ToolRegistry:
    """A registry of client-side tools, for their schemas only: registering checks each schema (ValueError naming the
    tool if it is not a valid JSON Schema, or a duplicate name); `check_arguments` validates a call."""
    registry = ToolRegistry(timeout_s=None)
    for spec in specs:
        try:
            registry.register(spec, _not_callable_here)
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith("tool ") else f"tool {spec.name!r}: {e}") from None
    return registry


@dataclass
class TurnResult:
    """One turn. `steps`: the steps it added (the planner's, then the caller's when it called). `finish`: why the
    last generation stopped, in OpenAI's words (tool_calls / stop / length)."""

    kind: TurnKind
    steps: list[Step]
    thought: str
    decision: Decision | None
    call: ToolCall | None = None
    answer: str | None = None
    message: str | None = None
    finish: Literal["tool_calls", "stop", "length"] = "stop"
    overridden: str | None = None  # what tool_choice changed, if anything
    failures: list[dict[str, Any]] = field(default_factory=list)
    generations: list[dict[str, Any]] = field(default_factory=list)

    def usage(self) -> dict[str, int]:
        prompt = sum(g["prompt_tokens"] for g in self.generations)
        completion = sum(g["new_tokens"] for g in self.generations)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class AgentEngine:
    """The three role backends and the service's settings. Thread-safe: each request builds its own agent over the
    shared backends (which serialise generation per model, see umi.inference.sharing)."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        settings: ServeSettings,
        models: Mapping[str, Mapping[str, Any]] | None = None,
        doc_style: str | None = None,
    ):
        missing = [r for r in AGENT_ROLES if r not in backends]
        if missing:
            raise ValueError(f"no backend for {missing}")
        self.backends = dict(backends)
        self.settings = settings
        # the tool-doc style of the checkpoints' prompt format (umi.prompts.agreed_prompt_format); the setting only
        # for checkpoints that record none
        self.doc_style = doc_style or settings.doc_style
        self.models = {role: dict(info) for role, info in (models or {}).items()}
        self.loaded_at = time.time()

    # --- limits -------------------------------------------------------------------------------------------------------
    def token_limits(self, requested: Mapping[str, int] | None = None) -> dict[str, int]:
        """Per-role max_new_tokens: the service's defaults, lowered or raised (up to the service's cap) by the request.
        Callers validate `requested` against settings.max_new_tokens first."""
        limits = self.settings.role_tokens()
        for role, value in (requested or {}).items():
            limits[role] = value
        return limits

    def agent_config(self, max_steps: int, max_new_tokens: Mapping[str, int]) -> AgentConfig:
        generation = self.settings.generation(dict(max_new_tokens))
        return AgentConfig.from_generation(generation, max_steps=max_steps, doc_style=self.doc_style)

    # --- a whole episode, server-side tools ---------------------------------------------------------------------------
    def run_agent(
        self,
        query: str,
        runtime: ToolRuntime,
        *,
        deadline: Deadline,
        max_steps: int,
        max_new_tokens: Mapping[str, int],
        history: Sequence[Step] = (),
        task_id: str | None = None,
        on_event: Callable[[AgentEvent], None] | None = None,
    ) -> AgentResult:
        agent = AlphaUMiAgent(
            guarded(self.backends["planner"], deadline),
            guarded(self.backends["caller"], deadline),
            guarded(self.backends["summarizer"], deadline),
            config=self.agent_config(max_steps, max_new_tokens),
        )
        return agent.run(query, runtime, history=history, task_id=task_id, on_event=on_event)

    # --- one turn, client-side tools ----------------------------------------------------------------------------------
    def next_turn(
        self,
        steps: Sequence[Step],
        tools: Sequence[ToolSpec],
        *,
        deadline: Deadline,
        tool_choice: ToolChoice = "auto",
        validator: ToolRegistry | None = None,
        max_new_tokens: Mapping[str, int] | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        record_id: str = "turn",
    ) -> TurnResult:
        """The next turn after `steps` (which end with a user message or an observation). See the module doc."""
        validator = validator if validator is not None else client_tool_registry(tools)
        named = tool_choice not in ("auto", "none", "required")  # the caller's prompt offers that one tool only
        caller_builder = PromptBuilder([t for t in tools if t.name == tool_choice], self.doc_style) if named else None
        step = AgentStep(
            {role: guarded(self.backends[role], deadline) for role in AGENT_ROLES},
            PromptBuilder(tools, self.doc_style),
            self.settings.generation(self.token_limits(max_new_tokens)),
            label=record_id,
            temperature=temperature,
            seed=seed,
        )
        outcome = step.take(
            steps,
            decide=lambda plan: self._decide(plan, tool_choice, bool(tools)),
            check=lambda call: self._call_problem(call, validator, tool_choice if named else None),
            caller_builder=caller_builder,
        )
        failures, generations = step.log.failures, step.log.generations
        if outcome.plan is None:
            return TurnResult(
                "failed",
                [],
                "",
                None,
                message="Error: the planner wrote nothing, even when retried.",
                failures=failures,
                generations=generations,
            )
        thought, decision = outcome.plan.thought, outcome.plan.decision
        overridden = None
        if decision != outcome.planned:
            why = "no tools were offered" if not tools else f"tool_choice is {tool_choice!r}"
            overridden = f"the planner decided {outcome.planned!r}; {why}, so it is {decision!r}"
        new_steps = [outcome.plan.step()]

        def result(kind: TurnKind, **kw: Any) -> TurnResult:
            return TurnResult(
                kind,
                new_steps,
                thought,
                decision,
                overridden=overridden,
                failures=failures,
                generations=generations,
                **kw,
            )

        if outcome.kind == "give_up":
            return result("give_up", finish="stop")
        if outcome.kind == "answer":
            assert outcome.last is not None
            finish = "length" if outcome.last.stop_reason == "max_new_tokens" else "stop"
            return result("answer", answer=outcome.answer, finish=finish)
        call = outcome.call
        if outcome.problem or not isinstance(call, ToolCall):
            return result(
                "failed", message=f"Error: the caller's output could not be used as a tool call: {outcome.problem}"
            )
        new_steps.append(
            Step(role="caller", tool_name=call.tool_name, arguments=call.arguments, arguments_text=call.arguments_text)
        )
        return result("call", call=call, finish="tool_calls")

    @staticmethod
    def _decide(plan: Plan, tool_choice: ToolChoice, have_tools: bool) -> Decision:
        """The decision `tool_choice` leaves of the planner's: "none" (or no tools) cannot call, "required" or a named
        tool must."""
        if plan.decision == "caller" and (tool_choice == "none" or not have_tools):
            return "conclusion"
        if plan.decision != "caller" and tool_choice not in ("auto", "none") and have_tools:
            return "caller"
        return plan.decision

    @staticmethod
    def _call_problem(call: ToolCall | ParseFailure, validator: ToolRegistry, required_name: str | None) -> str:
        if isinstance(call, ParseFailure):
            shown = call.text if len(call.text) <= 200 else call.text[:200] + "..."
            return f"{call.detail} ({call.kind}); output was {shown!r}"
        if call.tool_name not in validator:
            return f"it names {call.tool_name!r}, which is not one of the tools offered ({', '.join(validator.names)})"
        if required_name is not None and call.tool_name != required_name:
            return f"it names {call.tool_name!r}, but tool_choice requires {required_name!r}"
        why = validator.check_arguments(call.tool_name, call.arguments)
        if why is not None:
            return f"its arguments for {call.tool_name!r} break the tool's schema: {why}"
        return ""


def build_engine(
    settings: ServeSettings, dirs: Mapping[str, Path], base_dir: Path | None, info: Mapping[str, Mapping[str, Any]]
) -> "AgentEngine":
    """The role backends over `dirs` on the settings' engine, by the loader and dtype rule of evaluation, prompted in
    the format the checkpoints were trained with (ValueError when the roles disagree; `settings.doc_style` only fills
    in for checkpoints that record none). Each role's model info records the engine it runs on."""
    from umi.inference.loading import load_backends
    from umi.inference.sharing import shared_backends
    from umi.prompts import agreed_prompt_format, prompt_format

    trained_format = agreed_prompt_format(dirs, prompt_format(settings.doc_style, None))
    loaded = load_backends(
        dirs,
        engine=settings.engine,
        gguf_type=settings.gguf_type,
        gguf_dir=settings.gguf_dir,
        base_dir=base_dir,
        device=settings.device,
        dtype=settings.dtype,
        max_cache_slots=settings.cache_slots,
    )
    # llama.cpp decodes one sequence at a time: no micro-batcher, its requests queue on the model's lock
    backends = shared_backends(loaded, max_batch=settings.max_batch, wait_s=settings.batch_wait_ms / 1000)
    models = {role: {**dict(info.get(role, {})), "engine": loaded[role].engine} for role in AGENT_ROLES}
    models.update({k: dict(v) for k, v in info.items() if k not in models})  # the LoRA base's entry
    return AgentEngine(backends, settings, models=models, doc_style=trained_format["doc_style"])
