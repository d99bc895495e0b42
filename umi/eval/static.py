"""Static evaluation: every gold assistant step predicted on its gold history (teacher forcing), then scored with the
paper's five metrics (umi.eval.metrics).

α-UMi (and the backbone in the three roles), as the reference's static pipeline runs it:
1. the planner writes a rationale and a decision for every gold step, on the gold history before it;
2. where it decided `caller`, the caller writes the call, given the gold history plus the planner's *predicted*
   step (its rationale is the caller's "thought of this step"); where it decided `conclusion`, the summarizer writes
   the answer on the same history; `give up` ends the step;
3. a planner output without a decision goes on as `Next: caller` with its text as the thought (the agent loop does
   the same), and scores as a missing plan.
Single-LLM: the global model writes thought and action (or conclusion) in one generation per gold step.

Every prompt of a role is known once the previous role is done, so each role's prompts are decoded together by
continuous batching (BatchingBackend.generate_many: `batch_size` rows at a time, a finished row's place taken by
the next prompt at once), in trajectory order, so that a step's prompt is prefilled from the KV cache of the step
before it (the same docs and history, one turn longer). With `static_batching="padded"`: left-padded batches of
prompts sorted by length (generate_batch). Decoding is greedy,
as in the paper; there are no retries (the live loop's sampled retries of an empty planner output are not part of
a teacher-forced step).

Not prompted is not wrong: a step one of whose prompts does not fit the budget even with its whole history dropped
was never put to the agent. Its record says so (`prompted: false`, `not_prompted_role`), it is never scored, and the
metrics are over the prompted steps; the report's paired comparisons run on the steps both agents were prompted on
(umi.eval.evidence). A prompt that fits only with history turns dropped is `cut` (its role is in the record's
`cut_roles`). `call_source` (α-UMi) says whether the caller ran because the planner decided `caller` or after a
planner output with no decision: the summary splits exact actions and hallucinations by it.

Prompts are rendered by umi.prompts.PromptBuilder with the doc style the models were trained with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from umi import prompts
from umi.eval.metrics import (
    Prediction,
    StaticMetrics,
    StaticStep,
    StepScore,
    aggregate,
    gold_steps,
    prediction_from_global,
    prediction_from_roles,
    score_step,
)
from umi.eval.settings import EvalSettings
from umi.inference.protocol import BatchingBackend, Generation, GenerationRequest
from umi.inference.tokens import TooLong
from umi.parsing import (
    ParseFailure,
    parse_caller_output,
    parse_global_output,
    parse_planner_output,
    parse_summarizer_output,
)
from umi.prompts import DocStyle, PromptBuilder, RolePrompt
from umi.schema import RecordError, Step, Trajectory
from umi.vocabulary import AGENT_ROLES

__all__ = ["StaticResult", "run_static", "Progress"]

# called with (role, prompts done so far in this role, prompts of this role in all)
Progress = Callable[[str, int, int], None]
_SHOWN = 2000  # characters of each raw output kept in the per-step records


@dataclass
class StaticResult:
    """metrics: the five metrics (and counts, and the BFCL-grade variants) over `steps`. records: one dict per step
    (gold, prediction, raw role outputs, score) for the predictions file. scores: each step's StepScore.
    generations: role generations run; new_tokens: tokens they wrote; too_long: prompts that did not fit; cut:
    prompts that fit only with history turns dropped; rejected: trajectories that could not be turned into gold
    steps. `metrics` and `scores` cover the prompted steps; `records` every step."""

    metrics: StaticMetrics
    steps: list[StaticStep]
    records: list[dict[str, Any]]
    seconds: float
    generations: int = 0
    new_tokens: int = 0
    too_long: int = 0
    cut: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)
    scores: list[StepScore] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The report's entry for one agent on one test set: the metric fields of StaticMetrics over the prompted
        steps (plan_acc, act_em, hallu, arg_f1, rouge_l as percentages, None when undefined; steps and the other
        counts), `prompts` (how many were cut or did not fit, the steps not prompted), `call_sources` (α-UMi: exact
        actions and hallucinations by why the caller ran), plus timing."""
        out = self.metrics.to_dict()
        out.update(
            seconds=round(self.seconds, 3),
            seconds_per_step=round(self.seconds / self.metrics.steps, 4) if self.metrics.steps else None,
            generations=self.generations,
            new_tokens=self.new_tokens,
            too_long=self.too_long,
            rejected=len(self.rejected),
            prompts={
                "cut": self.cut,
                "not_fitting": self.too_long,
                "steps_not_prompted": sum(not r["prompted"] for r in self.records),
                "steps": len(self.records),
            },
            call_sources=call_sources(self.records),
        )
        return out


# why α-UMi's caller ran at a step: the planner decided `caller`, or it wrote no decision and the step went on as
# `Next: caller` (as the live agent does)
PLANNER_DECIDED = "planner decided caller"
UNDECIDED_PLANNER = "caller after an undecided planner"


def call_sources(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]] | None:
    """{source: {"calls", "exact_actions", "hallucinations"}} over the prompted steps where α-UMi's caller ran, by
    `call_source`; None for records without one (the single LLM, the baselines)."""
    ran = [r for r in records if r.get("prompted", True) and r.get("call_source")]
    if not ran and not any("call_source" in r for r in records):
        return None
    out = {}
    for source in (PLANNER_DECIDED, UNDECIDED_PLANNER):
        mine = [r for r in ran if r["call_source"] == source]
        out[source] = {
            "calls": len(mine),
            "exact_actions": sum(bool((r["score"] or {}).get("action_correct")) for r in mine),
            "hallucinations": sum(bool((r["score"] or {}).get("hallucinated")) for r in mine),
        }
    return out


@dataclass
class _Item:
    """One gold step on its way through the roles."""

    traj: Trajectory
    builder: PromptBuilder
    gold: StaticStep
    outputs: dict[str, str] = field(default_factory=dict)
    parsed: dict[str, Any] = field(default_factory=dict)
    not_prompted_role: str | None = None  # the role whose prompt did not fit: the step was never put to the agent
    cut_roles: list[str] = field(default_factory=list)  # roles whose prompt fit only with history turns dropped
    call_source: str | None = None  # α-UMi: why the caller ran (PLANNER_DECIDED / UNDECIDED_PLANNER)

    @property
    def history(self) -> list[Step]:
        return self.traj.steps[: self.gold.step_index]


class _Runner:
    def __init__(self, settings: EvalSettings, progress: Progress | None):
        self.settings = settings
        self.progress = progress
        self.generations = 0
        self.new_tokens = 0
        self.too_long = 0
        self.cut = 0

    def decode(
        self, backend: BatchingBackend, role: str, jobs: Sequence[tuple[_Item, RolePrompt]]
    ) -> list[Generation | None]:
        """Generate for every job of one role, batched; None where the prompt does not fit."""
        requests = [
            GenerationRequest(
                prompt=p.prompt,
                history_span=p.history_span,
                max_new_tokens=int(self.settings.max_new_tokens[p.role]),
                record_id=item.gold.id,
            )
            for item, p in jobs
        ]
        sized = []  # (prompt tokens, index) of the prompts that fit; one that cannot is counted, not asked for
        for i, r in enumerate(requests):
            item = jobs[i][0]
            try:
                ids, dropped = backend.prompt_ids(r)
            except TooLong:
                self.too_long += 1
                item.not_prompted_role = role
                continue
            sized.append((len(ids), i))
            if dropped:
                self.cut += 1
                item.cut_roles.append(role)
        results: list[Generation | None] = [None] * len(requests)
        finished = len(requests) - len(sized)
        size = self.settings.batch_size
        if self.progress:
            self.progress(role, finished, len(requests))

        def record(i: int, g: Generation) -> None:
            nonlocal finished
            results[i] = g
            self.generations += 1
            self.new_tokens += g.new_tokens
            finished += 1
            if self.progress and (finished % size == 0 or finished == len(requests)):
                self.progress(role, finished, len(requests))

        if self.settings.static_batching == "continuous":
            # in the jobs' order (a trajectory's steps one after another): each prompt's prefill starts from the KV
            # cache of the step before it, and a finished row's place goes to the next prompt at once
            order = [i for _, i in sized]

            def done(j: int, g) -> None:
                if isinstance(g, Generation):
                    record(order[j], g)

            for g in backend.generate_many([requests[i] for i in order], max_rows=size, done=done):
                if isinstance(g, BaseException):
                    raise g
            return results
        order = [i for _, i in sorted(sized)]  # by length: little padding
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            for i, g in zip(chunk, backend.generate_batch([requests[i] for i in chunk], batch_size=size)):
                record(i, g)
        return results


def _gold_items(trajectories: Sequence[Trajectory], doc_style: DocStyle) -> tuple[list[_Item], list[dict[str, str]]]:
    items, rejected = [], []
    for traj in trajectories:
        try:
            golds = gold_steps(traj)
        except RecordError as e:
            rejected.append({"id": e.record_id, "reason": e.reason})
            continue
        builder = PromptBuilder(traj.tools, doc_style)
        items.extend(_Item(traj, builder, g) for g in golds)
    return items, rejected


def _shown(text: str | None) -> str | None:
    return None if text is None else text[:_SHOWN]


def run_static(
    backends: dict[str, BatchingBackend],
    trajectories: Sequence[Trajectory],
    *,
    settings: EvalSettings | None = None,
    doc_style: DocStyle = prompts.DEFAULT_DOC_STYLE,
    progress: Progress | None = None,
) -> StaticResult:
    """Predict and score every gold assistant step of `trajectories`.

    backends: role -> BatchingBackend (umi.eval.agents.load_agent_backends, the no-call baseline's fixed outputs):
    planner, caller and summarizer for the α-UMi format, or `global` alone for the single-LLM format."""
    settings = settings or EvalSettings()
    started = time.perf_counter()
    items, rejected = _gold_items(trajectories, doc_style)
    runner = _Runner(settings, progress)
    if "global" in backends:
        predictions = _single(runner, backends["global"], items)
    elif set(AGENT_ROLES) <= set(backends):
        predictions = _multi(runner, backends, items)
    else:
        raise ValueError(f"backends must be planner+caller+summarizer or global, got {sorted(backends)}")
    scored: list[tuple[StaticStep, StepScore]] = []
    records = []
    for item, prediction in zip(items, predictions):
        step = item.gold.with_prediction(prediction)
        prompted = item.not_prompted_role is None
        score = score_step(step)
        if prompted:  # a step never put to the agent is not scored (neither right nor wrong)
            scored.append((step, score))
        records.append(
            {
                "id": step.id,
                "gold": {
                    "plan": step.gold_plan,
                    "tool": step.gold_tool,
                    "arguments": step.gold_arguments,
                    "answer": step.gold_answer,
                },
                "predicted": {
                    "plan": step.predicted_plan,
                    "tool": step.predicted_tool,
                    "arguments": step.predicted_arguments,
                    "answer": step.predicted_answer,
                },
                "outputs": {role: _shown(text) for role, text in item.outputs.items()},
                "trajectory_id": step.trajectory_id,
                "category": step.category,
                "prompted": prompted,
                "not_prompted_role": item.not_prompted_role,
                "cut_roles": item.cut_roles,
                **({"call_source": item.call_source} if "planner" in backends else {}),
                "score": None
                if not prompted
                else {
                    "plan_correct": score.plan_correct,
                    "action_correct": score.action_correct,
                    "hallucinated": score.hallucinated,
                    "arg_f1": score.arg_f1,
                    "rouge_l": score.rouge_l,
                    "action_correct_bfcl": score.action_correct_bfcl,
                    "arg_f1_bfcl": score.arg_f1_bfcl,
                    "ast_correct_bfcl": score.ast_correct_bfcl,
                },
            }
        )
    return StaticResult(
        metrics=aggregate(s for _, s in scored),
        steps=[s for s, _ in scored],
        records=records,
        seconds=time.perf_counter() - started,
        generations=runner.generations,
        new_tokens=runner.new_tokens,
        too_long=runner.too_long,
        cut=runner.cut,
        rejected=rejected,
        scores=[sc for _, sc in scored],
    )


def _multi(runner: _Runner, backends: dict[str, BatchingBackend], items: list[_Item]):
    planned = runner.decode(backends["planner"], "planner", [(it, it.builder.planner(it.history)) for it in items])
    callers, summaries = [], []
    for item, g in zip(items, planned):
        if g is None:  # the prompt does not fit: no prediction at all
            item.parsed["planner"] = None
            continue
        item.outputs["planner"] = g.text
        parsed = parse_planner_output(g.text)
        item.parsed["planner"] = parsed
        if isinstance(parsed, ParseFailure):
            # as the agent loop: no decision -> go on as `Next: caller` with the planner's text as the thought
            thought = g.text.split(prompts.TURN_END, 1)[0].strip()
            decision = "caller"
        else:
            thought, decision = parsed.thought, parsed.decision
        steps = [*item.history, Step(role="assistant", content=thought, decision=decision)]
        if decision == "caller":
            item.call_source = UNDECIDED_PLANNER if isinstance(parsed, ParseFailure) else PLANNER_DECIDED
            callers.append((item, item.builder.caller(steps, prompts.planner_target(thought, decision))))
        elif decision == "conclusion":
            summaries.append((item, item.builder.summarizer(steps)))
    for (item, _), g in zip(callers, runner.decode(backends["caller"], "caller", callers)):
        if g is None:
            item.call_source = None  # the caller was never prompted
        else:
            item.outputs["caller"] = g.text
            item.parsed["caller"] = parse_caller_output(g.text)
    for (item, _), g in zip(summaries, runner.decode(backends["summarizer"], "summarizer", summaries)):
        if g is not None:
            item.outputs["summarizer"] = g.text
            item.parsed["summarizer"] = parse_summarizer_output(g.text)
    out = []
    for item in items:
        planner = item.parsed.get("planner")
        if planner is None:
            out.append(Prediction())
            continue
        out.append(prediction_from_roles(planner, item.parsed.get("caller"), item.parsed.get("summarizer")))
    return out


def _single(runner: _Runner, backend: BatchingBackend, items: list[_Item]):
    generated = runner.decode(backend, "global", [(it, it.builder.global_(it.history)) for it in items])
    out = []
    for item, g in zip(items, generated):
        if g is None:
            out.append(Prediction())
            continue
        item.outputs["global"] = g.text
        out.append(prediction_from_global(parse_global_output(g.text)))
    return out
