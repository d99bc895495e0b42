"""The paper's five static metrics (teacher-forced, one assistant step at a time on the gold history).

Each gold assistant step is one `StaticStep`: the gold plan label (call / finish / give up), the gold tool, arguments
and answer, the tool names on offer, and what the agent predicted at that step (any part may be missing).
`score_step` scores one step, `aggregate` turns step scores into `StaticMetrics` (percentages plus the counts behind
them); `static_metrics` does both.

| metric   | over              | a step scores                                                               |
|----------|-------------------|-----------------------------------------------------------------------------|
| Plan ACC | all steps         | 1 if the predicted plan label equals the gold one (no prediction: 0)        |
| Act. EM  | gold call steps   | 1 if the predicted tool name equals the gold one exactly (no prediction: 0) |
| Hallu.   | all steps         | 1 if a predicted tool name is not in the step's tool list (lower: better)   |
| Arg. F1  | gold call steps   | see below                                                                   |
| R-L      | gold finish steps | ROUGE-L F (`rouge-score`, no stemming), predicted vs gold answer (none: 0)  |

Arg. F1 of one gold call step: 0 if the predicted tool name is not the gold one (or missing). Otherwise each gold key
scores 1 when the prediction has it with an equal value, 0.5 when it has it with another value, 0 when absent;
P = score / |predicted keys|, R = score / |gold keys|, F1 = 2PR / (P + R) (0 when P + R = 0). Gold `{}` scores 1 only
when the prediction is `{}`. The metric is the mean over steps.

Choices where the definition is silent (each pinned by a test in tests/code/test_metrics.py):
- Value equality is JSON equality: numbers by value (1 == 1.0), booleans only equal booleans (true != 1, unlike
  Python's ==), strings exactly (no strip, no case folding: `" Paris"` is another value than `"Paris"`, as in the
  reference's plain comparison), arrays in order, objects by key set and values, recursively.
- Predicted arguments given as text are parsed as the agent would execute them (umi.agent.parsing.parse_arguments:
  first JSON value, must be an object); text that does not parse, or a non-object, scores 0. Missing predicted
  arguments with the right tool also score 0 (the reference's evaluation scripts substituted `{}`; a call without
  arguments is a malformed action to the agent, so we do not).
- A gold call whose arguments are not a JSON object (raw ToolBench text can be broken JSON) cannot be scored: the
  step is left out of Arg. F1 and counted in `gold_arguments_unscorable` (the reference dropped such steps silently).
  Act. EM still counts it.
- A metric over zero steps is None (undefined), not 0: e.g. R-L of a test set without finish steps.
- Give-up steps count in Plan ACC and Hallu. only. Hallu. looks at any predicted tool name, whatever the gold plan.
- R-L uses rouge-score's default tokenizer (lower-cased ASCII letters and digits); the paper's reference used the
  `rouge` package, whose tokenisation differs, so R-L is comparable in kind, not digit for digit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rouge_score import rouge_scorer

from umi.agent.parsing import (
    GlobalAnswer,
    GlobalCall,
    GlobalGiveUp,
    GlobalOutput,
    ParseFailure,
    PlannerOutput,
    ToolCall,
    parse_arguments,
)
from umi.schema import Decision, RecordError, Trajectory

__all__ = [
    "PlanLabel",
    "PLAN_LABELS",
    "plan_label",
    "StaticStep",
    "Prediction",
    "prediction_from_roles",
    "prediction_from_global",
    "gold_steps",
    "json_equal",
    "arguments_f1",
    "ArgOutcome",
    "StepScore",
    "StaticMetrics",
    "score_step",
    "aggregate",
    "static_metrics",
]

PlanLabel = Literal["call", "finish", "give up"]
PLAN_LABELS: tuple[PlanLabel, ...] = ("call", "finish", "give up")
_PLAN_OF_DECISION: dict[str, PlanLabel] = {"caller": "call", "conclusion": "finish", "give up": "give up"}

# why a gold call step got the Arg. F1 it got
ArgOutcome = Literal["scored", "wrong_tool", "missing_arguments", "unparseable_prediction", "gold_unscorable"]


def plan_label(decision: Decision) -> PlanLabel:
    """caller -> call, conclusion -> finish, give up -> give up."""
    try:
        return _PLAN_OF_DECISION[decision]
    except KeyError:
        raise ValueError(f"unknown decision {decision!r} (caller / conclusion / give up)") from None


# --- records ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """What the agent produced at one step; None where it produced nothing. `arguments` is an object, or the text
    the model wrote when it did not parse (scored 0)."""

    plan: PlanLabel | None = None
    tool: str | None = None
    arguments: dict[str, Any] | str | None = None
    answer: str | None = None


class StaticStep(BaseModel):
    """One gold assistant step and the agent's prediction for it.

    Gold: `gold_plan`; for a call `gold_tool` and `gold_arguments` (an object, or the source text when it is not one);
    for a finish `gold_answer`. Predicted fields are None when the agent produced nothing; the runner fills
    `predicted_tool` / `predicted_arguments` only when a call was produced (with plan `call`, or with no readable
    plan), `predicted_answer` only when an answer was."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    tool_names: tuple[str, ...]
    gold_plan: PlanLabel
    gold_tool: str | None = None
    gold_arguments: dict[str, Any] | str | None = None
    gold_answer: str | None = None
    predicted_plan: PlanLabel | None = None
    predicted_tool: str | None = Field(default=None, min_length=1)
    predicted_arguments: dict[str, Any] | str | None = None
    predicted_answer: str | None = None
    trajectory_id: str | None = None  # where the step came from, for the runner to rebuild its history
    step_index: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "StaticStep":
        if self.gold_plan == "call":
            if not self.gold_tool or self.gold_arguments is None:
                raise ValueError("a gold call step needs gold_tool and gold_arguments")
            if self.gold_answer is not None:
                raise ValueError("a gold call step cannot carry a gold_answer")
        else:
            if self.gold_tool is not None or self.gold_arguments is not None:
                raise ValueError(f"a gold {self.gold_plan} step cannot carry a gold tool call")
            if self.gold_plan == "finish" and self.gold_answer is None:
                raise ValueError("a gold finish step needs gold_answer")
            if self.gold_plan == "give up" and self.gold_answer is not None:
                raise ValueError("a gold give up step cannot carry a gold_answer")
        if (self.predicted_tool is not None or self.predicted_arguments is not None) and self.predicted_plan not in (
            "call",
            None,
        ):
            raise ValueError(f"a predicted tool call with predicted plan {self.predicted_plan!r}")
        if self.predicted_arguments is not None and self.predicted_tool is None:
            raise ValueError("predicted arguments without a predicted tool")
        if self.predicted_answer is not None and self.predicted_plan not in ("finish", None):
            raise ValueError(f"a predicted answer with predicted plan {self.predicted_plan!r}")
        return self

    def with_prediction(self, prediction: Prediction) -> "StaticStep":
        """A copy carrying `prediction` (validated; RecordError naming the step when inconsistent)."""
        data = self.model_dump()
        data.update(
            predicted_plan=prediction.plan,
            predicted_tool=prediction.tool,
            predicted_arguments=prediction.arguments,
            predicted_answer=prediction.answer,
        )
        try:
            return StaticStep.model_validate(data)
        except ValidationError as e:
            raise RecordError(self.id, "; ".join(err["msg"] for err in e.errors())) from None


def prediction_from_roles(
    planner: PlannerOutput | ParseFailure,
    caller: ToolCall | ParseFailure | None = None,
    answer: str | None = None,
) -> Prediction:
    """The α-UMi prediction: the planner's decision, the caller's call (when the caller ran), the summarizer's answer
    (when it ran). A caller failure still gives the tool name and argument text it wrote, when readable."""
    plan = None if isinstance(planner, ParseFailure) else plan_label(planner.decision)
    tool: str | None = None
    arguments: dict[str, Any] | str | None = None
    if isinstance(caller, ToolCall):
        tool, arguments = caller.tool_name, caller.arguments
    elif isinstance(caller, ParseFailure):
        tool = caller.tool_name
        arguments = caller.arguments_text if tool is not None else None
    return Prediction(plan=plan, tool=tool, arguments=arguments, answer=answer)


def prediction_from_global(output: GlobalOutput | ParseFailure) -> Prediction:
    """The single-LLM prediction. A failure after an `Action:` label is still a call (plan `call`, the name and
    argument text when readable); a failure with no label has no plan."""
    if isinstance(output, GlobalCall):
        return Prediction(plan="call", tool=output.call.tool_name, arguments=output.call.arguments)
    if isinstance(output, GlobalAnswer):
        return Prediction(plan="finish", answer=output.answer)
    if isinstance(output, GlobalGiveUp):
        return Prediction(plan="give up")
    if output.kind in ("empty_output", "no_action", "no_decision"):
        return Prediction()
    tool = output.tool_name
    return Prediction(plan="call", tool=tool, arguments=output.arguments_text if tool is not None else None)


def gold_steps(trajectory: Trajectory) -> list[StaticStep]:
    """One StaticStep per assistant step of a gold trajectory, without predictions (id `<trajectory id>#<index>`).
    RecordError when a decision is not followed by the step it announces."""
    steps = trajectory.steps
    names = tuple(t.name for t in trajectory.tools)
    out: list[StaticStep] = []
    for i, step in enumerate(steps):
        if step.role != "assistant":
            continue
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        fields: dict[str, Any] = {}
        if step.decision == "caller":
            if nxt is None or nxt.role != "caller":
                raise RecordError(trajectory.id, f"step {i}: decided 'caller' but no caller step follows")
            fields = {
                "gold_tool": nxt.tool_name,
                "gold_arguments": nxt.arguments if nxt.arguments is not None else nxt.arguments_text,
            }
        elif step.decision == "conclusion":
            if nxt is None or nxt.role != "conclusion":
                raise RecordError(trajectory.id, f"step {i}: decided 'conclusion' but no conclusion step follows")
            fields = {"gold_answer": nxt.content}
        out.append(
            StaticStep(
                id=f"{trajectory.id}#{i}",
                tool_names=names,
                gold_plan=plan_label(step.decision),  # type: ignore[arg-type]
                trajectory_id=trajectory.id,
                step_index=i,
                **fields,
            )
        )
    return out


# --- scoring ---------------------------------------------------------------------------------------------------------
def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value, booleans only with booleans, strings exactly, recursively."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


def arguments_f1(gold: dict[str, Any], predicted: dict[str, Any]) -> float:
    """Arg. F1 of two argument objects (the tool names already agree)."""
    if not gold:
        return 1.0 if not predicted else 0.0
    score = sum((1.0 if json_equal(predicted[k], v) else 0.5) for k, v in gold.items() if k in predicted)
    if score == 0.0:
        return 0.0
    precision = score / len(predicted)
    recall = score / len(gold)
    return 2 * precision * recall / (precision + recall)


def _as_object(arguments: dict[str, Any] | str) -> dict[str, Any] | None:
    if isinstance(arguments, dict):
        return arguments
    parsed = parse_arguments(arguments)
    return None if isinstance(parsed, ParseFailure) else parsed[0]


@dataclass(frozen=True)
class StepScore:
    """One step's contribution; None where the metric does not cover the step's gold plan."""

    id: str
    gold_plan: PlanLabel
    plan_correct: bool
    hallucinated: bool
    plan_missing: bool
    action_correct: bool | None = None  # gold call steps
    arg_f1: float | None = None  # gold call steps with a scorable gold
    arg_outcome: ArgOutcome | None = None  # gold call steps
    rouge_l: float | None = None  # gold finish steps


_SCORER: rouge_scorer.RougeScorer | None = None


def _default_scorer() -> rouge_scorer.RougeScorer:
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return _SCORER


def score_step(step: StaticStep, scorer: rouge_scorer.RougeScorer | None = None) -> StepScore:
    """Score one step. `scorer`: a rouge-score RougeScorer with a `rougeL` type (default: no stemming)."""
    hallucinated = step.predicted_tool is not None and step.predicted_tool not in step.tool_names
    action_correct = arg_f1 = arg_outcome = rouge_l = None
    if step.gold_plan == "call":
        action_correct = step.predicted_tool is not None and step.predicted_tool == step.gold_tool
        gold_args = _as_object(step.gold_arguments)  # type: ignore[arg-type]
        if gold_args is None:
            arg_outcome = "gold_unscorable"
        elif not action_correct:
            arg_f1, arg_outcome = 0.0, "wrong_tool"
        elif step.predicted_arguments is None:
            arg_f1, arg_outcome = 0.0, "missing_arguments"
        else:
            predicted_args = _as_object(step.predicted_arguments)
            if predicted_args is None:
                arg_f1, arg_outcome = 0.0, "unparseable_prediction"
            else:
                arg_f1, arg_outcome = arguments_f1(gold_args, predicted_args), "scored"
    elif step.gold_plan == "finish":
        if step.predicted_answer is None:
            rouge_l = 0.0
        else:
            result = (scorer or _default_scorer()).score(step.gold_answer or "", step.predicted_answer)
            rouge_l = float(result["rougeL"].fmeasure)
    return StepScore(
        id=step.id,
        gold_plan=step.gold_plan,
        plan_correct=step.predicted_plan == step.gold_plan,
        hallucinated=hallucinated,
        plan_missing=step.predicted_plan is None,
        action_correct=action_correct,
        arg_f1=arg_f1,
        arg_outcome=arg_outcome,
        rouge_l=rouge_l,
    )


@dataclass(frozen=True)
class StaticMetrics:
    """The five metrics as percentages (None: no step to average over) and the counts behind them."""

    plan_acc: float | None
    act_em: float | None
    hallu: float | None
    arg_f1: float | None
    rouge_l: float | None
    steps: int
    call_steps: int
    finish_steps: int
    give_up_steps: int
    arg_f1_steps: int  # gold call steps scored for Arg. F1
    gold_arguments_unscorable: int  # gold call steps left out of Arg. F1
    predicted_arguments_unparseable: int  # right tool, arguments not a JSON object (scored 0)
    predicted_arguments_missing: int  # right tool, no arguments (scored 0)
    hallucinated_steps: int
    plan_missing: int  # steps with no readable predicted plan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> dict[str, float | None]:
        """The five numbers under the paper's column names."""
        return {
            "Plan ACC": self.plan_acc,
            "Act. EM": self.act_em,
            "Hallu.": self.hallu,
            "Arg. F1": self.arg_f1,
            "R-L": self.rouge_l,
        }


def _percent(values: Sequence[float]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def aggregate(scores: Iterable[StepScore]) -> StaticMetrics:
    scores = list(scores)
    calls = [s for s in scores if s.gold_plan == "call"]
    finishes = [s for s in scores if s.gold_plan == "finish"]
    arg_scored = [s.arg_f1 for s in calls if s.arg_f1 is not None]
    return StaticMetrics(
        plan_acc=_percent([float(s.plan_correct) for s in scores]),
        act_em=_percent([float(bool(s.action_correct)) for s in calls]),
        hallu=_percent([float(s.hallucinated) for s in scores]),
        arg_f1=_percent(arg_scored),
        rouge_l=_percent([s.rouge_l or 0.0 for s in finishes]),
        steps=len(scores),
        call_steps=len(calls),
        finish_steps=len(finishes),
        give_up_steps=sum(s.gold_plan == "give up" for s in scores),
        arg_f1_steps=len(arg_scored),
        gold_arguments_unscorable=sum(s.arg_outcome == "gold_unscorable" for s in calls),
        predicted_arguments_unparseable=sum(s.arg_outcome == "unparseable_prediction" for s in calls),
        predicted_arguments_missing=sum(s.arg_outcome == "missing_arguments" for s in calls),
        hallucinated_steps=sum(s.hallucinated for s in scores),
        plan_missing=sum(s.plan_missing for s in scores),
    )


def static_metrics(steps: Iterable[StaticStep], scorer: rouge_scorer.RougeScorer | None = None) -> StaticMetrics:
    """Score every step and aggregate: the five metrics of one agent on one test set."""
    return aggregate(score_step(s, scorer) for s in steps)
