"""umi.eval.metrics: the paper's five static metrics on hand-computed cases, edge cases, and the real test set."""

import pytest
from pydantic import ValidationError

from tests.support.fixtures import FIXTURES_DIR as FIXTURES
from umi.data.alpha_umi import import_alpha_umi
from umi.eval.metrics import (
    Prediction,
    StaticStep,
    aggregate,
    arguments_f1,
    gold_steps,
    json_equal,
    plan_label,
    prediction_from_global,
    prediction_from_roles,
    score_step,
    static_metrics,
)
from umi.parsing import (
    parse_caller_output,
    parse_global_output,
    parse_planner_output,
    parse_summarizer_output,
)
from umi.prompts import caller_target, global_target, planner_target
from umi.schema import RecordError, Step, ToolSpec, Trajectory

TOOLS = ("get_weather", "get_time")


def call_step(gold_tool="get_weather", gold_args=None, **predicted):
    return StaticStep(
        id=predicted.pop("id", "s"),
        tool_names=TOOLS,
        gold_plan="call",
        gold_tool=gold_tool,
        gold_arguments={"city": "Paris"} if gold_args is None else gold_args,
        **predicted,
    )


# --- Arg. F1 and value equality -------------------------------------------------------------------------------------
def test_arguments_f1_hand_computed():
    # gold a matches (1), b present with another value (0.5): score 1.5; P = 1.5 / 3, R = 1.5 / 2 -> F1 = 0.6
    assert arguments_f1({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == pytest.approx(0.6)
    assert arguments_f1({"a": 1, "b": 2}, {"a": 1, "b": 2}) == 1.0
    assert arguments_f1({"a": 1, "b": 2}, {"a": 1}) == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P 1, R 0.5
    assert arguments_f1({"a": 1}, {"a": 2}) == pytest.approx(0.5)  # P = R = 0.5
    assert arguments_f1({"a": 1}, {"b": 1}) == 0.0  # no gold key present
    assert arguments_f1({"a": 1}, {}) == 0.0


def test_arguments_f1_gold_empty():
    assert arguments_f1({}, {}) == 1.0
    assert arguments_f1({}, {"a": 1}) == 0.0


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),  # JSON numbers by value
        (True, 1, False),  # Python says True == 1; JSON does not
        (False, 0, False),
        (None, None, True),
        (None, "null", False),
        ("Paris", "Paris", True),
        ("Paris", " Paris", False),  # strings exactly: no strip
        ("Paris", "paris", False),  # no case folding
        ("1", 1, False),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),  # arrays in order
        ([1, 2], (1, 2), True),
        ({"x": [1, {"y": True}]}, {"x": [1.0, {"y": True}]}, True),
        ({"x": 1}, {"x": 1, "y": 2}, False),
        ({"x": True}, {"x": 1}, False),
    ],
)
def test_json_equal(a, b, equal):
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal


# --- one step ---------------------------------------------------------------------------------------------------------
def test_right_call():
    step = call_step(predicted_plan="call", predicted_tool="get_weather", predicted_arguments={"city": "Paris"})
    s = score_step(step)
    assert (s.plan_correct, s.action_correct, s.hallucinated, s.arg_f1, s.arg_outcome) == (
        True,
        True,
        False,
        1.0,
        "scored",
    )
    assert s.rouge_l is None


def test_wrong_tool_scores_zero_arguments_even_if_equal():
    s = score_step(call_step(predicted_plan="call", predicted_tool="get_time", predicted_arguments={"city": "Paris"}))
    assert (s.action_correct, s.hallucinated, s.arg_f1, s.arg_outcome) == (False, False, 0.0, "wrong_tool")


def test_missing_prediction():
    s = score_step(call_step())
    assert (s.plan_correct, s.plan_missing, s.action_correct, s.hallucinated) == (False, True, False, False)
    assert (s.arg_f1, s.arg_outcome) == (0.0, "wrong_tool")


def test_hallucinated_tool_name():
    s = score_step(call_step(predicted_plan="call", predicted_tool="get_wether", predicted_arguments={"city": "Paris"}))
    assert (s.hallucinated, s.action_correct, s.arg_f1) == (True, False, 0.0)


def test_gold_empty_arguments():
    right = call_step("get_time", {}, predicted_plan="call", predicted_tool="get_time", predicted_arguments={})
    wrong = call_step("get_time", {}, predicted_plan="call", predicted_tool="get_time", predicted_arguments={"tz": "X"})
    as_text = call_step("get_time", "{}", predicted_plan="call", predicted_tool="get_time", predicted_arguments=" {} ")
    assert score_step(right).arg_f1 == 1.0
    assert score_step(wrong).arg_f1 == 0.0
    assert score_step(as_text).arg_f1 == 1.0


@pytest.mark.parametrize("text", ["{city: Paris}", "[1]", '"Paris"', "NaN", ""])
def test_unparseable_predicted_arguments_score_zero(text):
    s = score_step(call_step(predicted_plan="call", predicted_tool="get_weather", predicted_arguments=text))
    assert (s.action_correct, s.arg_f1, s.arg_outcome) == (True, 0.0, "unparseable_prediction")


def test_predicted_arguments_as_text_scored_like_objects():
    s = score_step(
        call_step(
            predicted_plan="call", predicted_tool="get_weather", predicted_arguments='{"city": "Rome", "days": 2}'
        )
    )
    # city present with another value: 0.5; P = 0.5 / 2, R = 0.5 / 1 -> F1 = 1/3
    assert s.arg_f1 == pytest.approx(1 / 3)


def test_missing_predicted_arguments_with_right_tool():
    s = score_step(call_step(predicted_plan="call", predicted_tool="get_weather"))
    assert (s.action_correct, s.arg_f1, s.arg_outcome) == (True, 0.0, "missing_arguments")


def test_gold_arguments_not_an_object_are_left_out():
    s = score_step(
        call_step(
            gold_args='{"city": Paris',
            predicted_plan="call",
            predicted_tool="get_weather",
            predicted_arguments={"city": "Paris"},
        )
    )
    assert (s.action_correct, s.arg_f1, s.arg_outcome) == (True, None, "gold_unscorable")


def test_give_up_step_counts_in_plan_and_hallu_only():
    step = StaticStep(id="g", tool_names=TOOLS, gold_plan="give up", predicted_plan="give up")
    s = score_step(step)
    assert (s.plan_correct, s.hallucinated, s.action_correct, s.arg_f1, s.rouge_l) == (True, False, None, None, None)


def test_rouge_l_hand_computed():
    step = StaticStep(
        id="f",
        tool_names=TOOLS,
        gold_plan="finish",
        gold_answer="It is 21 degrees in Paris",
        predicted_plan="finish",
        predicted_answer="It is 21 degrees",
    )
    # LCS 4 of gold 6 / predicted 4 tokens: P 1, R 2/3 -> F 0.8
    assert score_step(step).rouge_l == pytest.approx(0.8)
    missing = StaticStep(
        id="f",
        tool_names=TOOLS,
        gold_plan="finish",
        gold_answer="It is 21 degrees in Paris",
        predicted_plan="call",
        predicted_tool="get_time",
        predicted_arguments={},
    )
    assert score_step(missing).rouge_l == 0.0


# --- aggregate --------------------------------------------------------------------------------------------------------
def test_aggregate_hand_computed():
    steps = [
        # right tool, one of two values right: 1 + 0.5 = 1.5; P = R = 0.75 -> F1 0.75
        call_step(
            "get_weather",
            {"city": "Paris", "unit": "C"},
            id="1",
            predicted_plan="call",
            predicted_tool="get_weather",
            predicted_arguments={"city": "Paris", "unit": "F"},
        ),
        call_step("get_time", {}, id="2", predicted_plan="call", predicted_tool="get_time", predicted_arguments={}),
        call_step(
            "get_weather",
            {"city": "Rome"},
            id="3",
            predicted_plan="call",
            predicted_tool="get_wether",
            predicted_arguments={"city": "Rome"},
        ),
        call_step("get_time", {"tz": "UTC"}, id="4", predicted_plan="finish", predicted_answer="noon"),
        StaticStep(
            id="5",
            tool_names=TOOLS,
            gold_plan="finish",
            gold_answer="It is 21 degrees in Paris",
            predicted_plan="finish",
            predicted_answer="It is 21 degrees",
        ),
        StaticStep(
            id="6",
            tool_names=TOOLS,
            gold_plan="give up",
            predicted_plan="call",
            predicted_tool="search",
            predicted_arguments={},
        ),
    ]
    m = static_metrics(steps)
    assert m.plan_acc == pytest.approx(100 * 4 / 6)
    assert m.act_em == pytest.approx(100 * 2 / 4)
    assert m.hallu == pytest.approx(100 * 2 / 6)
    assert m.arg_f1 == pytest.approx(100 * (0.75 + 1 + 0 + 0) / 4)
    assert m.rouge_l == pytest.approx(80.0)
    assert (m.steps, m.call_steps, m.finish_steps, m.give_up_steps, m.arg_f1_steps) == (6, 4, 1, 1, 4)
    assert (m.hallucinated_steps, m.plan_missing, m.gold_arguments_unscorable) == (2, 0, 0)
    assert list(m.headline()) == ["Plan ACC", "Act. EM", "Hallu.", "Arg. F1", "R-L"]
    assert m.to_dict()["act_em"] == m.act_em


def test_aggregate_leaves_unscorable_gold_out_of_arg_f1_only():
    steps = [
        call_step(
            gold_args="not json",
            id="1",
            predicted_plan="call",
            predicted_tool="get_weather",
            predicted_arguments={"city": "Paris"},
        ),
        call_step(id="2", predicted_plan="call", predicted_tool="get_weather", predicted_arguments={"city": "Oslo"}),
    ]
    m = static_metrics(steps)
    assert (m.act_em, m.arg_f1) == (100.0, 50.0)
    assert (m.call_steps, m.arg_f1_steps, m.gold_arguments_unscorable) == (2, 1, 1)


def test_empty_step_list_gives_undefined_metrics():
    m = static_metrics([])
    assert m.headline() == {"Plan ACC": None, "Act. EM": None, "Hallu.": None, "Arg. F1": None, "R-L": None}
    assert m.steps == 0


def test_metric_over_no_steps_of_its_kind_is_none():
    m = aggregate([score_step(StaticStep(id="g", tool_names=TOOLS, gold_plan="give up", predicted_plan="give up"))])
    assert (m.plan_acc, m.hallu, m.act_em, m.arg_f1, m.rouge_l) == (100.0, 0.0, None, None, None)


# --- records ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {"gold_plan": "call", "gold_tool": "f"},  # no gold arguments
        {"gold_plan": "call", "gold_arguments": {}},  # no gold tool
        {"gold_plan": "finish"},  # no gold answer
        {"gold_plan": "give up", "gold_answer": "x"},
        {"gold_plan": "finish", "gold_answer": "x", "gold_tool": "f", "gold_arguments": {}},
        {"gold_plan": "give up", "predicted_plan": "finish", "predicted_tool": "f"},
        {"gold_plan": "give up", "predicted_plan": "call", "predicted_answer": "x"},
        {"gold_plan": "give up", "predicted_plan": "call", "predicted_arguments": {}},  # arguments without a tool
        {"gold_plan": "give up", "predicted_tool": ""},
        {"gold_plan": "give up", "predicted_plan": "maybe"},
    ],
)
def test_inconsistent_records_are_rejected(fields):
    with pytest.raises(ValidationError):
        StaticStep(id="x", tool_names=TOOLS, **fields)


def test_with_prediction_names_the_step_on_error():
    step = StaticStep(id="traj-7#3", tool_names=TOOLS, gold_plan="give up")
    assert step.with_prediction(Prediction(plan="give up")).predicted_plan == "give up"
    with pytest.raises(RecordError, match="traj-7#3"):
        step.with_prediction(Prediction(plan="finish", tool="get_time"))


def test_plan_label():
    assert [plan_label(d) for d in ("caller", "conclusion", "give up")] == ["call", "finish", "give up"]
    with pytest.raises(ValueError):
        plan_label("summarizer")


def test_predictions_from_parsed_outputs():
    planner = parse_planner_output("Look.\n Next: caller.")
    assert prediction_from_roles(planner, parse_caller_output('Action: f\nAction Input: {"a": 1}')) == Prediction(
        "call", "f", {"a": 1}
    )
    # a caller failure keeps what was readable: the name and the bad argument text (Act. EM counts, Arg. F1 is 0)
    assert prediction_from_roles(planner, parse_caller_output("Action: f\nAction Input: {a: 1}")) == Prediction(
        "call", "f", "{a: 1}"
    )
    assert prediction_from_roles(planner, parse_caller_output("no call here")) == Prediction("call")
    assert prediction_from_roles(parse_planner_output("hmm")) == Prediction()
    assert prediction_from_roles(parse_planner_output("Done. Next: conclusion."), answer="21") == Prediction(
        "finish", answer="21"
    )
    assert prediction_from_global(parse_global_output("t\nAction: f\nAction Input: {}")) == Prediction("call", "f", {})
    assert prediction_from_global(parse_global_output("t\nAction: f\nAction Input: [1]")) == Prediction(
        "call", "f", "[1]"
    )
    assert prediction_from_global(parse_global_output("t\nAction:\nAction Input: {}")) == Prediction("call")
    assert prediction_from_global(parse_global_output("t\nconclusion: 21")) == Prediction("finish", answer="21")
    assert prediction_from_global(parse_global_output("t\nconclusion: give up.")) == Prediction("give up")
    assert prediction_from_global(parse_global_output("just thinking")) == Prediction()


# --- gold steps from trajectories -------------------------------------------------------------------------------------
def weather_trajectory() -> Trajectory:
    return Trajectory(
        id="t1",
        source="test",
        tools=[ToolSpec(name="get_weather"), ToolSpec(name="get_time")],
        instruction="Weather in Paris?",
        steps=[
            Step(role="user", content="Weather in Paris?"),
            Step(role="assistant", content="Look it up.", decision="caller"),
            Step(role="caller", tool_name="get_weather", arguments={"city": "Paris"}),
            Step(role="observation", content='{"temp": 21}'),
            Step(role="assistant", content="Try a bad call.", decision="caller"),
            Step(role="caller", tool_name="get_time", arguments_text="{tz: UTC}"),
            Step(role="observation", content="error"),
            Step(role="assistant", content="I have it.", decision="conclusion"),
            Step(role="conclusion", content="It is 21 degrees in Paris."),
        ],
    )


def test_gold_steps_from_trajectory():
    steps = gold_steps(weather_trajectory())
    assert [(s.id, s.gold_plan, s.step_index) for s in steps] == [
        ("t1#1", "call", 1),
        ("t1#4", "call", 4),
        ("t1#7", "finish", 7),
    ]
    assert steps[0].gold_arguments == {"city": "Paris"} and steps[0].tool_names == TOOLS
    assert steps[1].gold_arguments == "{tz: UTC}"  # kept as text: unscorable for Arg. F1
    assert steps[2].gold_answer == "It is 21 degrees in Paris."
    m = static_metrics(
        s.with_prediction(
            Prediction(plan=s.gold_plan, tool=s.gold_tool, arguments=s.gold_arguments, answer=s.gold_answer)
        )
        for s in steps
    )
    assert m.headline() == {"Plan ACC": 100.0, "Act. EM": 100.0, "Hallu.": 0.0, "Arg. F1": 100.0, "R-L": 100.0}
    assert m.gold_arguments_unscorable == 1


def test_gold_steps_reject_a_dangling_decision():
    traj = weather_trajectory()
    traj.steps.pop()  # the conclusion the last decision announced
    with pytest.raises(RecordError, match="t1"):
        gold_steps(traj)


# --- the real ToolBench out-of-domain test set ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def out_of_domain():
    path = FIXTURES / "alpha-umi" / "toolbench_out_of_domain_test.json"
    trajectories = [t for t in import_alpha_umi(path) if isinstance(t, Trajectory)]
    assert len(trajectories) >= 390
    return [(t, s) for t in trajectories for s in gold_steps(t)]


def test_real_test_set_gold_as_prediction_is_perfect(out_of_domain):
    perfect = [
        s.with_prediction(
            Prediction(plan=s.gold_plan, tool=s.gold_tool, arguments=s.gold_arguments, answer=s.gold_answer)
        )
        for _, s in out_of_domain
    ]
    m = static_metrics(perfect)
    # the fixture's README: 1,547 scored steps (1,146 call, 294 finish, 107 give up); the importer may reject a record
    assert m.call_steps >= 1140 and m.finish_steps >= 290 and m.give_up_steps >= 105
    assert m.steps == m.call_steps + m.finish_steps + m.give_up_steps
    assert m.headline() == {"Plan ACC": 100.0, "Act. EM": 100.0, "Hallu.": 0.0, "Arg. F1": 100.0, "R-L": 100.0}


def test_real_test_set_gold_outputs_parsed_back_are_perfect(out_of_domain):
    """Render each gold step as the models would write it, parse it, score it: the whole path loses nothing."""
    roles, single = [], []
    for traj, s in out_of_domain:
        thought = traj.steps[s.step_index]
        nxt = traj.steps[s.step_index + 1] if s.gold_plan != "give up" else None
        planner = parse_planner_output(planner_target(thought.content, thought.decision))
        caller = answer = None
        if s.gold_plan == "call":
            caller = parse_caller_output(caller_target(nxt.tool_name, nxt.arguments_json))
            text = global_target(thought.content, call=nxt)
        elif s.gold_plan == "finish":
            answer = parse_summarizer_output(nxt.content)
            text = global_target(thought.content, answer=nxt.content)
        else:
            text = global_target(thought.content, give_up=True)
        roles.append(s.with_prediction(prediction_from_roles(planner, caller, answer)))
        single.append(s.with_prediction(prediction_from_global(parse_global_output(text))))
    perfect = {"Plan ACC": 100.0, "Act. EM": 100.0, "Hallu.": 0.0, "Arg. F1": 100.0, "R-L": 100.0}
    assert static_metrics(roles).headline() == perfect
    assert static_metrics(single).headline() == perfect


def test_real_test_set_always_give_up(out_of_domain):
    m = static_metrics(s.with_prediction(Prediction(plan="give up")) for _, s in out_of_domain)
    assert m.plan_acc == pytest.approx(100 * m.give_up_steps / m.steps)
    assert (m.act_em, m.hallu, m.arg_f1, m.rouge_l) == (0.0, 0.0, 0.0, 0.0)
