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
- Predicted arguments given as text are parsed as the agent would execute them (umi.parsing.parse_arguments:
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

BFCL-grade variants (`act_em_bfcl`, `arg_f1_bfcl`, `ast_acc_bfcl`), over the same gold call steps. BFCL's
single-turn entries list several acceptable values per argument (`possible_answer`); the paper's definitions above
compare with the first one only. On a step that carries its acceptable gold calls (`bfcl_candidates`: BFCL's
simple_python / multiple / parallel / parallel_multiple), our own implementation of the rules of bfcl_eval's AST
checker (bfcl_eval/eval_checker/ast_eval/ast_checker.py) decides:
- candidates: the step's gold call; in the parallel categories every gold call of the entry not yet made in the gold
  history (BFCL's parallel checker takes the calls in any order). The best-scoring candidate of the predicted name
  counts; Act. EM (BFCL) is 1 when the predicted name is a candidate's.
- an argument counts when its value is acceptable (`bfcl_value_ok`): `number` (BFCL's float) takes an int; otherwise
  the JSON type must be the schema's, or the acceptable values' own type (BFCL's allowance for a variable); strings
  compare after BFCL's normalisation (umi.tools.calls.standardize_string: no spaces or `,./-_*^`, lower case);
  lists element-wise after normalising their strings, with BFCL's one-level item type check (no int -> float
  inside lists, as BFCL); objects key by key against each acceptable object (a key whose values include "" may be
  left out); lists of objects position by position; anything else by JSON equality.
- "" among the acceptable values: the argument may be omitted (unless the schema requires it); an omitted optional
  argument is not a gold key for Arg. F1 (BFCL). Arg. F1 (BFCL) scores keys as the paper's (1 acceptable, 0.5 present
  with another value, 0 missing; keys BFCL does not expect count in the predicted keys only).
- AST acc. (BFCL): the whole call is one BFCL accepts: a candidate's name, every argument acceptable, no unexpected
  argument, none missing that may not be omitted.
A step without candidates (ToolBench; BFCL's multi-turn calls, which BFCL judges by execution, see umi.eval.live)
keeps the paper's rules: the variant equals the paper's score and AST acc. is "right tool, arguments JSON-equal".
A test set with no step carrying candidates has the variants undefined (None), so they are reported only for BFCL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rouge_score import rouge_scorer

from umi.parsing import (
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
from umi.tools.calls import standardize_string

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
    "BFCLCall",
    "bfcl_value_ok",
    "bfcl_call_score",
    "item_totals",
    "METRICS",
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
class BFCLCall(BaseModel):
    """One acceptable gold call of a BFCL single-turn entry: the tool name, each argument's acceptable values
    (`possible_answer`; "" = may be omitted) and the tool's parameters (JSON Schema: the types and `required`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    acceptable: dict[str, list[Any]]
    parameters: dict[str, Any] = Field(default_factory=dict)


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
    category: str | None = None  # BFCL's category (or the source) of the trajectory, for per-category metrics
    bfcl_candidates: tuple[BFCLCall, ...] | None = None  # gold call steps of BFCL single-turn entries (see above)

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
    category = str(trajectory.meta.get("category") or trajectory.source)
    candidates = _bfcl_calls(trajectory)
    calls_made = 0
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
            if candidates is not None:
                if calls_made >= len(candidates) or candidates[calls_made].name != nxt.tool_name:
                    raise RecordError(trajectory.id, f"step {i}: the gold call does not match possible_answer")
                ordered = category in _ORDER_FREE
                fields["bfcl_candidates"] = tuple(candidates[calls_made:] if ordered else candidates[calls_made:][:1])
            calls_made += 1
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
                category=category,
                **fields,
            )
        )
    return out


_ORDER_FREE = ("parallel", "parallel_multiple")  # BFCL checks these calls in any order


def _bfcl_calls(trajectory: Trajectory) -> list[BFCLCall] | None:
    """The acceptable gold calls of a BFCL single-turn trajectory, in order (None for any other trajectory)."""
    answer = trajectory.meta.get("possible_answer")
    if trajectory.source != "bfcl" or not isinstance(answer, list):
        return None
    tools = {t.name: t for t in trajectory.tools}
    out = []
    for k, call in enumerate(answer):
        if not isinstance(call, dict) or len(call) != 1:
            raise RecordError(trajectory.id, f"possible_answer[{k}] is not one call")
        ((name, acceptable),) = call.items()
        tool = tools.get(name)
        if tool is None or not isinstance(acceptable, dict):
            raise RecordError(trajectory.id, f"possible_answer[{k}] names no tool of the trajectory")
        out.append(BFCLCall(name=name, acceptable=acceptable, parameters=tool.parameters))
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


# --- BFCL-grade matching (the rules of bfcl_eval's AST checker, see the module doc) -----------------------------------
_PY_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list,
    "object": dict,
}


def _is_omission(value: Any) -> bool:
    return isinstance(value, str) and value == ""


def _kind(schema: Any) -> str | None:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return kind if isinstance(kind, str) and kind in _PY_TYPES else None


def _std(value: Any) -> Any:
    return standardize_string(value) if isinstance(value, str) else value


def _in(value: Any, acceptable: Sequence[Any]) -> bool:
    return any(json_equal(value, a) for a in acceptable)


def _dict_ok(value: dict, acceptable: Sequence[Any]) -> bool:
    """BFCL's dict check: some acceptable object {key: [values]} takes every key of `value`, each with an acceptable
    (normalised) value, and misses none of its keys that may not be omitted."""
    for option in acceptable:
        if not isinstance(option, dict):
            continue
        keys_ok = all(
            k in option and isinstance(option[k], list) and _in(_std(v), [_std(a) for a in option[k]])
            for k, v in value.items()
        )
        if keys_ok and all(k in value or (isinstance(vs, list) and "" in vs) for k, vs in option.items()):
            return True
    return False


def _items_typed(value: list, acceptable: Sequence[Any], item_kind: str) -> bool:
    """BFCL's one-level item type check: against some acceptable list, every item has the schema's item type or that
    list's own item type; a non-list acceptable value ("" for an optional list) is not checked."""
    want = _PY_TYPES[item_kind]
    for option in acceptable:
        if not isinstance(option, list):
            return True
        own = next((type(x) for x in option if not _is_omission(x)), None)
        if all(type(v) is want or (own is not None and type(v) is own) for v in value):
            return True
    return False


def bfcl_value_ok(value: Any, acceptable: Sequence[Any], schema: dict[str, Any] | None = None) -> bool:
    """Whether BFCL's AST checker accepts `value` for an argument with these acceptable values and this JSON Schema
    (the rules in the module doc)."""
    schema = schema or {}
    kind = _kind(schema)
    if kind == "number" and type(value) is int:
        value = float(value)  # Python's int -> float conversion, which BFCL allows
    if kind is not None and type(value) is not _PY_TYPES[kind]:
        own = next((type(a) for a in acceptable if not _is_omission(a)), None)
        return own is not None and type(value) is own and _in(value, acceptable)
    if kind == "object" or (kind is None and isinstance(value, dict)):
        return _dict_ok(value, acceptable)
    if kind == "array" or (kind is None and isinstance(value, list)):
        item_kind = _kind(schema.get("items"))
        if item_kind is not None and not _items_typed(value, acceptable, item_kind):
            return False
        if item_kind == "object":
            return any(
                isinstance(option, list)
                and len(option) == len(value)
                and all(isinstance(v, dict) and _dict_ok(v, [o]) for v, o in zip(value, option))
                for option in acceptable
            )
        std_value = [_std(v) for v in value]
        return any(isinstance(o, list) and json_equal(std_value, [_std(x) for x in o]) for o in acceptable)
    if isinstance(value, str):
        return standardize_string(value) in {standardize_string(a) for a in acceptable if isinstance(a, str)}
    return _in(value, acceptable)


def bfcl_call_score(call: BFCLCall, predicted: dict[str, Any]) -> tuple[float, bool]:
    """(Arg. F1 with BFCL's acceptable values, whether BFCL's AST checker accepts the arguments) of a predicted call
    to `call.name`. Gold keys: the acceptable keys, less the optional ones the prediction leaves out."""
    properties = call.parameters.get("properties") or {}
    required = set(call.parameters.get("required") or [])
    valid = True
    score = 0.0
    for key, value in predicted.items():
        if key not in call.acceptable or key not in properties:
            valid = False  # BFCL: an unexpected parameter
            continue
        ok = bfcl_value_ok(value, call.acceptable[key], properties.get(key))
        score += 1.0 if ok else 0.5
        valid = valid and ok
    gold_keys = {k for k, values in call.acceptable.items() if k in predicted or k in required or "" not in values}
    gold_keys |= required
    if gold_keys - set(predicted):
        valid = False  # a required argument, or one that may not be omitted, is missing
    if not gold_keys:
        return (1.0, valid) if not predicted else (0.0, False)
    if score == 0.0:
        return 0.0, False
    precision, recall = score / len(predicted), score / len(gold_keys)
    return 2 * precision * recall / (precision + recall), valid


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
    action_correct_bfcl: bool | None = None  # gold call steps (BFCL-grade variants, see the module doc)
    arg_f1_bfcl: float | None = None  # gold call steps with a scorable gold
    ast_correct_bfcl: bool | None = None  # gold call steps
    bfcl_graded: bool = False  # the step carried BFCL's acceptable gold calls
    category: str | None = None
    trajectory_id: str | None = None


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
    action_bfcl = arg_f1_bfcl = ast_bfcl = None
    if step.gold_plan == "call":
        action_correct = step.predicted_tool is not None and step.predicted_tool == step.gold_tool
        gold_args = _as_object(step.gold_arguments)  # type: ignore[arg-type]
        predicted_args = None if step.predicted_arguments is None else _as_object(step.predicted_arguments)
        if gold_args is None:
            arg_outcome = "gold_unscorable"
        elif not action_correct:
            arg_f1, arg_outcome = 0.0, "wrong_tool"
        elif step.predicted_arguments is None:
            arg_f1, arg_outcome = 0.0, "missing_arguments"
        else:
            if predicted_args is None:
                arg_f1, arg_outcome = 0.0, "unparseable_prediction"
            else:
                arg_f1, arg_outcome = arguments_f1(gold_args, predicted_args), "scored"
        if step.bfcl_candidates is None:  # the paper's rules (see the module doc)
            action_bfcl, arg_f1_bfcl = action_correct, arg_f1
            ast_bfcl = bool(action_correct) and predicted_args is not None and json_equal(gold_args, predicted_args)
        else:
            named = [c for c in step.bfcl_candidates if c.name == step.predicted_tool]
            action_bfcl = bool(named)
            scored = [bfcl_call_score(c, predicted_args) for c in named] if predicted_args is not None else []
            arg_f1_bfcl = max((f for f, _ in scored), default=0.0)
            ast_bfcl = any(ok for _, ok in scored)
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
        action_correct_bfcl=action_bfcl,
        arg_f1_bfcl=arg_f1_bfcl,
        ast_correct_bfcl=ast_bfcl,
        bfcl_graded=step.bfcl_candidates is not None,
        category=step.category,
        trajectory_id=step.trajectory_id,
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
    # BFCL-grade variants over the same gold call steps (None when no step carried BFCL's acceptable values)
    act_em_bfcl: float | None = None
    arg_f1_bfcl: float | None = None
    ast_acc_bfcl: float | None = None
    bfcl_graded_steps: int = 0  # gold call steps scored with BFCL's acceptable values

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


# metric -> (the steps it averages over, a step's value); the percentages of StaticMetrics are 100 * sum / n
METRICS: dict[str, tuple[Callable[[StepScore], bool], Callable[[StepScore], float]]] = {
    "plan_acc": (lambda s: True, lambda s: float(s.plan_correct)),
    "act_em": (lambda s: s.gold_plan == "call", lambda s: float(bool(s.action_correct))),
    "hallu": (lambda s: True, lambda s: float(s.hallucinated)),
    "arg_f1": (lambda s: s.arg_f1 is not None, lambda s: float(s.arg_f1 or 0.0)),
    "rouge_l": (lambda s: s.gold_plan == "finish", lambda s: float(s.rouge_l or 0.0)),
    "act_em_bfcl": (lambda s: s.gold_plan == "call", lambda s: float(bool(s.action_correct_bfcl))),
    "arg_f1_bfcl": (lambda s: s.arg_f1_bfcl is not None, lambda s: float(s.arg_f1_bfcl or 0.0)),
    "ast_acc_bfcl": (lambda s: s.gold_plan == "call", lambda s: float(bool(s.ast_correct_bfcl))),
}
BFCL_VARIANTS = ("act_em_bfcl", "arg_f1_bfcl", "ast_acc_bfcl")


def item_totals(scores: Iterable[StepScore], bfcl: bool | None = None) -> dict[str, dict[str, float]]:
    """{metric: {"sum", "n"}} over some steps (one trajectory's, for a bootstrap over trajectories): the metric over
    any set of items is 100 * (sum of sums) / (sum of n). `bfcl`: include the BFCL variants (default: when a step
    is BFCL-graded; pass the test set's answer so every item of a set has the same keys)."""
    scores = list(scores)
    graded = any(s.bfcl_graded for s in scores) if bfcl is None else bfcl
    out = {}
    for name, (covers, value) in METRICS.items():
        if name in BFCL_VARIANTS and not graded:
            continue
        covered = [value(s) for s in scores if covers(s)]
        out[name] = {"sum": sum(covered), "n": len(covered)}
    return out


def aggregate(scores: Iterable[StepScore]) -> StaticMetrics:
    scores = list(scores)
    calls = [s for s in scores if s.gold_plan == "call"]
    finishes = [s for s in scores if s.gold_plan == "finish"]
    arg_scored = [s.arg_f1 for s in calls if s.arg_f1 is not None]
    graded = any(s.bfcl_graded for s in scores)
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
        act_em_bfcl=_percent([float(bool(s.action_correct_bfcl)) for s in calls]) if graded else None,
        arg_f1_bfcl=_percent([s.arg_f1_bfcl for s in calls if s.arg_f1_bfcl is not None]) if graded else None,
        ast_acc_bfcl=_percent([float(bool(s.ast_correct_bfcl)) for s in calls]) if graded else None,
        bfcl_graded_steps=sum(s.bfcl_graded for s in calls),
    )


def static_metrics(steps: Iterable[StaticStep], scorer: rouge_scorer.RougeScorer | None = None) -> StaticMetrics:
    """Score every step and aggregate: the five metrics of one agent on one test set."""
    return aggregate(score_step(s, scorer) for s in steps)
