"""Parse what the role models write into typed results; every failure is a typed value, never an exception.

Model output is untrusted text: nothing here evaluates it, and no input makes these functions raise. A parse either
gives a result (a planner decision, a tool call, a single-LLM step) or a `ParseFailure` naming what was wrong, which
the agent loop shows the planner as an observation (`ParseFailure.observation()`).

Formats (umi.prompts renders them; `parse(render(x)) == x` for the canonical forms, see tests/code/test_parsing.py):

- planner: `<thought>\\n Next: caller.` / `Next: conclusion.` / `Next: give up.` The decision is found anywhere, case
  and spacing free (`next :Caller`, `NEXT: give_up`), the period optional. Strict: an output with more than one
  decision, or one that repeats the instruction ("Next: caller or conclusion or give up"), is unparsed: an untrained
  model that echoes its prompt must not be read as deciding `caller`. The thought is everything before the decision, less exactly the
  separator `planner_target` puts there (one trailing space, then one trailing newline), so a thought comes back
  byte for byte, as `umi.data.alpha_umi.split_decision` reads the training data.
- caller: `Action: <name>\\nAction Input: <JSON object>`. Labels case and spacing free. The call opens at the last
  `Action:` label with an `Action Input:` after it (at the start of a line if any line starts with one); the name runs
  to the end of its line (or to `Action Input:` on the same line); the arguments are the first JSON value after
  `Action Input:`, text after it is ignored. Strict JSON constants only (NaN / Infinity are not JSON); raw control
  characters inside strings are tolerated (small models write literal newlines in strings).
- summarizer: the answer itself (stripped); it cannot fail, an empty answer is an answer (and scores 0).
- global (single-LLM): `<thought>\\nAction: ...\\nAction Input: ...`, or `<thought>\\nconclusion: <answer>`, or
  `<thought>\\nconclusion: give up.` The action or conclusion is the output's final section, so the later of the
  last `conclusion:` label and the last `Action:` label followed by an `Action Input:` opens it (thoughts in the
  training data hold `Action:` lines of prose); labels at the start of a line are preferred, one inside a line is used
  only when no line starts with one. Thought and answer are stripped, as `global_target` strips the thought.

JSON from strangers (`loads_untrusted_json`: a request body, a tool call's arguments string from a client) is read here
too, by the same rules as the model's arguments: refused with a `JSONProblem` saying what is wrong (not JSON, nested
deeper than a limit, an integer too long to convert cheaply, a number no double holds (`1e999`), NaN / Infinity).

Every parser first cuts the text at the first `</s>`: a turn ends there by the history format (umi.prompts.TURN_END),
whether or not the tokenizer treats it as a special token.

umi.tools.calls.parse_action is the strict (raising) face of the caller parser: the tools read the format this way too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from umi.prompts import TURN_END, caller_target, global_target, planner_target
from umi.schema import Decision, Step

__all__ = [
    "FailureKind",
    "ParseFailure",
    "PlannerOutput",
    "ToolCall",
    "GlobalCall",
    "GlobalAnswer",
    "GlobalGiveUp",
    "GlobalOutput",
    "parse_planner_output",
    "parse_caller_output",
    "parse_global_output",
    "parse_arguments",
    "parse_summarizer_output",
    "JSONProblem",
    "loads_untrusted_json",
    "MAX_INT_DIGITS",
]

ParsedRole = Literal["planner", "caller", "global"]
FailureKind = Literal[
    "empty_output",  # nothing but whitespace (before any `</s>`)
    "no_decision",  # planner: no `Next: caller|conclusion|give up`
    "several_decisions",  # planner: more than one `Next: ...` (which one it meant is a guess)
    "instruction_echo",  # planner: repeats the prompt's "Next: caller or conclusion or give up" (no decision made)
    "no_action",  # caller: no `Action:` label; global: neither `Action:` nor `conclusion:`
    "empty_tool_name",  # `Action:` with no name after it
    "no_action_input",  # `Action:` without `Action Input:` after it
    "bad_json",  # the text after `Action Input:` does not start with a JSON value
    "arguments_not_object",  # a JSON value, but not an object
]

_SHOWN_CHARS = 200  # how much of a bad output an observation quotes


MAX_INT_DIGITS = 300  # longer JSON integers are refused (Python's own limit, 4300 digits, is an unexplained ValueError)


# --- JSON from strangers: one reader, its rules shared with the model-output decoder below ---------------------------
class JSONProblem(ValueError):
    """JSON refused by `loads_untrusted_json`; the message says why."""


def _refuse_constant(name: str) -> Any:
    raise JSONProblem(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONProblem(f"the number {text[:40]} is out of range (not a finite double)")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise JSONProblem(f"an integer of {digits} digits (at most {MAX_INT_DIGITS} are accepted)")
    return int(text)


def loads_untrusted_json(text: str | bytes, max_depth: int = 64) -> Any:
    """`json.loads`, refusing (JSONProblem) what would be costly or unrepresentable later (see the module doc)."""
    try:
        value = json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_refuse_constant)
    except JSONProblem:
        raise
    except RecursionError:
        raise JSONProblem(f"it nests deeper than {max_depth} levels") from None
    except UnicodeDecodeError:
        raise JSONProblem("it is not UTF-8") from None
    except ValueError as e:  # json.JSONDecodeError
        raise JSONProblem(f"it is not valid JSON: {e}") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise JSONProblem(f"it nests deeper than {max_depth} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return value


@dataclass(frozen=True)
class ParseFailure:
    """Why a role's output could not be used. `tool_name` / `arguments_text` / `thought` keep what was readable
    (a call with a good name and bad JSON still names its tool: static evaluation scores the name)."""

    role: ParsedRole
    kind: FailureKind
    detail: str
    text: str
    tool_name: str | None = None
    arguments_text: str | None = None
    thought: str | None = None

    def observation(self) -> str:
        """One line for the planner to read as the step's observation."""
        shown = self.text if len(self.text) <= _SHOWN_CHARS else self.text[:_SHOWN_CHARS] + "..."
        return f"Error: the {self.role} output could not be parsed ({self.kind}): {self.detail}. Output was: {shown!r}"


@dataclass(frozen=True)
class PlannerOutput:
    thought: str
    decision: Decision

    def render(self) -> str:
        """The canonical planner text (what training saw; what the caller prompt and the history get)."""
        return planner_target(self.thought, self.decision)


@dataclass(frozen=True)
class ToolCall:
    """`arguments_text` is the JSON exactly as the model wrote it (kept so histories reproduce the model's bytes)."""

    tool_name: str
    arguments: dict[str, Any]
    arguments_text: str

    def render(self) -> str:
        return caller_target(self.tool_name, self.arguments_text)


@dataclass(frozen=True)
class GlobalCall:
    thought: str
    call: ToolCall

    @property
    def decision(self) -> Decision:
        return "caller"

    def render(self) -> str:
        step = Step(role="caller", tool_name=self.call.tool_name, arguments_text=self.call.arguments_text)
        return global_target(self.thought, call=step)


@dataclass(frozen=True)
class GlobalAnswer:
    thought: str
    answer: str

    @property
    def decision(self) -> Decision:
        return "conclusion"

    def render(self) -> str:
        return global_target(self.thought, answer=self.answer)


@dataclass(frozen=True)
class GlobalGiveUp:
    thought: str

    @property
    def decision(self) -> Decision:
        return "give up"

    def render(self) -> str:
        return global_target(self.thought, give_up=True)


GlobalOutput = GlobalCall | GlobalAnswer | GlobalGiveUp

# --- patterns: labels are matched case-free with free spacing around the colon
_NEXT = re.compile(r"\bnext[ \t]*:\s*(caller|conclusion|give[ \t_-]*up)\b", re.IGNORECASE)
_ECHO = re.compile(r"\bnext[ \t]*:\s*caller\s+or\s+conclusion\b", re.IGNORECASE)
_ACTION_LINE = re.compile(r"^[ \t]*action[ \t]*:", re.IGNORECASE | re.MULTILINE)
_ACTION_ANY = re.compile(r"\baction[ \t]*:", re.IGNORECASE)
_ACTION_INPUT = re.compile(r"\baction[ \t_]*input[ \t]*:", re.IGNORECASE)
_CONCLUSION_LINE = re.compile(r"^[ \t]*conclusion[ \t]*:", re.IGNORECASE | re.MULTILINE)
_CONCLUSION_ANY = re.compile(r"\bconclusion[ \t]*:", re.IGNORECASE)
_GIVE_UP_ANSWER = re.compile(r"give[ \t_-]*up\.?", re.IGNORECASE)


# strict=False: raw control characters inside strings are accepted (small models write literal newlines in strings);
# parse_constant / parse_float: NaN, Infinity and numbers out of a double's range (1e999) are refused, as from strangers
_DECODER = json.JSONDecoder(strict=False, parse_constant=_refuse_constant, parse_float=_finite_float)


def _turn(text: str) -> str:
    end = text.find(TURN_END)
    return text if end < 0 else text[:end]


def _decision(word: str) -> Decision:
    word = word.lower()
    if word.startswith("give"):
        return "give up"
    return "caller" if word == "caller" else "conclusion"


def parse_planner_output(text: str) -> PlannerOutput | ParseFailure:
    """The planner's thought and decision, or a ParseFailure (empty_output / no_decision)."""
    turn = _turn(text)
    if not turn.strip():
        return ParseFailure("planner", "empty_output", "the planner wrote nothing", text)
    if _ECHO.search(turn):
        return ParseFailure(
            "planner", "instruction_echo", "the output repeats the instruction instead of deciding", text
        )
    matches = list(_NEXT.finditer(turn))
    if not matches:
        return ParseFailure(
            "planner", "no_decision", "no 'Next: caller.', 'Next: conclusion.' or 'Next: give up.' found", text
        )
    if len(matches) > 1:
        found = ", ".join(repr(m.group(0)) for m in matches[:4])
        return ParseFailure(
            "planner", "several_decisions", f"{len(matches)} decisions ({found}): which one is meant is a guess", text
        )
    match = matches[0]
    thought = turn[: match.start()]
    # undo planner_target's separator exactly: "<thought>\n" + " Next: ..." (an empty thought gives " Next: ...")
    if thought.endswith(" "):
        thought = thought[:-1]
    if thought.endswith("\n"):
        thought = thought[:-1]
    return PlannerOutput(thought=thought, decision=_decision(match.group(1)))


def parse_arguments(text: str, role: ParsedRole = "caller") -> tuple[dict[str, Any], str] | ParseFailure:
    """The first JSON value in `text` (leading whitespace skipped, trailing text ignored), which must be an object.

    Returns (arguments, the JSON text consumed) or a ParseFailure (bad_json / arguments_not_object)."""
    start = len(text) - len(text.lstrip())
    try:
        value, end = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; absurd nesting recurses too deep
        detail = "no arguments after 'Action Input:'" if start == len(text) else f"arguments are not valid JSON: {e}"
        return ParseFailure(role, "bad_json", detail, text, arguments_text=text.strip())
    consumed = text[start:end]
    if not isinstance(value, dict):
        return ParseFailure(
            role,
            "arguments_not_object",
            f"arguments must be a JSON object, got {type(value).__name__}",
            text,
            arguments_text=consumed,
        )
    return value, consumed


def _parse_call(text: str, body: str, role: ParsedRole, thought: str | None) -> ToolCall | ParseFailure:
    """`body` starts right after an `Action:` label."""
    input_label = _ACTION_INPUT.search(body)
    line_end = body.find("\n")
    name_end = len(body) if line_end < 0 else line_end
    if input_label is not None and input_label.start() < name_end:
        name_end = input_label.start()
    tool_name = body[:name_end].strip()
    if not tool_name:
        return ParseFailure(role, "empty_tool_name", "'Action:' is not followed by a tool name", text, thought=thought)
    if input_label is None:
        return ParseFailure(
            role,
            "no_action_input",
            f"the call to {tool_name!r} has no 'Action Input:'",
            text,
            tool_name=tool_name,
            thought=thought,
        )
    parsed = parse_arguments(body[input_label.end() :], role)
    if isinstance(parsed, ParseFailure):
        return ParseFailure(
            role,
            parsed.kind,
            parsed.detail,
            text,
            tool_name=tool_name,
            arguments_text=parsed.arguments_text,
            thought=thought,
        )
    arguments, arguments_text = parsed
    return ToolCall(tool_name=tool_name, arguments=arguments, arguments_text=arguments_text)


def _call_label(turn: str, action_labels: re.Pattern[str]) -> re.Match[str] | None:
    """The `Action:` label that opens the call: the last one with an `Action Input:` after it (a thought may hold
    `Action:` lines of prose before the real call, as ChatGPT-written training data does), else the last one."""
    labels = list(action_labels.finditer(turn))
    with_input = [m for m in labels if _ACTION_INPUT.search(turn, m.end()) is not None]
    return (with_input or labels or [None])[-1]


def parse_caller_output(text: str) -> ToolCall | ParseFailure:
    """The caller's tool call: `Action: <name>\\nAction Input: <JSON object>`, or a ParseFailure."""
    turn = _turn(text)
    if not turn.strip():
        return ParseFailure("caller", "empty_output", "the caller wrote nothing", text)
    label = _call_label(turn, _ACTION_LINE) or _call_label(turn, _ACTION_ANY)
    if label is None:
        return ParseFailure("caller", "no_action", "no 'Action:' found", text)
    return _parse_call(text, turn[label.end() :], "caller", None)


def _global_label(
    turn: str, action_labels: re.Pattern[str], conclusion_labels: re.Pattern[str]
) -> re.Match[str] | None:
    """The label that opens the output's final section: the later of the call's `Action:` and the last
    `conclusion:`."""
    call = _call_label(turn, action_labels)
    conclusions = list(conclusion_labels.finditer(turn))
    conclusion = conclusions[-1] if conclusions else None
    if call is None or conclusion is None:
        return call or conclusion
    return call if call.start() > conclusion.start() else conclusion


def parse_global_output(text: str) -> GlobalOutput | ParseFailure:
    """The single-LLM step: thought then a call, an answer or a give-up; or a ParseFailure."""
    turn = _turn(text)
    if not turn.strip():
        return ParseFailure("global", "empty_output", "the model wrote nothing", text)
    label = _global_label(turn, _ACTION_LINE, _CONCLUSION_LINE) or _global_label(turn, _ACTION_ANY, _CONCLUSION_ANY)
    if label is None:
        return ParseFailure("global", "no_action", "neither 'Action:' nor 'conclusion:' found", text)
    thought = turn[: label.start()].strip()
    body = turn[label.end() :]
    if label.group(0).strip().lower().startswith("action"):
        call = _parse_call(text, body, "global", thought)
        return call if isinstance(call, ParseFailure) else GlobalCall(thought=thought, call=call)
    answer = body.strip()
    if _GIVE_UP_ANSWER.fullmatch(answer):
        return GlobalGiveUp(thought=thought)
    return GlobalAnswer(thought=thought, answer=answer)


def parse_summarizer_output(text: str) -> str:
    """The final answer: the summarizer's text up to `</s>`, stripped."""
    return _turn(text).strip()
