"""Safe call parsing: BFCL-style Python call strings (ast only, never eval) and the α-UMi `Action:` format."""

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umi.prompts import caller_target
from umi.tools.calls import (
    MAX_CALL_CHARS,
    ActionFormatError,
    ArgumentError,
    ArgumentsNotObjectError,
    BadArgumentsJSONError,
    CallSyntaxError,
    CallTargetError,
    MissingActionError,
    MissingActionInputError,
    NotACallError,
    PythonCall,
    ToolCallError,
    parse_action,
    parse_python_call,
    to_json_value,
)


# --- Python-style calls: what BFCL writes ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("cd(folder='document')", PythonCall("cd", (), {"folder": "document"})),
        ("mv(source='a', destination='b')", PythonCall("mv", (), {"source": "a", "destination": "b"})),
        ("sort('final_report.pdf')", PythonCall("sort", ("final_report.pdf",), {})),
        ("ls(a=True)", PythonCall("ls", (), {"a": True})),
        ("tail(file_name='log.txt',lines=20)", PythonCall("tail", (), {"file_name": "log.txt", "lines": 20})),
        ("f()", PythonCall("f", (), {})),
        ("  f( x = -3.5 , y=None )  ", PythonCall("f", (), {"x": -3.5, "y": None})),
        (
            "triangle_properties.get(side1=5, side2=4, side3=3)",
            PythonCall("triangle_properties.get", (), {"side1": 5, "side2": 4, "side3": 3}),
        ),
        ("a.b.c(1, 'two', k=[1, -2, (3, 4)])", PythonCall("a.b.c", (1, "two"), {"k": [1, -2, (3, 4)]})),
        (
            "f(d={'k': [1, {'n': -1}]}, s='paren ) inside ( string')",
            PythonCall("f", (), {"d": {"k": [1, {"n": -1}]}, "s": "paren ) inside ( string"}),
        ),
        ("f(s='it''s' \"joined\")", PythonCall("f", (), {"s": "its" + "joined"})),
        (
            "echo(content='Collaboration leads to success.\\nNext line')",
            PythonCall("echo", (), {"content": "Collaboration leads to success.\nNext line"}),
        ),
    ],
)
def test_parses_bfcl_style_calls(text, expected):
    assert parse_python_call(text) == expected


@pytest.mark.parametrize(
    "text, error",
    [
        ("__import__('os').system('x')", CallTargetError),  # a call on a call's result
        ("__import__('os')", CallTargetError),  # dunder names are refused outright
        ("f.__class__(1)", CallTargetError),
        ("(lambda: 0)()", CallTargetError),
        ("f()()", CallTargetError),
        ("fs[0](x=1)", CallTargetError),
        ("getattr(os, 'system')('x')", CallTargetError),
        ("f(x=os.environ)", ArgumentError),  # attribute access in an argument
        ("f(x=().__class__.__bases__)", ArgumentError),
        ("f(x=lambda: 0)", ArgumentError),
        ("f(x=open('/etc/passwd'))", ArgumentError),
        ("f(x=y)", ArgumentError),
        ("f(x=1+2)", ArgumentError),
        ("f(x=[i for i in range(3)])", ArgumentError),
        ("f(x=f'{secret}')", ArgumentError),
        ("f(*args)", ArgumentError),
        ("f(**{'a': 1})", ArgumentError),
        ("f(x={1, 2})", ArgumentError),  # sets are not JSON
        ("f(x=b'raw')", ArgumentError),
        ("f(x=1+2j)", ArgumentError),
        ("f(x=1e999)", ArgumentError),  # infinity is not JSON
        ("f(x={1: 'a'})", ArgumentError),
        ("1 + 1", NotACallError),
        ("os.system", NotACallError),
        ("[f(x=1), g(y=2)]", NotACallError),
        ("x = f()", CallSyntaxError),
        ("f(); g()", CallSyntaxError),
        ("import os", CallSyntaxError),
        ("f(x=1", CallSyntaxError),
        ("f(x=1, x=2)", ArgumentError),
        ("", CallSyntaxError),
        ("f(x='\\x00')", None),  # an escaped NUL inside a string literal is just a character
        ("f(x='\x00')", CallSyntaxError),  # a raw NUL byte is not Python source
        ("f(x=1)\x00", CallSyntaxError),
    ],
)
def test_hostile_or_malformed_calls_are_typed_errors(text, error):
    if error is None:
        assert parse_python_call(text).kwargs == {"x": "\x00"}
        return
    with pytest.raises(error) as caught:
        parse_python_call(text)
    assert isinstance(caught.value, ToolCallError) and isinstance(caught.value, ValueError)
    assert caught.value.detail and caught.value.text == text


def test_parsing_never_evaluates(tmp_path):
    marker = tmp_path / "side_effect"
    text = f"open({str(marker)!r}, 'w')"
    call = parse_python_call(text)  # a plain call with literal arguments parses; parsing runs nothing
    assert call == PythonCall("open", (str(marker), "w"), {})
    assert not marker.exists()
    with pytest.raises(ArgumentError):
        parse_python_call(f"f(x=open({str(marker)!r}, 'w').write('x'))")
    assert not marker.exists()


def test_absurd_inputs_fail_cleanly():
    with pytest.raises(ToolCallError):
        parse_python_call("f(x=" + "[" * 2000 + "]" * 2000 + ")")
    with pytest.raises(CallSyntaxError, match="at most"):
        parse_python_call("f(x='" + "a" * MAX_CALL_CHARS + "')")
    with pytest.raises(CallSyntaxError):
        parse_python_call(None)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("f(x)=,'\"[]{}:.-_1 aAos\\\n*")), max_size=40))
def test_any_text_gives_a_call_or_a_typed_error(text):
    try:
        call = parse_python_call(text)
    except ToolCallError:
        return
    assert isinstance(call, PythonCall) and call.name
    json.dumps(to_json_value(list(call.args)))  # whatever parses is JSON-representable
    json.dumps(to_json_value(call.kwargs))


def test_to_json_value_turns_tuples_into_lists():
    assert to_json_value({"a": (1, (2, 3)), "b": [{"c": ()}]}) == {"a": [1, [2, 3]], "b": [{"c": []}]}


# --- Action / Action Input ------------------------------------------------------------------------------------------
def test_parse_action_reads_the_caller_format():
    assert parse_action('Action: cd\nAction Input: {"folder": "document"}') == ("cd", {"folder": "document"})
    assert parse_action(caller_target("mv", '{"source": "a", "destination": "b"}') + "</s>") == (
        "mv",
        {"source": "a", "destination": "b"},
    )
    assert parse_action("Action: ls\nAction Input: {}") == ("ls", {})


@pytest.mark.parametrize(
    "text, error",
    [
        ("", MissingActionError),
        ("I think we should list the files.", MissingActionError),
        ("Action: \nAction Input: {}", MissingActionError),
        ("Action: cd", MissingActionInputError),
        ("Action: cd\nAction Input: {folder: document}", BadArgumentsJSONError),
        ("Action: cd\nAction Input:", BadArgumentsJSONError),
        ('Action: cd\nAction Input: ["document"]', ArgumentsNotObjectError),
        ('Action: cd\nAction Input: "document"', ArgumentsNotObjectError),
    ],
)
def test_parse_action_errors_are_typed(text, error):
    with pytest.raises(error) as caught:
        parse_action(text)
    assert isinstance(caught.value, ActionFormatError) and isinstance(caught.value, ToolCallError)
    assert caught.value.detail
    assert caught.value.failure is not None and caught.value.failure.observation().startswith("Error:")


def test_parse_action_error_keeps_the_tool_name_when_readable():
    with pytest.raises(BadArgumentsJSONError) as caught:
        parse_action("Action: cd\nAction Input: {oops")
    assert caught.value.failure.tool_name == "cd"


def test_calls_module_has_no_eval():
    source = (Path(__file__).resolve().parents[2] / "umi" / "tools" / "calls.py").read_text()
    assert "eval(" not in source.replace("literal_eval(", "").replace('mode="eval"', "")
    assert "exec(" not in source


# --- JSON from strangers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, problem",
    [
        ("[" * 100_000, "nests deeper than 64 levels"),
        ("[" * 70 + "]" * 70, "nests deeper than 64 levels"),
        ('{"a": ' + "9" * 5000 + "}", "an integer of 5000 digits (at most 300 are accepted)"),
        ('{"a": -' + "9" * 301 + "}", "an integer of 301 digits"),
        ('{"a": 1e999}', "the number 1e999 is out of range"),
        ('{"a": -1E400}', "out of range"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": -Infinity}', "-Infinity is not a JSON number"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe{", "not"),
    ],
)
def test_untrusted_json_is_refused_saying_why(text, problem):
    from umi.parsing import JSONProblem, loads_untrusted_json

    with pytest.raises(JSONProblem, match=re.escape(problem)):
        loads_untrusted_json(text)


def test_untrusted_json_that_is_fine_loads_as_json_would():
    from umi.parsing import loads_untrusted_json

    text = json.dumps({"a": [1, 2.5, -3e10, "x", None, True], "b": {"c": 10**299}, "d": [[[[]]]]})
    assert loads_untrusted_json(text) == json.loads(text)
    assert loads_untrusted_json("[" * 10 + "]" * 10, max_depth=10) == json.loads("[" * 10 + "]" * 10)
