"""Trivial agents every report shows beside the trained ones, so a number can be read against what no learning gets.

- `rule: last turn` (static): "after the user's turn: caller; after an observation: conclusion". It sees only
  the role of the previous step, predicts a plan and nothing else (no tool, no arguments, no answer), so it is scored
  on Plan ACC only: its other metrics are undefined ("–"), not 0, and every comparison with a rule is on Plan ACC
  (a trained agent would otherwise "beat" a rule on a mean that counts the rule's by-construction zeros).
- `rule: always caller` (static): every step `caller`, the plan an untrained planner that echoes the instruction
  is read as.
- `no call` (static and live): an agent whose planner always concludes and whose summarizer writes a fixed answer;
  it never calls a tool. Live, it passes the turns that only read, so it is the floor of the live metrics; static,
  it is Hallu.'s floor: an agent that calls nothing never names an unknown tool (Hallu. 0), so a Hallu. reads
  only beside the calls an agent made.
- `constant answer` (static): the same answer at every gold finish step, scored on R-L only. The gold answers of
  BFCL are synthetic templates (umi.data.synthetic), so a fixed sentence that shares their words scores R-L an agent
  may not reach: R-L means something only above this row. The answer is the best of a small fixed set
  (`CONSTANT_ANSWERS`) by R-L on the gold finish steps of the *train* split (`best_constant`), never on a test set.

The rules are scored on the gold steps directly (they need no model); `no call` runs through the same static and live
code as every other agent, over fixed-output backends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from umi.eval.evidence import STATIC_METRICS
from umi.eval.metrics import PlanLabel, Prediction, StaticMetrics, StaticStep, aggregate, gold_steps, score_step
from umi.inference.protocol import Generation, GenerationRequest
from umi.schema import RecordError, Trajectory
from umi.vocabulary import BASELINES, CONSTANT_ANSWER, NO_CALL, RULE_ALWAYS_CALLER, RULE_LAST_TURN

__all__ = [
    "RULES",
    "RULE_LAST_TURN",
    "RULE_ALWAYS_CALLER",
    "NO_CALL",
    "CONSTANT_ANSWER",
    "CONSTANT_ANSWERS",
    "BASELINES",
    "rule_records",
    "no_call_backends",
    "best_constant",
    "constant_records",
]

NO_CALL_ANSWER = "I cannot help with that."
# the candidates of the constant-answer baseline, fixed before any test set was looked at: generic closings of a
# tool-using assistant (the first one is taken when there is no train split to choose on)
CONSTANT_ANSWERS: tuple[str, ...] = (
    "Done. I used the tools for this request. The last result was: the result",
    "I have completed this request with the tools.",
    "Here is the result of the request.",
    "Done.",
    NO_CALL_ANSWER,
)


def _last_turn(previous_role: str | None) -> PlanLabel:
    return "finish" if previous_role == "observation" else "call"


def _always_caller(previous_role: str | None) -> PlanLabel:
    return "call"


# name -> (role of the step before the scored one -> predicted plan)
RULES: dict[str, Callable[[str | None], PlanLabel]] = {RULE_LAST_TURN: _last_turn, RULE_ALWAYS_CALLER: _always_caller}


def rule_records(trajectories: Sequence[Trajectory], rule: str) -> tuple[list[dict], StaticMetrics]:
    """Per-step records (the shape of umi.eval.static's) of a plan rule on the gold steps of `trajectories`, and
    the metrics over them."""
    predict = RULES[rule]
    records, scores = [], []
    for traj in trajectories:
        try:
            golds: list[StaticStep] = gold_steps(traj)
        except RecordError:
            continue  # the static runner rejects the same trajectories, with their reason
        for gold in golds:
            previous = traj.steps[gold.step_index - 1].role if gold.step_index > 0 else None
            plan = predict(previous)
            score = score_step(gold.with_prediction(Prediction(plan=plan)))
            scores.append(score)
            records.append(
                {
                    "id": gold.id,
                    "predicted": {"plan": plan},
                    "score": {"plan_correct": score.plan_correct},
                }
            )
    metrics = aggregate(scores)
    return records, replace(metrics, **{m: None for m in STATIC_METRICS if m != "plan_acc"})


def _finish_steps(trajectories: Sequence[Trajectory]):
    for traj in trajectories:
        try:
            golds: list[StaticStep] = gold_steps(traj)
        except RecordError:
            continue  # the static runner rejects the same trajectories, with their reason
        yield from golds


def best_constant(train: Sequence[Trajectory], candidates: Sequence[str] = CONSTANT_ANSWERS) -> dict:
    """The candidate answer with the highest R-L over the gold finish steps of `train` (the train split: never a
    test set), ties to the earlier one. {"answer", "rouge_l" (on train, %; None without finish steps),
    "finish_steps", "chosen_on"}."""
    finishes = [g for g in _finish_steps(train) if g.gold_plan == "finish"]
    if not finishes:
        return {
            "answer": candidates[0],
            "rouge_l": None,
            "finish_steps": 0,
            "chosen_on": "no train finish step: the first",
        }
    scored = []
    for answer in candidates:
        scores = [score_step(g.with_prediction(Prediction(plan="finish", answer=answer))) for g in finishes]
        scored.append((aggregate(scores).rouge_l or 0.0, answer))
    best = max(scored, key=lambda t: t[0])  # max keeps the first of equals
    return {"answer": best[1], "rouge_l": best[0], "finish_steps": len(finishes), "chosen_on": "train"}


def constant_records(trajectories: Sequence[Trajectory], answer: str) -> tuple[list[dict], StaticMetrics]:
    """Per-step records of the constant-answer baseline: `answer` at every gold finish step, scored on R-L only
    (its other metrics are undefined, as a plan rule's are beyond Plan ACC)."""
    records, scores = [], []
    for gold in _finish_steps(trajectories):
        finish = gold.gold_plan == "finish"
        score = score_step(gold.with_prediction(Prediction(plan="finish", answer=answer))) if finish else None
        if score is not None:
            scores.append(score)
        records.append(
            {
                "id": gold.id,
                "predicted": {"answer": answer if finish else None},
                "score": {"rouge_l": None if score is None else score.rouge_l},
            }
        )
    metrics = aggregate(scores)
    metrics = replace(metrics, **{m: None for m in STATIC_METRICS if m != "rouge_l"}, steps=len(records))
    return records, metrics


@dataclass
class FixedOutputBackend:
    """Writes the same text for every prompt (a baseline agent's role; no model): a BatchingBackend
    (umi.inference.protocol), so static evaluation runs it as it runs a model."""

    text: str

    def _one(self) -> Generation:
        return Generation.of_text(self.text)

    def generate(self, request: GenerationRequest) -> Generation:
        return self._one()

    def generate_batch(self, requests: Sequence[GenerationRequest], batch_size: int = 8) -> list[Generation]:
        return [self._one() for _ in requests]

    def generate_many(
        self,
        requests: Sequence[GenerationRequest],
        *,
        max_rows: int | None = None,
        done: Callable[[int, Generation | Exception | None], None] | None = None,
    ) -> list[Generation | Exception | None]:
        out: list[Generation | Exception | None] = [self._one() for _ in requests]
        for i, g in enumerate(out):
            if done is not None:
                done(i, g)
        return out

    def prompt_ids(self, request: GenerationRequest) -> tuple[list[int], int]:
        return [], 0

    def reset(self) -> None:
        pass


def no_call_backends() -> dict[str, FixedOutputBackend]:
    """The `no call` agent's roles: the planner concludes at once, the summarizer gives a fixed answer."""
    return {
        "planner": FixedOutputBackend(" Next: conclusion."),
        "caller": FixedOutputBackend(""),
        "summarizer": FixedOutputBackend(NO_CALL_ANSWER),
    }
