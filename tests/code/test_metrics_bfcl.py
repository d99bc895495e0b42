"""BFCL-grade matching: acceptable values, optional parameters, type leniency and string normalisation as bfcl_eval's
AST checker has them, order-free parallel calls; known predictions on real BFCL entries against a hand computation,
beside the paper's numbers; the paper's rules stay where there are no acceptable values."""

from __future__ import annotations

import pytest

from umi.data.bfcl import import_category
from umi.eval.metrics import (
    BFCLCall,
    Prediction,
    aggregate,
    bfcl_call_score,
    bfcl_value_ok,
    gold_steps,
    item_totals,
    score_step,
)
from umi.schema import Step, ToolSpec, Trajectory


def _entry(category: str, entry_id: str) -> Trajectory:
    for t in import_category(category):
        if isinstance(t, Trajectory) and t.meta["entry_id"] == entry_id:
            return t
    raise AssertionError(f"no {entry_id}")


def _calls_predicted(traj: Trajectory, calls: list[tuple[str, dict]]):
    """Score the gold call steps of `traj` with these predicted calls, in order; other steps predicted right."""
    out = []
    calls = list(calls)
    for step in gold_steps(traj):
        if step.gold_plan == "call":
            tool, arguments = calls.pop(0)
            out.append(score_step(step.with_prediction(Prediction(plan="call", tool=tool, arguments=arguments))))
        else:
            out.append(score_step(step.with_prediction(Prediction(plan=step.gold_plan, answer=step.gold_answer))))
    assert not calls
    return out


OBJECTS = {"type": "array", "items": {"type": "object"}}


# --- single values ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "acceptable", "schema", "ok"),
    [
        (5, [5.0], {"type": "number"}, True),  # int for float (BFCL: Python's conversion)
        (5.0, [5], {"type": "integer"}, False),  # float for int: a type error
        (True, [1], {"type": "integer"}, False),  # a boolean is not an integer
        ("x", ["x"], {"type": "integer"}, True),  # the acceptable values' own type (BFCL's variable allowance)
        ("Washington, D.C.", ["washington dc"], {"type": "string"}, True),  # normalised: no spaces / ,./-_*^, lower
        ("Washington", ["washington dc"], {"type": "string"}, False),
        ("it's", ['it"s'], {"type": "string"}, True),  # ' read as "
        ("", ["", "km"], {"type": "string"}, True),  # BFCL accepts the omission mark written out
        (["New York", "LA"], [["new york", "la"]], {"type": "array", "items": {"type": "string"}}, True),
        (["LA", "New York"], [["new york", "la"]], {"type": "array", "items": {"type": "string"}}, False),  # in order
        ([1.0, 2.0], [[1.0, 2.0]], {"type": "array", "items": {"type": "number"}}, True),
        ([1, 2], [[1.0, 2.0]], {"type": "array", "items": {"type": "number"}}, False),  # no int -> float inside lists
        ([1, 2], ["", [1.0, 2.0]], {"type": "array", "items": {"type": "number"}}, True),  # "" first: not type-checked
        ({"a": "X"}, [{"a": ["x"], "b": ["", 1]}], {"type": "object"}, True),  # b may be left out
        ({"a": "X"}, [{"a": ["x"], "b": [1]}], {"type": "object"}, False),  # b may not
        ({"a": "x", "c": 1}, [{"a": ["x"]}], {"type": "object"}, False),  # c is not expected
        ([{"a": "x"}, {"a": "y"}], [[{"a": ["x"]}, {"a": ["Y"]}]], OBJECTS, True),
        ([{"a": "y"}, {"a": "x"}], [[{"a": ["x"]}, {"a": ["Y"]}]], OBJECTS, False),  # position by position
        (3, [1, 2, 3], {}, True),  # no type ("any"): plain membership
        (True, [1], {"type": "boolean"}, False),  # JSON equality: true is not 1
    ],
)
def test_value_rules(value, acceptable, schema, ok):
    assert bfcl_value_ok(value, acceptable, schema) is ok


def test_call_score_optional_required_and_unexpected():
    params = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "string"}},
        "required": ["a", "c"],
    }
    call = BFCLCall(name="f", acceptable={"a": ["x"], "b": ["", 2], "c": ["", "z"]}, parameters=params)
    assert bfcl_call_score(call, {"a": "X", "c": "z"}) == (1.0, True)  # b is optional and left out
    assert bfcl_call_score(call, {"a": "x", "b": 2, "c": "z"}) == (1.0, True)
    f1, ok = bfcl_call_score(call, {"a": "x"})  # c has "" but is required: missing
    assert not ok and f1 == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    f1, ok = bfcl_call_score(call, {"a": "x", "c": "z", "d": 1})  # d is not expected: precision 2/3
    assert not ok and f1 == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))
    f1, ok = bfcl_call_score(call, {"a": "x", "b": 3, "c": "z"})  # b present with another value: 0.5
    assert not ok and f1 == pytest.approx(2.5 / 3)
    empty = BFCLCall(name="g", acceptable={"k": [""]}, parameters={"properties": {"k": {"type": "string"}}})
    assert bfcl_call_score(empty, {}) == (1.0, True)


# --- known predictions on real entries, by hand -----------------------------------------------------------------------
def test_known_predictions_against_a_hand_computation():
    scores = []
    # simple_python_8: radius [10], units ["meters", ""]: the paper's gold has units "meters"; BFCL lets it go
    scores += _calls_predicted(_entry("simple_python", "simple_python_8"), [("geometry.area_circle", {"radius": 10})])
    # multiple_104: origin ["New York City", "NYC"], destination ["Washington D.C.", "D.C.", "DC"]
    scores += _calls_predicted(
        _entry("multiple", "multiple_104"),
        [("get_shortest_driving_distance", {"origin": "NYC", "destination": "washington dc"})],
    )
    # parallel_0: two spotify.play calls; the second one first, then (the first being in the gold history) the second
    scores += _calls_predicted(
        _entry("parallel", "parallel_0"),
        [
            ("spotify.play", {"artist": "Maroon 5", "duration": 15}),
            ("spotify.play", {"artist": "Maroon 5", "duration": 15}),
        ],
    )
    # parallel_multiple_0: the second function first; then a float for the integer `count`
    scores += _calls_predicted(
        _entry("parallel_multiple", "parallel_multiple_0"),
        [("math_toolkit.product_of_primes", {"count": 5}), ("math_toolkit.product_of_primes", {"count": 5.0})],
    )
    calls = [s for s in scores if s.gold_plan == "call"]
    assert [s.arg_f1 for s in calls] == pytest.approx([2 / 3, 0.5, 0.5, 1.0, 0.0, 1.0])
    assert [s.arg_f1_bfcl for s in calls] == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.5])
    assert [s.action_correct for s in calls] == [True, True, True, True, False, True]
    assert [s.action_correct_bfcl for s in calls] == [True] * 6
    assert [s.ast_correct_bfcl for s in calls] == [True, True, True, True, True, False]
    m = aggregate(scores)
    assert (m.call_steps, m.bfcl_graded_steps) == (6, 6)
    assert m.act_em == pytest.approx(500 / 6) and m.act_em_bfcl == pytest.approx(100.0)
    assert m.arg_f1 == pytest.approx(100 * (2 / 3 + 0.5 + 0.5 + 1 + 0 + 1) / 6)  # 61.11
    assert m.arg_f1_bfcl == pytest.approx(100 * 5.5 / 6)  # 91.67
    assert m.ast_acc_bfcl == pytest.approx(500 / 6)
    totals = item_totals(scores)
    assert totals["arg_f1_bfcl"] == pytest.approx({"sum": 5.5, "n": 6})
    assert totals["plan_acc"] == {"sum": float(len(scores)), "n": len(scores)}


def test_paper_rules_stay_without_acceptable_values():
    """ToolBench-like steps: the variants are undefined for the set; BFCL multi-turn steps: equal to the paper's."""
    traj = Trajectory(
        id="tb",
        source="toolbench",
        tools=[ToolSpec(name="f")],
        instruction="q",
        steps=[
            Step(role="user", content="q"),
            Step(role="assistant", content="t", decision="caller"),
            Step(role="caller", tool_name="f", arguments={"city": "Paris"}),
            Step(role="observation", content="ok"),
        ],
    )
    (step,) = gold_steps(traj)
    assert step.bfcl_candidates is None
    score = score_step(step.with_prediction(Prediction(plan="call", tool="f", arguments={"city": "paris"})))
    assert (score.arg_f1, score.arg_f1_bfcl, score.ast_correct_bfcl, score.bfcl_graded) == (0.5, 0.5, False, False)
    m = aggregate([score])
    assert m.arg_f1 == 50.0 and (m.act_em_bfcl, m.arg_f1_bfcl, m.ast_acc_bfcl) == (None, None, None)
    assert "arg_f1_bfcl" not in item_totals([score])
    multi = next(t for t in import_category("multi_turn_base") if isinstance(t, Trajectory))
    first_call = next(s for s in gold_steps(multi) if s.gold_plan == "call")
    assert first_call.bfcl_candidates is None and first_call.category == "multi_turn_base"
    exact = score_step(
        first_call.with_prediction(
            Prediction(plan="call", tool=first_call.gold_tool, arguments=first_call.gold_arguments)
        )
    )
    assert (exact.arg_f1, exact.arg_f1_bfcl, exact.ast_correct_bfcl) == (1.0, 1.0, True)


def test_candidates_travel_with_the_steps():
    traj = _entry("parallel", "parallel_0")
    calls = [s for s in gold_steps(traj) if s.gold_plan == "call"]
    assert [len(s.bfcl_candidates) for s in calls] == [2, 1]  # order-free: what is not yet made
    assert calls[0].bfcl_candidates[1].acceptable == {"artist": ["Maroon 5"], "duration": [15]}
    assert calls[0].category == "parallel" and calls[0].trajectory_id == traj.id
    simple = [s for s in gold_steps(_entry("simple_python", "simple_python_8")) if s.gold_plan == "call"]
    assert len(simple[0].bfcl_candidates) == 1
    assert simple[0].bfcl_candidates[0].parameters["required"] == ["radius"]
