"""The agent loops: α-UMi (planner -> caller -> tool -> planner ... -> summarizer) and the single-LLM baseline.

α-UMi, one episode:

    user query
    repeat up to max_steps planner turns:
        planner writes a thought and `Next: caller | conclusion | give up`
        caller  -> the caller writes `Action / Action Input`; the tool runs; its observation joins the history
        conclusion -> the summarizer writes the final answer; done
        give up -> done, no answer

Each planner turn and what follows it is one agent step (umi.agent.step.AgentStep, which the service's chat turn
takes too); this module runs the tools between steps and keeps the episode's record.

Single-LLM baseline: the global model writes the thought and the call (or `conclusion: <answer>`, or
`conclusion: give up.`) in one generation (the step's `global_turn`, with the same retries); tools run the same way.

Model output is untrusted. Nothing here evaluates it; every way it can go wrong ends as an observation the planner
reads on its next turn, or as a clean end of the episode:
- caller output without an action, with an empty name, without `Action Input`, with bad JSON or non-object
  arguments: the parser's ParseFailure becomes the observation (and the caller step records what was readable);
- unknown tool, arguments that violate the tool's schema, a tool that raises or times out: the tool runtime's
  dispatch returns an error observation (umi.tools.registry); an exception escaping dispatch anyway is caught here
  and reported the same way (the failure's kind in meta is the observation's `error_kind`);
- a planner that writes nothing: retried up to `planner_retries` times with sampling (greedy decoding would write
  nothing again), then the episode ends (`planner_empty`);
- a planner that writes no decision: the loop goes on as `Next: caller` (the caller gets the planner's text as its
  thought), recorded as a failure in the trajectory's meta;
- a prompt that no longer fits the context even with the whole history dropped: the episode ends
  (`context_exhausted`).

Prompts come from umi.prompts.PromptBuilder (the same rendering as training); observations are cut to
`observation_limit` characters when stored (umi.prompts.cut_observation), as the history rendering cuts them in
training.

Output: an AgentResult with the umi.schema.Trajectory of what happened (steps in the training format, so an episode
can be scored or reused as data) and the final answer; the trajectory's meta holds the status, every generation's
timing and prefill counts, every failure, and tool timings. `on_event` receives an AgentEvent as each step happens
(a CLI prints them, a service streams them).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from umi import prompts
from umi.agent.step import AgentStep, Plan, StepLog, turn_text
from umi.inference.presets import MAX_STEPS, GenerationSettings
from umi.inference.protocol import Backend
from umi.inference.tokens import TooLong
from umi.parsing import GlobalAnswer, GlobalCall, GlobalGiveUp, ParseFailure, ToolCall
from umi.prompts import DocStyle, PromptBuilder, cut_observation
from umi.schema import Step, ToolSpec, Trajectory
from umi.vocabulary import ALPHA_UMI, SINGLE_LLM

__all__ = [
    "AgentConfig",
    "AgentEvent",
    "AgentResult",
    "AlphaUMiAgent",
    "EventKind",
    "Observation",
    "SingleLLMAgent",
    "Status",
    "ToolRuntime",
]

Status = Literal["answered", "gave_up", "max_steps", "planner_empty", "context_exhausted"]
EventKind = Literal["planner", "caller", "observation", "answer", "give_up", "end"]
NO_ACTION = "(no action)"  # the caller step's tool name when the model named none


@runtime_checkable
class Observation(Protocol):
    """A tool's result as the runtime reports it (umi.tools.registry.Observation): the text the planner reads, and
    whether the call succeeded; a failed one may name its `error_kind` (unknown_tool, invalid_arguments, tool_error,
    timeout)."""

    text: str
    ok: bool


@runtime_checkable
class ToolRuntime(Protocol):
    """The tools of one episode: their schemas, and a dispatch that runs one call and never raises (an unknown tool,
    a schema violation, an exception or a timeout comes back as an observation with ok=False).
    umi.tools.registry.ToolRegistry is one; umi.tools.bfcl.BFCLToolkit is one per BFCL entry (its state lives in it)."""

    @property
    def specs(self) -> list[ToolSpec]: ...

    def dispatch(self, name: str, arguments: dict[str, Any]) -> Observation: ...


@dataclass(frozen=True)
class AgentConfig(GenerationSettings):
    """The generation settings (umi.inference.presets: caps per role, planner retries and their temperature; the
    defaults are its AGENT preset) and the episode's own: max_steps, planner (or single-LLM) turns per episode; the
    observation limit and tool-doc style of the prompts."""

    max_steps: int = MAX_STEPS
    observation_limit: int | None = prompts.OBSERVATION_LIMIT
    doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")

    @classmethod
    def from_generation(cls, generation: GenerationSettings, **episode: Any) -> "AgentConfig":
        """The config of `generation`'s settings (a preset of umi.inference.presets) with the episode fields given."""
        shared = {f.name: getattr(generation, f.name) for f in fields(GenerationSettings)}
        return cls(**{**shared, "max_new_tokens": generation.caps(), **episode})


@dataclass(frozen=True)
class AgentEvent:
    """One thing that happened. `step` is the planner turn it belongs to (1-based). `text` is what a user would be
    shown (a thought, a call, an observation, the answer); `data` the details (parsed fields, failure, timing)."""

    kind: EventKind
    step: int
    text: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class AgentResult:
    trajectory: Trajectory
    answer: str | None
    status: Status

    @property
    def steps(self) -> int:
        """Planner (or single-LLM) turns this episode took (earlier turns passed as `history` not counted)."""
        return int(self.trajectory.meta["planner_steps"])


class _Episode:
    """The mutable state of one run: steps so far, meta records, event delivery."""

    def __init__(
        self,
        agent: str,
        query: str,
        runtime: ToolRuntime,
        history: Sequence[Step],
        task_id: str | None,
        config: AgentConfig,
        on_event: Callable[[AgentEvent], None] | None,
    ):
        self.agent = agent
        self.query = query
        self.runtime = runtime
        self.tools = [t if isinstance(t, ToolSpec) else ToolSpec.model_validate(t) for t in runtime.specs]
        self.steps: list[Step] = [*history, Step(role="user", content=query)]
        self.task_id = task_id or f"{agent}-{uuid.uuid4().hex[:12]}"
        self.config = config
        self.on_event = on_event
        self.builder = PromptBuilder(self.tools, config.doc_style, config.observation_limit)
        self.log = StepLog()
        self.generations, self.failures = self.log.generations, self.log.failures
        self.tool_calls: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.step = 0

    def emit(self, kind: EventKind, text: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(AgentEvent(kind, self.step, text, data))

    def fail(self, role: str, kind: str, detail: str) -> None:
        self.failures.append({"step": self.step, "role": role, "kind": kind, "detail": detail})

    def agent_step(self, backends: Mapping[str, Backend]) -> AgentStep:
        """The shared step (umi.agent.step) for this planner turn, recording into this episode's meta."""
        return AgentStep(
            backends,
            self.builder,
            self.config,
            log=self.log,
            label=f"{self.task_id}#{self.step}",
            where={"step": self.step},
        )

    def planned(self, plan: Plan) -> None:
        """Record and show the planner's turn (before the caller or summarizer acts on it)."""
        self.steps.append(plan.step())
        self.emit("planner", plan.thought, decision=plan.decision, attempt=plan.attempt)

    def run_tool(self, call: ToolCall) -> tuple[str, bool]:
        started = time.perf_counter()
        try:
            obs = self.runtime.dispatch(call.tool_name, call.arguments)
            text, ok = str(getattr(obs, "text", obs)), bool(getattr(obs, "ok", True))
            kind = getattr(obs, "error_kind", None) or "tool_error"
        except Exception as e:  # the runtime should report errors itself; a leak must not end the episode
            text, ok, kind = f"Error: the tool {call.tool_name!r} failed: {type(e).__name__}: {e}", False, "tool_error"
        seconds = time.perf_counter() - started
        self.tool_calls.append(
            {
                "step": self.step,
                "tool": call.tool_name,
                "ok": ok,
                "error_kind": None if ok else kind,
                "seconds": round(seconds, 6),
                "observation_chars": len(text),
            }
        )
        if not ok:
            self.fail("tool", kind, text[:200])
        return text, ok

    def observe(self, text: str, ok: bool) -> None:
        shown = cut_observation(text, self.config.observation_limit)
        self.steps.append(Step(role="observation", content=shown))
        self.emit("observation", shown, ok=ok, chars=len(text))

    def call_step(self, parsed: ToolCall | ParseFailure) -> None:
        """Record the caller step and the observation that follows it (a tool result or the parse failure)."""
        if isinstance(parsed, ToolCall):
            self.steps.append(
                Step(
                    role="caller",
                    tool_name=parsed.tool_name,
                    arguments=parsed.arguments,
                    arguments_text=parsed.arguments_text,
                )
            )
            self.emit("caller", parsed.render(), tool=parsed.tool_name, arguments=parsed.arguments)
            text, ok = self.run_tool(parsed)
        else:
            self.fail(parsed.role, parsed.kind, parsed.detail)
            self.steps.append(
                Step(role="caller", tool_name=parsed.tool_name or NO_ACTION, arguments_text=parsed.arguments_text or "")
            )
            self.emit("caller", parsed.text, failure=parsed.kind, detail=parsed.detail)
            text, ok = parsed.observation(), False
        self.observe(text, ok)

    def finish(self, status: Status, answer: str | None) -> AgentResult:
        totals: dict[str, float] = {
            "prompt_tokens": 0,
            "prefill_tokens": 0,
            "reused_tokens": 0,
            "new_tokens": 0,
            "generation_seconds": 0.0,
        }
        for g in self.generations:
            for key in ("prompt_tokens", "prefill_tokens", "reused_tokens", "new_tokens"):
                totals[key] += g[key]
            totals["generation_seconds"] += g["seconds"]
        totals["tool_seconds"] = sum(t["seconds"] for t in self.tool_calls)
        totals["seconds"] = time.perf_counter() - self.started
        totals = {k: round(v, 6) if isinstance(v, float) else v for k, v in totals.items()}
        trajectory = Trajectory(
            id=self.task_id,
            source="agent",
            tools=self.tools,
            instruction=self.query,
            steps=self.steps,
            meta={
                "agent": self.agent,
                "status": status,
                "planner_steps": self.step,
                "generations": self.generations,
                "failures": self.failures,
                "tool_calls": self.tool_calls,
                "totals": totals,
                "config": {**asdict(self.config), "max_new_tokens": dict(self.config.max_new_tokens)},
            },
        )
        self.emit("end", answer or "", status=status, totals=totals)
        return AgentResult(trajectory=trajectory, answer=answer, status=status)


class _StepCapped:
    config: AgentConfig

    def with_max_steps(self, at_least: int):
        """This agent with at least `at_least` planner turns per episode (a shallow copy: the backends are shared)."""
        if self.config.max_steps >= at_least:
            return self
        capped = copy.copy(self)
        capped.config = dataclasses.replace(self.config, max_steps=at_least)
        return capped


class AlphaUMiAgent(_StepCapped):
    """The three-role agent. Pass one backend to play every role, or one per role."""

    name = ALPHA_UMI

    def __init__(
        self,
        planner: Backend,
        caller: Backend | None = None,
        summarizer: Backend | None = None,
        config: AgentConfig | None = None,
    ):
        self.planner = planner
        self.caller = caller or planner
        self.summarizer = summarizer or planner
        self.config = config or AgentConfig()

    @classmethod
    def from_checkpoints(
        cls,
        planner: str | Path,
        caller: str | Path | None = None,
        summarizer: str | Path | None = None,
        *,
        config: AgentConfig | None = None,
        **backend_options: Any,
    ) -> "AlphaUMiAgent":
        """Agents over checkpoint directories (trained roles, or one backbone in every role). A directory named
        for several roles is loaded once and shared. `backend_options` go to umi.inference.loading.load_backends."""
        from umi.inference.loading import load_backends

        dirs = {"planner": planner, "caller": caller or planner, "summarizer": summarizer or planner}
        backends = load_backends(dirs, **backend_options)
        return cls(backends["planner"], backends["caller"], backends["summarizer"], config=config)

    def reset(self) -> None:
        """Forget the backends' cached state (a new conversation)."""
        for backend in {id(b): b for b in (self.planner, self.caller, self.summarizer)}.values():
            backend.reset()

    def run(
        self,
        query: str,
        tools: ToolRuntime,
        *,
        history: Sequence[Step] = (),
        task_id: str | None = None,
        on_event: Callable[[AgentEvent], None] | None = None,
    ) -> AgentResult:
        """One episode for `query` with `tools`. `history`: steps of earlier turns of the same conversation (a BFCL
        multi-turn entry), which the prompts include before the new user turn."""
        ep = _Episode(self.name, query, tools, history, task_id, self.config, on_event)
        backends = {"planner": self.planner, "caller": self.caller, "summarizer": self.summarizer}
        try:
            while ep.step < self.config.max_steps:
                ep.step += 1
                outcome = ep.agent_step(backends).take(ep.steps, on_plan=ep.planned)
                if outcome.kind == "planner_empty":
                    return ep.finish("planner_empty", None)
                if outcome.kind == "give_up":
                    assert outcome.plan is not None
                    ep.emit("give_up", outcome.plan.thought)
                    return ep.finish("gave_up", None)
                if outcome.kind == "answer":
                    answer = outcome.answer or ""
                    ep.steps.append(Step(role="conclusion", content=answer))
                    ep.emit("answer", answer)
                    return ep.finish("answered", answer)
                assert outcome.call is not None
                ep.call_step(outcome.call)
            return ep.finish("max_steps", None)
        except TooLong as e:
            ep.fail("context", "too_long", str(e))
            return ep.finish("context_exhausted", None)


class SingleLLMAgent(_StepCapped):
    """The single-LLM baseline: the global model writes thought and action (or conclusion) in one generation."""

    name = SINGLE_LLM

    def __init__(self, model: Backend, config: AgentConfig | None = None):
        self.model = model
        self.config = config or AgentConfig()

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, config: AgentConfig | None = None, **backend_options: Any
    ) -> "SingleLLMAgent":
        """The agent over one checkpoint directory; `backend_options` go to umi.inference.loading.load_backends."""
        from umi.inference.loading import load_backend

        return cls(load_backend(path, **backend_options), config=config)

    def reset(self) -> None:
        """Forget the backend's cached state (a new conversation)."""
        self.model.reset()

    def run(
        self,
        query: str,
        tools: ToolRuntime,
        *,
        history: Sequence[Step] = (),
        task_id: str | None = None,
        on_event: Callable[[AgentEvent], None] | None = None,
    ) -> AgentResult:
        ep = _Episode(self.name, query, tools, history, task_id, self.config, on_event)
        try:
            while ep.step < self.config.max_steps:
                ep.step += 1
                parsed = ep.agent_step({"global": self.model}).global_turn(ep.steps)
                if parsed is None:
                    return ep.finish("planner_empty", None)
                if isinstance(parsed, GlobalGiveUp):
                    ep.steps.append(Step(role="assistant", content=parsed.thought, decision="give up"))
                    ep.emit("planner", parsed.thought, decision="give up")
                    ep.emit("give_up", parsed.thought)
                    return ep.finish("gave_up", None)
                if isinstance(parsed, GlobalAnswer):
                    ep.steps.append(Step(role="assistant", content=parsed.thought, decision="conclusion"))
                    ep.emit("planner", parsed.thought, decision="conclusion")
                    ep.steps.append(Step(role="conclusion", content=parsed.answer))
                    ep.emit("answer", parsed.answer)
                    return ep.finish("answered", parsed.answer)
                if isinstance(parsed, GlobalCall):
                    thought, call = parsed.thought, parsed.call
                else:  # a ParseFailure: the readable thought and whatever of the call could be read
                    thought, call = (parsed.thought if parsed.thought is not None else turn_text(parsed.text)), parsed
                ep.steps.append(Step(role="assistant", content=thought, decision="caller"))
                ep.emit("planner", thought, decision="caller")
                ep.call_step(call)
            return ep.finish("max_steps", None)
        except TooLong as e:
            ep.fail("context", "too_long", str(e))
            return ep.finish("context_exhausted", None)


def build_agent(
    backends: Mapping[str, Backend],
    generation: GenerationSettings,
    *,
    max_steps: int = MAX_STEPS,
    doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE,
) -> AlphaUMiAgent | SingleLLMAgent:
    """The agent over loaded backends: single-LLM when there is a `global` backend, else α-UMi. Evaluation gets this
    function from its caller (umi.cli.eval, flows): it rolls agents out without importing them."""
    config = AgentConfig.from_generation(generation, max_steps=max_steps, doc_style=doc_style)
    if "global" in backends:
        return SingleLLMAgent(backends["global"], config=config)
    return AlphaUMiAgent(backends["planner"], backends["caller"], backends["summarizer"], config=config)
