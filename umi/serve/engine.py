"""What the endpoints run: a whole α-UMi episode (`run_agent`, server-side tools) or one turn of it (`next_turn`, the
client runs the tools).

`run_agent` is umi.agent.loop.AlphaUMiAgent over the service's role models, each generation behind the request's
deadline.

`next_turn` is one planner decision and what follows it, for a conversation whose state the client holds (the chat
endpoint, and /agent with tool schemas but no server-side implementation):

    planner -> caller -> a tool call, its arguments checked against the tool's JSON schema   ("call")
            -> summarizer -> the answer                                                      ("answer")
            -> give up                                                                       ("give_up")

The planner is handled as the loop handles it: an empty output is retried with sampling, an output without a decision
goes on as `Next: caller` with the whole text as the thought. The caller's output is untrusted: a call that does not
parse, names a tool that was not offered (or not the one `tool_choice` named), or has arguments that break the tool's
schema is retried once with sampling; if the retry fails too the turn is "failed" with a message saying what was wrong
(the endpoint answers it as text, never as a server error).

`tool_choice` (OpenAI's semantics): "none" turns a `Next: caller` into `Next: conclusion`; "required" or a named tool
turns a conclusion or give-up into `Next: caller` (the planner's thought is kept); a named tool is the only tool the
caller's prompt offers. With no tools at all the planner cannot pick the caller either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from umi import prompts
from umi.agent.backend import Backend, GenerationRequest
from umi.agent.loop import AgentConfig, AgentEvent, AgentResult, AlphaUMiAgent, ToolRuntime
from umi.agent.roles import PromptBuilder
from umi.parsing import ParseFailure, ToolCall, parse_caller_output, parse_planner_output, parse_summarizer_output
from umi.schema import Decision, Step, ToolSpec
from umi.serve.backends import Deadline, guarded
from umi.serve.settings import ServeSettings
from umi.tools.registry import ToolRegistry
from umi.vocabulary import AGENT_ROLES

__all__ = ["AgentEngine", "ToolChoice", "TurnResult", "client_tool_registry"]

ToolChoice = str  # "none" | "auto" | "required" | the name of one tool
TurnKind = Literal["call", "answer", "give_up", "failed"]
RETRY_TEMPERATURE = 0.7


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
    shared backends (which serialise generation per model, see umi.serve.backends)."""

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
        tokens = dict(max_new_tokens)
        tokens.setdefault("global", tokens["summarizer"])
        return AgentConfig(
            max_steps=max_steps,
            planner_retries=self.settings.planner_retries,
            retry_temperature=RETRY_TEMPERATURE,
            doc_style=self.doc_style,
            max_new_tokens=tokens,
        )

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
        tokens = self.token_limits(max_new_tokens)
        validator = validator if validator is not None else client_tool_registry(tools)
        builder = PromptBuilder(tools, self.doc_style)
        generations: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []

        def generate(role: str, prompt, attempt: int) -> Any:
            request = GenerationRequest(
                prompt=prompt.prompt,
                history_span=prompt.history_span,
                max_new_tokens=tokens[role],
                temperature=RETRY_TEMPERATURE if attempt and temperature <= 0 else temperature,
                seed=seed + attempt,
                record_id=f"{record_id}:{role}",
            )
            g = guarded(self.backends[role], deadline).generate(request)
            generations.append({"role": role, "attempt": attempt, **g.timing()})
            return g

        # planner
        planner_prompt = builder.planner(steps)
        thought: str | None = None
        decision: Decision = "caller"
        for attempt in range(self.settings.planner_retries + 1):
            parsed = parse_planner_output(generate("planner", planner_prompt, attempt).text)
            if isinstance(parsed, ParseFailure):
                failures.append({"role": "planner", "kind": parsed.kind, "detail": parsed.detail})
                if parsed.kind == "empty_output":
                    continue
                thought, decision = parsed.text.split(prompts.TURN_END, 1)[0].strip(), "caller"
            else:
                thought, decision = parsed.thought, parsed.decision
            break
        if thought is None:
            return TurnResult("failed", [], "", None, message="Error: the planner wrote nothing, even when retried.",
                              failures=failures, generations=generations)  # fmt: skip

        overridden = None
        wanted = decision
        if decision == "caller" and (tool_choice == "none" or not tools):
            wanted = "conclusion"
        elif decision != "caller" and tool_choice not in ("auto", "none") and tools:
            wanted = "caller"
        if wanted != decision:
            why = "no tools were offered" if not tools else f"tool_choice is {tool_choice!r}"
            overridden = f"the planner decided {decision!r}; {why}, so it is {wanted!r}"
            decision = wanted
        planner_step = Step(role="assistant", content=thought, decision=decision)
        new_steps = [planner_step]
        history = [*steps, planner_step]

        def result(kind: TurnKind, **kw: Any) -> TurnResult:
            return TurnResult(kind, new_steps, thought, decision, overridden=overridden, failures=failures,
                              generations=generations, **kw)  # fmt: skip

        if decision == "give up":
            return result("give_up", finish="stop")
        if decision == "conclusion":
            g = generate("summarizer", builder.summarizer(history), 0)
            finish = "length" if g.stop_reason == "max_new_tokens" else "stop"
            return result("answer", answer=parse_summarizer_output(g.text), finish=finish)

        # caller, with one retry
        named = tool_choice not in ("auto", "none", "required")
        caller_builder = PromptBuilder([t for t in tools if t.name == tool_choice], self.doc_style) \
            if named else builder  # fmt: skip
        caller_prompt = caller_builder.caller(history, prompts.planner_target(thought, "caller"))
        problem = ""
        for attempt in range(2):
            call = parse_caller_output(generate("caller", caller_prompt, attempt).text)
            problem = self._call_problem(call, validator, tool_choice if named else None)
            if not problem:
                assert isinstance(call, ToolCall)
                new_steps.append(Step(role="caller", tool_name=call.tool_name, arguments=call.arguments,
                                      arguments_text=call.arguments_text))  # fmt: skip
                return result("call", call=call, finish="tool_calls")
            kind = call.kind if isinstance(call, ParseFailure) else "invalid_call"
            failures.append({"role": "caller", "kind": kind, "detail": problem, "attempt": attempt})
        return result("failed", message=f"Error: the caller's output could not be used as a tool call: {problem}")

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
