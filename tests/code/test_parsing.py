"""umi.parsing: hand-written cases, the reference's own targets, and property-based fuzzing."""

import json
import os
from typing import get_args

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.fixtures import FIXTURES_DIR as FIXTURES
from umi.parsing import (
    FailureKind,
    GlobalAnswer,
    GlobalCall,
    GlobalGiveUp,
    ParseFailure,
    PlannerOutput,
    ToolCall,
    parse_arguments,
    parse_caller_output,
    parse_global_output,
    parse_planner_output,
    parse_summarizer_output,
)
from umi.prompts import caller_target, global_target, planner_target
from umi.schema import DECISIONS, Step

ALPHA_UMI = FIXTURES / "alpha-umi"
FAILURE_KINDS = set(get_args(FailureKind))


# --- planner ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decision", DECISIONS)
def test_planner_canonical(decision):
    out = parse_planner_output(planner_target("I should look it up.", decision))
    assert out == PlannerOutput("I should look it up.", decision)
    assert out.render() == f"I should look it up.\n Next: {decision}."


@pytest.mark.parametrize(
    ("text", "thought", "decision"),
    [
        ("Look it up. Next: caller.", "Look it up.", "caller"),  # the reference data's own layout: no newline
        ("Look it up.\nNEXT :Caller", "Look it up.", "caller"),
        ("Done.\n next:conclusion", "Done.", "conclusion"),
        ("Done.\n\nnext:conclusion", "Done.\n", "conclusion"),  # only planner_target's own separator is removed
        ("Hopeless.\n Next: give_up.", "Hopeless.", "give up"),
        ("Hopeless.\n Next: Give  Up", "Hopeless.", "give up"),
        ("Go.\n Next: caller.</s>caller: Action: f", "Go.", "caller"),
        ("Go.\n Next: caller.\ncaller: Action: f\nAction Input: {}", "Go.", "caller"),  # ran past its turn
        (" Next: conclusion.", "", "conclusion"),
    ],
)
def test_planner_tolerant(text, thought, decision):
    assert parse_planner_output(text) == PlannerOutput(thought, decision)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Go.\n Next: caller. Next: give up.", "several_decisions"),  # which one did it mean?
        ("Go.\n Next: caller.\n Next: caller.", "several_decisions"),
        ("The thought of the next step, followed by Next: caller or conclusion or give up.", "instruction_echo"),
        ("I will look.\nNext: Caller or conclusion or give up", "instruction_echo"),
    ],
)
def test_planner_strict(text, kind):
    """An untrained model that echoes its instruction, or writes two decisions, has not decided anything."""
    result = parse_planner_output(text)
    assert isinstance(result, ParseFailure) and result.kind == kind


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("", "empty_output"),
        ("  \n\t", "empty_output"),
        ("</s>Next: caller.", "empty_output"),
        ("I will call the weather tool.", "no_decision"),
        ("Next: callers", "no_decision"),
        ("Next caller.", "no_decision"),
        ("Go.</s> Next: caller.", "no_decision"),  # the turn ended before any decision
    ],
)
def test_planner_failures_are_typed(text, kind):
    out = parse_planner_output(text)
    assert isinstance(out, ParseFailure)
    assert (out.role, out.kind, out.text) == ("planner", kind, text)
    assert kind in out.observation() and out.observation().startswith("Error: the planner output")


def test_failure_observation_is_cut():
    out = parse_planner_output("x" * 5000)
    assert isinstance(out, ParseFailure) and len(out.observation()) < 400


# --- caller -----------------------------------------------------------------------------------------------------------
def test_caller_canonical_and_toolbench_layout():
    text = 'Action: get_weather\nAction Input: {\n  "city": "Paris",\n  "days": 2\n}'
    out = parse_caller_output(text)
    assert out == ToolCall("get_weather", {"city": "Paris", "days": 2}, '{\n  "city": "Paris",\n  "days": 2\n}')
    assert out.render() == text


@pytest.mark.parametrize(
    ("text", "name", "arguments"),
    [
        ("action :f\naction input: {}", "f", {}),
        ('Action: f Action Input: {"a": 1}', "f", {"a": 1}),  # all on one line
        ('Action: f\nAction Input: {"a": 1}\nobservation: ...', "f", {"a": 1}),  # trailing text ignored
        ('Action: f\nAction Input: {"a": 1}</s>junk', "f", {"a": 1}),
        ("I will take this action: now.\nAction: f\nAction Input: {}", "f", {}),  # a line-start label wins
        ('Action: f\nAction Input: {"s": "two\nlines"}', "f", {"s": "two\nlines"}),  # raw newline in a string
        ("Action: f\nAction Input: {}\nAction: g", "f", {}),  # the last Action: that has arguments
    ],
)
def test_caller_tolerant(text, name, arguments):
    out = parse_caller_output(text)
    assert isinstance(out, ToolCall)
    assert (out.tool_name, out.arguments) == (name, arguments)


@pytest.mark.parametrize(
    ("text", "kind", "tool_name", "arguments_text"),
    [
        ("", "empty_output", None, None),
        ("get_weather(city='Paris')", "no_action", None, None),
        ("Action:\nAction Input: {}", "empty_tool_name", None, None),
        ("Action: g", "no_action_input", "g", None),
        ("Action: g\nAction Input:", "bad_json", "g", ""),
        ("Action: g\nAction Input: {city: Paris}", "bad_json", "g", "{city: Paris}"),
        ("Action: g\nAction Input: NaN", "bad_json", "g", "NaN"),
        ('Action: g\nAction Input: {"x": Infinity}', "bad_json", "g", '{"x": Infinity}'),
        ("Action: g\nAction Input: [1, 2]", "arguments_not_object", "g", "[1, 2]"),
        ('Action: g\nAction Input: "Paris" please', "arguments_not_object", "g", '"Paris"'),
        ("Action: g\nAction Input: " + "[" * 100000, "bad_json", "g", "[" * 100000),  # absurd nesting
    ],
)
def test_caller_failures_are_typed(text, kind, tool_name, arguments_text):
    out = parse_caller_output(text)
    assert isinstance(out, ParseFailure)
    assert (out.role, out.kind, out.tool_name, out.arguments_text) == ("caller", kind, tool_name, arguments_text)


def test_parse_arguments_reports_consumed_text():
    assert parse_arguments('  {"a": [1, 2]} and more') == ({"a": [1, 2]}, '{"a": [1, 2]}')
    assert parse_arguments("{}") == ({}, "{}")
    failure = parse_arguments("nope", role="global")
    assert isinstance(failure, ParseFailure) and (failure.role, failure.kind) == ("global", "bad_json")


# --- global -----------------------------------------------------------------------------------------------------------
def test_global_three_forms():
    call = Step(role="caller", tool_name="get_weather", arguments={"city": "Paris"})
    assert parse_global_output(global_target("Look it up.", call=call)) == GlobalCall(
        "Look it up.", ToolCall("get_weather", {"city": "Paris"}, '{"city": "Paris"}')
    )
    assert parse_global_output(global_target("Done.", answer="21 degrees.")) == GlobalAnswer("Done.", "21 degrees.")
    assert parse_global_output(global_target("Hopeless.", give_up=True)) == GlobalGiveUp("Hopeless.")
    outputs = ["a\nAction: f\nAction Input: {}", "a\nconclusion: b", "a\nconclusion: give up."]
    assert [parse_global_output(t).decision for t in outputs] == ["caller", "conclusion", "give up"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a thought with ChatGPT-style `Action:` prose lines before the real call (as in the reference's training data)
        (
            'Plan:\nAction:\nI will retry the search.\nAction: search\nAction Input: {"q": "x"}',
            GlobalCall("Plan:\nAction:\nI will retry the search.", ToolCall("search", {"q": "x"}, '{"q": "x"}')),
        ),
        (
            "In conclusion: we need data.\nAction: f\nAction Input: {}",
            GlobalCall("In conclusion: we need data.", ToolCall("f", {}, "{}")),
        ),
        ("We tried f.\nConclusion: It is 21 degrees.", GlobalAnswer("We tried f.", "It is 21 degrees.")),
        ("Nothing works. conclusion: GIVE UP", GlobalGiveUp("Nothing works.")),
        ("Done.\nconclusion:", GlobalAnswer("Done.", "")),
        ("Done.\nconclusion: 21 degrees.</s>user: thanks", GlobalAnswer("Done.", "21 degrees.")),
        # an earlier call then a conclusion: the final section is the conclusion
        ("Action: f\nAction Input: {}\nconclusion: done", GlobalAnswer("Action: f\nAction Input: {}", "done")),
    ],
)
def test_global_tolerant(text, expected):
    assert parse_global_output(text) == expected


@pytest.mark.parametrize(
    ("text", "kind", "tool_name", "thought"),
    [
        ("", "empty_output", None, None),
        ("I am thinking about it.", "no_action", None, None),
        ("Look.\nAction: f\nAction Input: {oops}", "bad_json", "f", "Look."),
        ("Look.\nAction: f", "no_action_input", "f", "Look."),
        ("Look.\nAction:\nAction Input: {}", "empty_tool_name", None, "Look."),
    ],
)
def test_global_failures_are_typed(text, kind, tool_name, thought):
    out = parse_global_output(text)
    assert isinstance(out, ParseFailure)
    assert (out.role, out.kind, out.tool_name, out.thought) == ("global", kind, tool_name, thought)


def test_summarizer_output():
    assert parse_summarizer_output("  It is 21 degrees.</s>user: ") == "It is 21 degrees."
    assert parse_summarizer_output("") == ""


# --- the reference's own targets parse and render back byte for byte --------------------------------------------------
@pytest.mark.parametrize(
    ("name", "parse"),
    [
        ("reference_train_planner.json", parse_planner_output),
        ("reference_train_caller.json", parse_caller_output),
        ("reference_train_backbone.json", parse_global_output),
    ],
)
def test_reference_targets_round_trip(name, parse):
    examples = json.loads((ALPHA_UMI / name).read_text(encoding="utf-8"))
    assert examples
    for example in examples:
        out = parse(example["target"])
        assert not isinstance(out, ParseFailure), (example["target"][-200:], out)
        assert out.render() == example["target"]


# --- property-based ---------------------------------------------------------------------------------------------------
FRAGMENTS = [
    "Next:",
    "next :",
    " caller",
    "conclusion",
    "give up",
    "give_up",
    ".",
    "Action:",
    "action :",
    "Action Input:",
    "action_input:",
    "conclusion:",
    "{",
    "}",
    "[",
    "]",
    '"a"',
    ":",
    ",",
    "1",
    "NaN",
    "null",
    "\n",
    " ",
    "\t",
    "</s>",
    "\\",
    '"',
    "Paris",
    "é",
]
texts = st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=25).map("".join),
)
tool_name_texts = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
json_texts = st.one_of(
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3).map(json.dumps),
    st.sampled_from(["{}", "[1]", "{bad", "", "NaN", '{"a": 1', '"x"']),
)


@st.composite
def near_formats(draw):
    """Text shaped like the real formats, with the variations a model makes, around arbitrary text."""
    parts = [draw(texts)]
    shape = draw(st.sampled_from(["planner", "call", "conclusion"]))
    if shape == "planner":
        parts += [
            draw(st.sampled_from(["\n Next: ", "Next:", " NEXT : ", "next :\n"])),
            draw(st.sampled_from(["caller", "conclusion", "give up", "Give_Up", "give-up", "callr"])),
            draw(st.sampled_from([".", "", ". ", "</s>"])),
        ]
    elif shape == "call":
        parts += [
            draw(st.sampled_from(["\n", "", " "])),
            draw(st.sampled_from(["Action: ", "action:", "ACTION :"])),
            draw(st.one_of(tool_name_texts, st.text(max_size=6))),
            draw(st.sampled_from(["\n", " ", ""])),
            draw(st.sampled_from(["Action Input: ", "action_input:", "Action Input:\n"])),
            draw(json_texts),
        ]
    else:
        parts += [
            draw(st.sampled_from(["\nconclusion: ", "Conclusion:", "\n conclusion :"])),
            draw(st.one_of(st.sampled_from(["give up.", "Give up", "give_up"]), texts)),
        ]
    parts.append(draw(texts))
    return "".join(parts)


model_outputs = st.one_of(texts, near_formats())
# UMI_FUZZ_EXAMPLES raises the example count for a longer hunt (6000 per test ran clean)
FUZZ = settings(
    max_examples=int(os.environ.get("UMI_FUZZ_EXAMPLES", 400)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _check_failure(out, role, text):
    assert isinstance(out, ParseFailure)
    assert out.role == role and out.kind in FAILURE_KINDS and out.text == text
    assert isinstance(out.observation(), str) and out.detail


@FUZZ
@given(model_outputs)
def test_fuzz_planner(text):
    out = parse_planner_output(text)
    if isinstance(out, ParseFailure):
        _check_failure(out, "planner", text)
    else:
        assert isinstance(out, PlannerOutput) and out.decision in DECISIONS
        assert parse_planner_output(out.render()) == out  # the canonical form parses to the same decision


@FUZZ
@given(model_outputs)
def test_fuzz_caller(text):
    out = parse_caller_output(text)
    if isinstance(out, ParseFailure):
        _check_failure(out, "caller", text)
    else:
        assert isinstance(out, ToolCall) and isinstance(out.arguments, dict)
        assert out.tool_name and out.tool_name == out.tool_name.strip()
        assert parse_caller_output(out.render()) == out


@FUZZ
@given(model_outputs)
def test_fuzz_global(text):
    out = parse_global_output(text)
    if isinstance(out, ParseFailure):
        _check_failure(out, "global", text)
    else:
        assert isinstance(out, (GlobalCall, GlobalAnswer, GlobalGiveUp))
        assert out.decision in DECISIONS
        assert parse_global_output(out.render()) == out


@FUZZ
@given(model_outputs)
def test_fuzz_arguments_and_summarizer(text):
    out = parse_arguments(text)
    if isinstance(out, ParseFailure):
        assert out.kind in {"bad_json", "arguments_not_object"}
    else:
        arguments, consumed = out
        assert isinstance(arguments, dict) and json.loads(consumed, strict=False) == arguments
    assert isinstance(parse_summarizer_output(text), str)


# round trips: parse(render(x)) == x for the canonical forms umi.prompts renders
def _no_decision(thought: str) -> bool:
    """No decision in the thought at all: one with two (several_decisions) or the instruction (instruction_echo) is
    refused by design, so it cannot round-trip."""
    parsed = parse_planner_output(thought)
    return "</s>" not in thought and isinstance(parsed, ParseFailure) and parsed.kind == "no_decision"


def _no_labels(text: str) -> bool:
    """No `Action:` / `conclusion:` label at all: such text cannot be told from the output's final section."""
    if "</s>" in text:
        return False
    out = parse_global_output(text)
    return isinstance(out, ParseFailure) and out.kind in {"empty_output", "no_action"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
arguments = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
tool_names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,30}", fullmatch=True),
    st.text(st.characters(blacklist_characters="\n"), min_size=1, max_size=20),
).filter(lambda n: n == n.strip() and n and "</s>" not in n and "input" not in n.lower())


@st.composite
def tool_calls(draw):
    args = draw(arguments)
    text = json.dumps(args, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])))
    assume("</s>" not in text)  # `</s>` ends a turn, even inside a JSON string
    return ToolCall(draw(tool_names), args, text)


@FUZZ
@given(texts, st.sampled_from(DECISIONS))
def test_planner_round_trip(thought, decision):
    assume(_no_decision(thought))
    assert parse_planner_output(planner_target(thought, decision)) == PlannerOutput(thought, decision)


@FUZZ
@given(tool_calls())
def test_caller_round_trip(call):
    assert parse_caller_output(caller_target(call.tool_name, call.arguments_text)) == call


@FUZZ
@given(texts, st.one_of(tool_calls(), texts, st.none()))
def test_global_round_trip(thought, tail):
    thought = thought.strip()
    assume(_no_labels(thought))
    if isinstance(tail, ToolCall):
        step = Step(role="caller", tool_name=tail.tool_name, arguments_text=tail.arguments_text)
        expected = GlobalCall(thought, tail)
        text = global_target(thought, call=step)
    elif tail is None:
        expected, text = GlobalGiveUp(thought), global_target(thought, give_up=True)
    else:
        answer = tail.strip()
        assume(_no_labels(answer) and not isinstance(parse_global_output(f"\nconclusion: {answer}"), GlobalGiveUp))
        expected, text = GlobalAnswer(thought, answer), global_target(thought, answer=answer)
    assert parse_global_output(text) == expected
