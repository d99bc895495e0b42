"""The report reads gameable metrics against their baselines and its verdicts as one Holm family (issue 25, items 3
and 5), on records made by the baselines' own code."""

from __future__ import annotations

import pytest

from umi.eval import evidence
from umi.eval.baselines import CONSTANT_ANSWERS, best_constant, constant_records
from umi.eval.report import add_verdicts, table_markdown, verdicts
from umi.eval.static import UNDECIDED_PLANNER
from umi.schema import Step, ToolSpec, Trajectory

TEMPLATE = "Done. I used f for this request. The last result was: {}"


def traj(tid: str, result: str) -> Trajectory:
    steps = [
        Step(role="user", content="do it"),
        Step(role="assistant", content="call f", decision="caller"),
        Step(role="caller", tool_name="f", arguments_text='{"x": 1}'),
        Step(role="observation", content=result),
        Step(role="assistant", content="done", decision="conclusion"),
        Step(role="conclusion", content=TEMPLATE.format(result)),
    ]
    tools = [ToolSpec(name="f", description="f")]
    return Trajectory(id=tid, source="bfcl", instruction="do it", tools=tools, steps=steps)


def test_the_constant_is_chosen_on_train_and_scored_on_r_l_only():
    train = [traj(f"train{k}", f"value {k}") for k in range(5)]
    chosen = best_constant(train)
    assert chosen["chosen_on"] == "train" and chosen["finish_steps"] == 5
    assert chosen["answer"] == CONSTANT_ANSWERS[0] and chosen["rouge_l"] > 50  # the template's words
    assert best_constant([])["chosen_on"].startswith("no train")
    records, metrics = constant_records([traj("t", "x")], chosen["answer"])
    assert [r["score"]["rouge_l"] is None for r in records] == [True, False]  # the finish step only
    assert metrics.rouge_l > 0 and metrics.plan_acc is None and metrics.hallu is None and metrics.steps == 2


def _agent(test: list[Trajectory], answer: str | None, hallucinate: bool) -> list[dict]:
    """Static records of an agent that plans right, names a tool (an unknown one when `hallucinate`) and answers
    `answer` (None: nothing) at finish steps."""
    from umi.eval.metrics import Prediction, gold_steps, score_step

    out = []
    for t in test:
        for g in gold_steps(t):
            call = g.gold_plan == "call"
            tool = ("nope" if hallucinate else "f") if call else None
            p = Prediction(plan=g.gold_plan, tool=tool, arguments={} if call else None, answer=None if call else answer)
            s = score_step(g.with_prediction(p))
            out.append(
                {
                    "id": g.id,
                    "trajectory_id": t.id,
                    "prompted": True,
                    "call_source": UNDECIDED_PLANNER if call else None,
                    "score": {
                        "plan_correct": s.plan_correct,
                        "action_correct": s.action_correct,
                        "hallucinated": s.hallucinated,
                        "arg_f1": s.arg_f1,
                        "rouge_l": s.rouge_l,
                    },
                }
            )
    return out


def test_the_constant_row_beats_an_agent_on_r_l_and_the_no_call_agent_on_hallu():
    test = [traj(f"t{k}", f"value {k}") for k in range(30)]
    chosen = best_constant([traj(f"train{k}", f"other {k}") for k in range(5)])
    const_recs, const_metrics = constant_records(test, chosen["answer"])
    agent = _agent(test, "Paris is the capital of France.", hallucinate=True)
    no_call = _agent(test, "I cannot help with that.", hallucinate=False)
    for r in no_call:  # calls nothing: no tool named at all
        r["score"]["hallucinated"] = False
    records = {"alpha-umi": agent, "constant answer": const_recs, "no call": no_call}
    agents = {}
    for name, recs in records.items():
        ev = evidence.summary(evidence.static_items(recs), "trajectories")
        values = {m: (ev["intervals"].get(m) or {}).get("value") for m in ("plan_acc", "hallu", "rouge_l")}
        agents[name] = {"static": {"bfcl-test": {**values, **ev}}, "baseline": name != "alpha-umi"}
    assert agents["constant answer"]["static"]["bfcl-test"]["rouge_l"] == pytest.approx(const_metrics.rouge_l)
    mine = evidence.static_items(agent)
    agents["alpha-umi"]["static"]["bfcl-test"]["paired"] = {
        ref: evidence.compare(mine, evidence.static_items(records[ref]), static=True)
        for ref in ("constant answer", "no call")
    }
    family = add_verdicts(agents)
    found = {(v.reference, v.metric): v for v in verdicts(agents)}
    assert family["size"] == len(found) == 3  # R-L vs the constant; mean and Hallu. vs the no-call agent
    assert found[("constant answer", "rouge_l")].outcome() == "worse"
    assert found[("no call", "hallu")].outcome() == "worse"  # more hallucinations than doing nothing
    assert all(v.p_holm >= v.entry["p_value"] for v in found.values())
    md = table_markdown(agents)
    const_row = next(line for line in md.splitlines() if line.startswith("| constant answer |"))
    agent_row = next(line for line in md.splitlines() if line.startswith("| alpha-umi |"))
    assert float(const_row.split("|")[6]) > float(agent_row.split("|")[6])  # R-L column: the constant is above
    assert "One family: the 3 verdicts below" in md and "], p < 0.001, Holm-adjusted p = 0.002: worse" in md
    assert "alpha-umi vs constant answer, R-L" in md and "p = 0.001" not in md
    assert found[("no call", "hallu")].entry["difference"] == pytest.approx(50.0)  # every call step hallucinated
