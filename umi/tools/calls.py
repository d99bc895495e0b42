"""Parse tool calls from text without ever evaluating it.

Two formats:

- Python-style call strings, as BFCL writes its gold answers: `cd(folder='document')`, `sort('final_report.pdf')`,
  `triangle_properties.get(side1=5, side2=4, side3=3)`. `parse_python_call` reads them with `ast` only: the text must
  be one call expression whose function is a plain or dotted name and whose arguments are literals (strings, numbers,
  booleans, None, and lists / tuples / dicts of those; negative numbers included). Each argument goes through
  `ast.literal_eval`; nothing is ever evaluated, so `__import__('os').system('x')`, `f(x=os.environ)` or
  `(lambda: 0)()` come back as typed errors, not actions.
- The α-UMi caller format, `Action: <name>\\nAction Input: <JSON object>`. `parse_action` is the strict (raising)
  face of `umi.parsing.parse_caller_output`, so the agent and the tools read one format one way.

Every failure is a `ToolCallError` subclass with a message naming what was wrong.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from typing import Any

from umi.parsing import ParseFailure, parse_caller_output

__all__ = [
    "ToolCallError",
    "CallSyntaxError",
    "NotACallError",
    "CallTargetError",
    "ArgumentError",
    "ActionFormatError",
    "MissingActionError",
    "MissingActionInputError",
    "BadArgumentsJSONError",
    "ArgumentsNotObjectError",
    "PythonCall",
    "parse_python_call",
    "parse_action",
    "to_json_value",
    "standardize_string",
]

MAX_CALL_CHARS = 100_000  # a longer "call" is not a tool call; refuse before parsing


# --- errors ---------------------------------------------------------------------------------------------------------
class ToolCallError(ValueError):
    """A tool call that cannot be read. `text` is the input (possibly long), `detail` the reason."""

    def __init__(self, detail: str, text: str = ""):
        self.detail = detail
        self.text = text
        super().__init__(detail)


class CallSyntaxError(ToolCallError):
    """The text is not a valid Python expression."""


class NotACallError(ToolCallError):
    """A valid expression, but not a single function call."""


class CallTargetError(ToolCallError):
    """The called thing is not a plain or dotted name (a call on a call's result, a subscript, a lambda, a dunder)."""


class ArgumentError(ToolCallError):
    """An argument is not a literal (a name, an attribute, a call, an operator, `*args` / `**kwargs`) or is not
    representable as JSON (sets, bytes, complex numbers, infinities, non-string dict keys)."""


class ActionFormatError(ToolCallError):
    """The caller's `Action: / Action Input:` text cannot be read. `failure` is the agent's ParseFailure (its
    `observation()` is the line to show the planner)."""

    def __init__(self, detail: str, text: str = "", failure: Any = None):
        super().__init__(detail, text)
        self.failure = failure


class MissingActionError(ActionFormatError):
    """No `Action:` label, or one without a tool name (empty output included)."""


class MissingActionInputError(ActionFormatError):
    """`Action:` without an `Action Input:` after it."""


class BadArgumentsJSONError(ActionFormatError):
    """The text after `Action Input:` is not JSON."""


class ArgumentsNotObjectError(ActionFormatError):
    """The arguments are JSON, but not an object."""


# --- Python-style calls ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PythonCall:
    """A parsed call: the (possibly dotted) function name, positional and keyword arguments as Python values."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _dotted_name(node: ast.expr, text: str) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise CallTargetError(
            f"the called function must be a plain or dotted name, got a {type(node).__name__} expression", text
        )
    parts.append(node.id)
    parts.reverse()
    for part in parts:
        if part.startswith("__"):
            raise CallTargetError(f"dunder names cannot be called: {part!r}", text)
    return ".".join(parts)


def _check_json_value(value: Any, where: str, text: str) -> None:
    """Literal values must be representable as JSON: the call becomes a JSON `Action Input` downstream."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ArgumentError(f"{where}: {value!r} is not a finite number", text)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]", text)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ArgumentError(f"{where}: dict keys must be strings, got {key!r}", text)
            _check_json_value(item, f"{where}[{key!r}]", text)
        return
    raise ArgumentError(f"{where}: a {type(value).__name__} value is not JSON", text)


def _literal(node: ast.expr, where: str, text: str) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ArgumentError(f"{where} is not a literal value (got a {type(node).__name__} expression)", text) from None
    _check_json_value(value, where, text)
    return value


def parse_python_call(text: str) -> PythonCall:
    """One Python-style call -> PythonCall; a ToolCallError subclass if it is anything else. Never evaluates."""
    if not isinstance(text, str):
        raise CallSyntaxError(f"a call must be text, got {type(text).__name__}", repr(text))
    if len(text) > MAX_CALL_CHARS:
        raise CallSyntaxError(f"the call is {len(text)} characters long (at most {MAX_CALL_CHARS})", text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise CallSyntaxError(f"not a Python expression: {e.msg}", text) from None
    except (ValueError, MemoryError, RecursionError) as e:  # null bytes; absurd nesting
        raise CallSyntaxError(f"not a Python expression: {e}", text) from None
    node = tree.body
    if not isinstance(node, ast.Call):
        raise NotACallError(f"expected one function call, got a {type(node).__name__} expression", text)
    name = _dotted_name(node.func, text)
    args = []
    for i, arg in enumerate(node.args):
        if isinstance(arg, ast.Starred):
            raise ArgumentError(f"{name}: *args unpacking is not allowed", text)
        args.append(_literal(arg, f"{name}: positional argument {i}", text))
    kwargs: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ArgumentError(f"{name}: **kwargs unpacking is not allowed", text)
        if kw.arg in kwargs:  # the parser accepts a repeated keyword; only the compiler would refuse it
            raise ArgumentError(f"{name}: argument {kw.arg!r} is given twice", text)
        kwargs[kw.arg] = _literal(kw.value, f"{name}: argument {kw.arg!r}", text)
    return PythonCall(name=name, args=tuple(args), kwargs=kwargs)


_STANDARDIZE = re.compile(r"[ ,./\-_*^]")


def standardize_string(text: str) -> str:
    """A string argument as BFCL's AST checker compares it: without spaces and `,./-_*^`, lower case, ' as \" (so
    "April 1, 2024" and "april 1 2024" are the same value). For the metrics' argument comparison and the importer's
    twin test alike."""
    return _STANDARDIZE.sub("", text).lower().replace("'", '"')


def to_json_value(value: Any) -> Any:
    """Tuples -> lists, recursively: the JSON view of parsed literal arguments."""
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    return value


# --- the α-UMi caller format -----------------------------------------------------------------------------------------
_ACTION_ERRORS: dict[str, type[ActionFormatError]] = {
    "empty_output": MissingActionError,
    "no_action": MissingActionError,
    "empty_tool_name": MissingActionError,
    "no_action_input": MissingActionInputError,
    "bad_json": BadArgumentsJSONError,
    "arguments_not_object": ArgumentsNotObjectError,
}


def parse_action(text: str) -> tuple[str, dict[str, Any]]:
    """`Action: <name>\\nAction Input: <JSON object>` -> (name, arguments); an ActionFormatError subclass otherwise.

    The reading rules (labels case-free, the call at the last `Action:` with an `Action Input:` after it, text after
    the JSON ignored, the turn cut at `</s>`) are umi.parsing's, shared so both read the format the same way.
    """
    if not isinstance(text, str):
        raise MissingActionError(f"the caller output must be text, got {type(text).__name__}", repr(text))
    parsed = parse_caller_output(text)
    if isinstance(parsed, ParseFailure):
        error = _ACTION_ERRORS.get(parsed.kind, ActionFormatError)
        raise error(parsed.detail, text, failure=parsed)
    return parsed.tool_name, parsed.arguments
