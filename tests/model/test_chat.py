"""`umi chat`: a scripted session shows thought, call, observation and answer as they happen and carries the
conversation over; tools come from a BFCL toolkit, a Python module or a schema file; the command runs end to end on a
tiny random model with scripted stdin."""

from __future__ import annotations

import io
import json
import textwrap

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.support.scripted import ScriptedBackend
from umi.agent.chat import ChatSession, SchemaOnlyTools, load_runtime
from umi.agent.loop import AgentConfig, AlphaUMiAgent
from umi.tools.bfcl import BFCLToolkit, ToolkitError

ADD_TURN = [
    ("planner", "I should add the two numbers.\n Next: caller."),
    ("caller", 'Action: add\nAction Input: {"a": 2, "b": 3}'),
    ("planner", "I have the sum.\n Next: conclusion."),
    ("summarizer", "2 + 3 = 5."),
]


def session_for(script, runtime=None):
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False, color_system=None)
    backend = ScriptedBackend(list(script))
    agent = AlphaUMiAgent(backend, config=AgentConfig(doc_style="compact", max_steps=4))
    return ChatSession(agent, runtime or BFCLToolkit(["MathAPI"]), console), backend, out


def lines_from(*lines: str):
    queue = list(lines)

    def read(prompt: str) -> str:
        if not queue:
            raise EOFError
        return queue.pop(0)

    return read


def test_session_shows_thought_call_observation_answer_in_order():
    session, backend, out = session_for(ADD_TURN)
    assert session.loop(lines_from("What is 2 plus 3?")) == 1
    text = out.getvalue()
    marks = [
        "thought #1 I should add the two numbers. (next: caller)",
        'call #1 Action: add\nAction Input: {"a": 2, "b": 3}',
        'observation #1 {"result": 5}',
        "thought #2 I have the sum. (next: conclusion)",
        "answer 2 + 3 = 5.",
        "(answered, 2 step(s)",
    ]
    positions = [text.find(m) for m in marks]
    assert all(p >= 0 for p in positions), text
    assert positions == sorted(positions)
    assert not backend.script


def test_conversation_carries_over_and_reset_clears_it():
    second = [("planner", "Already answered.\n Next: conclusion."), ("summarizer", "Still 5.")]
    third = [("planner", "Fresh start.\n Next: give up.")]
    session, backend, out = session_for(ADD_TURN + second + third)
    ran = session.loop(lines_from("What is 2 plus 3?", "And again?", "/reset", "Hello", "/exit", "never read"))
    assert ran == 3
    second_prompt = [p for role, p in backend.prompts if role == "planner"][2]
    assert "user: What is 2 plus 3?" in second_prompt and 'observation: {"result": 5}' in second_prompt
    last_prompt = backend.prompts[-1][1]
    assert "What is 2 plus 3?" not in last_prompt and "user: Hello" in last_prompt
    assert "gave up Fresh start." in out.getvalue() and "conversation cleared" in out.getvalue()
    assert backend.resets >= 1


def test_unreadable_call_is_shown_as_such():
    script = [
        ("planner", "Try.\n Next: caller."),
        ("caller", "add two and three"),
        ("planner", "Give up.\n Next: give up."),
    ]
    session, _, out = session_for(script)
    session.loop(lines_from("2+3?"))
    text = out.getvalue()
    assert "call #1 unreadable (no_action) add two and three" in text
    assert "observation #1 Error: the caller output could not be parsed" in text


def test_tools_from_a_python_module(tmp_path):
    module = tmp_path / "my_tools.py"
    module.write_text(
        textwrap.dedent("""
        def shout(text):
            return text.upper()

        TOOLS = [({"name": "shout", "description": "Upper-case a text",
                   "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
                                  "required": ["text"]}}, shout)]
    """)
    )
    runtime = load_runtime(tools=str(module))
    assert [s.name for s in runtime.specs] == ["shout"]
    assert runtime.dispatch("shout", {"text": "hi"}).text == "HI"
    assert runtime.dispatch("shout", {"text": 3}).error_kind == "invalid_arguments"
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ValueError, match="neither a TOOLS list"):
        load_runtime(tools=str(tmp_path / "empty.py"))


def test_schema_only_tools_ask_the_user(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(
        json.dumps(
            [
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "description": "Weather of a city",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                            "required": ["city"],
                        },
                    },
                }
            ]
        )
    )
    asked = []
    runtime = load_runtime(tools=str(path), ask=lambda call: asked.append(call) or "sunny")
    assert isinstance(runtime, SchemaOnlyTools)
    assert runtime.dispatch("weather", {"city": "Oslo"}).text == "sunny"
    assert asked == ['weather({"city": "Oslo"})']
    assert runtime.dispatch("weather", {}).error_kind == "invalid_arguments" and len(asked) == 1
    assert runtime.dispatch("rain", {}).error_kind == "unknown_tool"


def test_bad_tool_choices_are_named():
    with pytest.raises(ValueError, match="exactly one of --toolkit"):
        load_runtime()
    with pytest.raises(ToolkitError, match="NotAClass"):
        load_runtime(toolkit="MathAPI,NotAClass")


def test_chat_command_on_a_tiny_model(tiny_backbone):
    from umi.cli.main import app

    tiny = str(tiny_backbone)
    result = CliRunner().invoke(
        app,
        [
            "chat",
            "--toolkit",
            "MathAPI",
            "--planner",
            tiny,
            "--caller",
            tiny,
            "--summarizer",
            tiny,
            "--max-steps",
            "2",
            "--max-prompt-tokens",
            "1500",
        ],
        input="What is 2 plus 3?\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "17 tools" in out and "you>" in out
    # a random model writes no decision: the planner's text goes on as a caller step, whatever the call is
    assert "thought #1" in out and "call #1" in out and "observation #1" in out and "thought #2" in out
    assert "(max_steps, 2 step(s)" in out
    bad = CliRunner().invoke(
        app, ["chat", "--toolkit", "NoSuchClass", "--planner", tiny, "--caller", tiny, "--summarizer", tiny]
    )
    assert bad.exit_code == 2 and "NoSuchClass" in bad.output
