"""One agent step: the planner decides, then the caller writes a call or the summarizer the answer.

The α-UMi loop (umi.agent.loop: many steps, the tools run between them) and the service's turn
(umi.serve.engine.AgentEngine.next_turn: one step of a conversation whose tools the client runs) both take their
steps here, so a role's output is handled one way everywhere:

- decoding: greedy first (the paper's decoding); a retry samples (umi.inference.presets.GenerationSettings.sampling);
- a planner (or single-LLM model) that writes nothing is retried up to `planner_retries` times; still nothing: the
  step ends `planner_empty`;
- a planner that writes no decision: the step goes on as `Next: caller`, its text up to the end of its turn the
  thought (the caller reads it as the planner's thought);
- `decide` (optional) may change the decision before anything acts on it (the service's `tool_choice`);
- give up: nothing more. Conclusion: the summarizer writes the answer. Caller: the caller writes a call; its output
  is untrusted. Without `check` it comes back as parsed (a ParseFailure the loop shows the planner as an
  observation); with `check` (a call the client must be able to run as it stands) an output `check` finds a problem
  with is retried `CALLER_RETRIES` times, sampled, and the step ends with the problem if it stays unusable.

Every generation's timing and every failure is recorded in a StepLog, in the trajectory meta's format; `where`
fields (the loop's `step`) open each record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from umi import prompts
from umi.inference.presets import GenerationSettings
from umi.inference.protocol import Backend, Generation, GenerationRequest
from umi.parsing import (
    GlobalOutput,
    ParseFailure,
    ToolCall,
    parse_caller_output,
    parse_global_output,
    parse_planner_output,
    parse_summarizer_output,
)
from umi.prompts import PromptBuilder, RolePrompt
from umi.schema import Decision, Step

__all__ = ["CALLER_RETRIES", "AgentStep", "Plan", "StepKind", "StepLog", "StepOutcome", "turn_text"]

StepKind = Literal["planner_empty", "give_up", "answer", "call"]
CALLER_RETRIES = 1  # retries of a checked call (one the client runs: it cannot come back to the planner as an error)
Parsed = TypeVar("Parsed")


def turn_text(text: str) -> str:
    """A model's output up to the end of its turn (umi.prompts.TURN_END), stripped."""
    return text.split(prompts.TURN_END, 1)[0].strip()


@dataclass(frozen=True)
class Plan:
    """The planner's turn: its thought, the decision the step acts on, the try that wrote it (0: the first), and
    whether the decision is the fallback for an output that named none."""

    thought: str
    decision: Decision
    attempt: int = 0
    fallback: bool = False

    def step(self) -> Step:
        """The assistant step of the trajectory."""
        return Step(role="assistant", content=self.thought, decision=self.decision)

    def render(self) -> str:
        """The planner's turn as the caller's prompt shows it."""
        return prompts.planner_target(self.thought, self.decision)


@dataclass
class StepLog:
    """Every generation (role, try, timing and token counts) and every failure (role, kind, detail) of an episode or
    turn, as the trajectory's meta holds them."""

    generations: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StepOutcome:
    """How the step ended. `plan`: the planner's turn (None when it wrote nothing), with the decision acted on;
    `planned`: the decision the planner wrote (or its fallback) before `decide`. `call`: the caller's parsed output;
    `problem`: why a checked call cannot be used ("" when it can). `last`: the step's last generation."""

    kind: StepKind
    plan: Plan | None = None
    planned: Decision | None = None
    answer: str | None = None
    call: ToolCall | ParseFailure | None = None
    problem: str = ""
    last: Generation | None = None


class AgentStep:
    """The step over `backends` ({role: Backend}: planner, caller, summarizer; or global), prompts from `builder`,
    generation caps and retries from `settings`. `label` names the generations in messages (a request's record id
    is `<label>:<role>`); `temperature` / `seed`: the first try's decoding (0: greedy)."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        builder: PromptBuilder,
        settings: GenerationSettings,
        *,
        log: StepLog | None = None,
        label: str = "step",
        where: Mapping[str, Any] | None = None,
        temperature: float = 0.0,
        seed: int = 0,
    ):
        self.backends = backends
        self.builder = builder
        self.settings = settings
        self.log = log if log is not None else StepLog()
        self.label = label
        self.where = dict(where or {})
        self.temperature = temperature
        self.seed = seed

    def fail(self, role: str, kind: str, detail: str, **extra: Any) -> None:
        self.log.failures.append({**self.where, "role": role, "kind": kind, "detail": detail, **extra})

    def generate(self, prompt: RolePrompt, attempt: int = 0) -> Generation:
        """One generation of `prompt`'s role; try `attempt` decodes as GenerationSettings.sampling says."""
        temperature, seed = self.settings.sampling(attempt, self.temperature, self.seed)
        request = GenerationRequest(
            prompt=prompt.prompt,
            history_span=prompt.history_span,
            max_new_tokens=int(self.settings.max_new_tokens[prompt.role]),
            temperature=temperature,
            seed=seed,
            record_id=f"{self.label}:{prompt.role}",
        )
        g = self.backends[prompt.role].generate(request)
        self.log.generations.append({**self.where, "role": prompt.role, "attempt": attempt, **g.timing()})
        return g

    def until_written(
        self, prompt: RolePrompt, parse: Callable[[str], Parsed | ParseFailure]
    ) -> tuple[Parsed | ParseFailure, int] | None:
        """(the parsed output, its try) of the first try that wrote something; None when every try wrote nothing."""
        for attempt in range(self.settings.planner_retries + 1):
            parsed = parse(self.generate(prompt, attempt).text)
            if isinstance(parsed, ParseFailure) and parsed.kind == "empty_output":
                self.fail(prompt.role, parsed.kind, parsed.detail)
                continue
            return parsed, attempt
        return None

    # --- α-UMi ----------------------------------------------------------------------------------------------------
    def plan(self, steps: Sequence[Step]) -> Plan | None:
        """The planner's turn after `steps`; None when it wrote nothing, however often retried."""
        written = self.until_written(self.builder.planner(steps), parse_planner_output)
        if written is None:
            return None
        parsed, attempt = written
        if isinstance(parsed, ParseFailure):
            self.fail("planner", parsed.kind, parsed.detail)
            return Plan(turn_text(parsed.text), "caller", attempt, fallback=True)
        return Plan(parsed.thought, parsed.decision, attempt)

    def take(
        self,
        steps: Sequence[Step],
        *,
        decide: Callable[[Plan], Decision] | None = None,
        on_plan: Callable[[Plan], None] | None = None,
        check: Callable[[ToolCall | ParseFailure], str] | None = None,
        caller_builder: PromptBuilder | None = None,
    ) -> StepOutcome:
        """The step after `steps` (which end with a user turn or an observation). `on_plan` sees the planner's turn
        before the caller or summarizer runs (a loop records it and shows it). `caller_builder`: the caller's prompts
        when they offer other tools than the planner's (the service's named tool_choice)."""
        plan = self.plan(steps)
        if plan is None:
            return StepOutcome("planner_empty")
        planned = plan.decision
        if decide is not None and (wanted := decide(plan)) != planned:
            plan = replace(plan, decision=wanted)
        history = [*steps, plan.step()]  # before on_plan, which may append the step to `steps` itself
        if on_plan is not None:
            on_plan(plan)
        if plan.decision == "give up":
            return StepOutcome("give_up", plan, planned)
        if plan.decision == "conclusion":
            g = self.generate(self.builder.summarizer(history))
            return StepOutcome("answer", plan, planned, answer=parse_summarizer_output(g.text), last=g)
        prompt = (caller_builder or self.builder).caller(history, plan.render())
        if check is None:
            g = self.generate(prompt)
            return StepOutcome("call", plan, planned, call=parse_caller_output(g.text), last=g)
        for attempt in range(CALLER_RETRIES + 1):
            g = self.generate(prompt, attempt)
            call = parse_caller_output(g.text)
            problem = check(call)
            if not problem:
                break
            kind = call.kind if isinstance(call, ParseFailure) else "invalid_call"
            self.fail("caller", kind, problem, attempt=attempt)
        return StepOutcome("call", plan, planned, call=call, problem=problem, last=g)

    # --- single-LLM -----------------------------------------------------------------------------------------------
    def global_turn(self, steps: Sequence[Step]) -> GlobalOutput | ParseFailure | None:
        """The single-LLM model's turn after `steps` (thought and call, answer or give-up); None when it wrote
        nothing, however often retried."""
        written = self.until_written(self.builder.global_(steps), parse_global_output)
        return None if written is None else written[0]
