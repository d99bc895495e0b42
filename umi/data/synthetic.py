"""Deterministic synthetic text for sources that have none (BFCL has no rationales and no final answers).

Everything here is a template filled from what the source does have -- the tool's name and description, the
observations, whether calls ran -- with the phrasing picked by a sha256 of a key (entry id, step index, kind of
text), never by Python's `hash()` (salted per process) or a global random state: the same input gives the same text
on every machine and every run. Importers mark the steps carrying this text `synthetic=True`.

Rationales may name the tool and say what it is for, but never spell out argument values: that is the caller's job,
and a planner trained on rationales that dictate the arguments would do the caller's work. `call_rationale` enforces
it: if a leaf argument value (one with a letter or digit in it) shows up in a candidate rationale -- a description can
happen to contain one -- a plainer phrasing without the description is used, and, if even the tool name contains the
value, one without the name. `mentions_argument_value` is the check (the tests use it too).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "pick",
    "tool_purpose",
    "argument_values",
    "mentions_argument_value",
    "call_rationale",
    "conclusion_rationale",
    "no_call_rationale",
    "give_up_rationale",
    "executed_answer",
    "unexecuted_answer",
    "no_call_answer",
    "placeholder_observation",
    "tools_phrase",
]

PURPOSE_LIMIT = 160  # characters of a tool description used in a rationale
RESULT_LIMIT = 300  # characters of an observation quoted in a final answer


def pick(options: Sequence[str], *key: object) -> str:
    """One of `options`, chosen by a sha256 of the key parts (stable everywhere)."""
    if not options:
        raise ValueError("no options to pick from")
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode("utf-8")).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


_BFCL_PREFIX = re.compile(r"^.*?Tool description:\s*", re.DOTALL)  # BFCL multi-turn docs open with the class's blurb
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def _shorten(text: str, limit: int) -> str:
    """`text` cut at a word boundary before `limit` characters, with `...` (a tool purpose or result in prose)."""
    if len(text) <= limit:
        return text
    head = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return (head or text[:limit]) + "..."


def tool_purpose(description: str, limit: int = PURPOSE_LIMIT) -> str:
    """The first sentence of a tool description, without BFCL's class blurb or the final period, cut to `limit`."""
    text = " ".join((description or "").split())
    if "Tool description:" in text:
        text = _BFCL_PREFIX.sub("", text, count=1)
    text = _SENTENCE_END.split(text, maxsplit=1)[0].strip().rstrip(".").strip()
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return _shorten(text, limit)


def argument_values(arguments: Any) -> list[str]:
    """The leaf values of an arguments object as text (strings as they are, numbers / booleans by str())."""
    out: list[str] = []
    if isinstance(arguments, Mapping):
        for value in arguments.values():
            out.extend(argument_values(value))
    elif isinstance(arguments, (list, tuple)):
        for value in arguments:
            out.extend(argument_values(value))
    elif arguments is not None:
        out.append(str(arguments))
    return out


def mentions_argument_value(text: str, arguments: Any) -> bool:
    """Whether `text` spells out a leaf argument value: as a whole word, case-insensitively. Values without any letter
    or digit (".", "/", "") carry nothing to leak and are ignored."""
    lowered = text.lower()
    for value in argument_values(arguments):
        value = value.strip().lower()
        if not any(ch.isalnum() for ch in value):
            continue
        if re.search(r"(?<!\w)" + re.escape(value) + r"(?!\w)", lowered):
            return True
    return False


# --- planner rationales ----------------------------------------------------------------------------------------------
_FIRST_CALL = (
    "For this request I will call {tool}: {purpose}.",
    "The right tool here is {tool}, which is for: {purpose}.",
    "I should use {tool} ({purpose}).",
    "Let me call {tool}; it is described as: {purpose}.",
)
_NEXT_CALL = (
    "Next I will call {tool}: {purpose}.",
    "The next step is {tool}, which is for: {purpose}.",
    "After that, I should use {tool} ({purpose}).",
    "Now {tool} comes next; it is described as: {purpose}.",
)
_AFTER_ERROR = (
    "The last call did not succeed; next I will call {tool}: {purpose}.",
    "That call reported an error, so the next step is {tool}, which is for: {purpose}.",
)
_FIRST_CALL_PLAIN = ("For this request I will call {tool}.", "The right tool here is {tool}.")
_NEXT_CALL_PLAIN = ("Next I will call {tool}.", "The next step is a call to {tool}.")
_NAMELESS = ("I will make the next tool call.", "The next step is another tool call.")


def call_rationale(
    key: Sequence[object],
    tool_name: str,
    description: str,
    arguments: Any,
    *,
    first: bool,
    previous_ok: bool = True,
) -> str:
    """The planner's thought before a call. `first`: the first call for this request; `previous_ok`: whether the
    observation before it was a success (it picks the wording after a failed call). Never spells out a value of
    `arguments` (see the module doc)."""
    purpose = tool_purpose(description)
    if first:
        templates = _FIRST_CALL
    else:
        templates = _NEXT_CALL if previous_ok else _AFTER_ERROR
    if purpose:
        text = pick(templates, *key, "call").format(tool=tool_name, purpose=purpose)
        if not mentions_argument_value(text, arguments):
            return text
    text = pick(_FIRST_CALL_PLAIN if first else _NEXT_CALL_PLAIN, *key, "call-plain").format(tool=tool_name)
    if not mentions_argument_value(text, arguments):
        return text
    return pick(_NAMELESS, *key, "call-nameless")


_CONCLUDE_EXECUTED = (
    "The tool results above cover this request, so I can answer now.",
    "That was the last call this request needs; time to report the outcome.",
    "All the needed calls have run, so I will sum up the results.",
    "I have what this request asked for and can give the answer.",
)
_CONCLUDE_UNEXECUTED = (
    "Every call this request needs has been made, so I can wrap up.",
    "No further calls are needed for this request; I will finish here.",
    "The calls for this request are all issued, so I will conclude.",
)


def conclusion_rationale(key: Sequence[object], *, executed: bool) -> str:
    return pick(_CONCLUDE_EXECUTED if executed else _CONCLUDE_UNEXECUTED, *key, "conclude")


_NO_CALL = (
    "No tool call can carry out this request in the current state, so I will answer directly.",
    "None of the available calls is needed or able to do this, so I will reply without one.",
    "This request cannot be done with a tool call here; I will tell the user.",
)


def no_call_rationale(key: Sequence[object]) -> str:
    return pick(_NO_CALL, *key, "no-call")


def _names(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


_GIVE_UP_ONE = (
    "The only tool available, {tool}, is for: {purpose}. That does not fit this request, so I cannot help with a "
    "tool call.",
    "This request is outside what {tool} does ({purpose}); no call would answer it, so I give up.",
    "{tool} is meant for: {purpose}. It cannot answer this request, and there is no other tool to try.",
)
_GIVE_UP_MANY = (
    "None of the available tools ({names}) fits this request, so I cannot answer it with a tool call.",
    "The tools on offer ({names}) each do something else; no call would answer this request.",
    "I checked the available tools ({names}) and none of them can handle this request, so I give up.",
)
_GIVE_UP_NONE = ("No tools are available for this request, so I cannot answer it with a tool call.",)


def give_up_rationale(key: Sequence[object], tools: Sequence[tuple[str, str]]) -> str:
    """The planner's thought when no tool fits: `tools` are (name, description) pairs."""
    if not tools:
        return pick(_GIVE_UP_NONE, *key, "give-up")
    if len(tools) == 1:
        name, description = tools[0]
        purpose = tool_purpose(description) or "another task"
        return pick(_GIVE_UP_ONE, *key, "give-up").format(tool=name, purpose=purpose)
    return pick(_GIVE_UP_MANY, *key, "give-up").format(names=_names([name for name, _ in tools]))


# --- final answers ---------------------------------------------------------------------------------------------------
def tools_phrase(tool_names: Iterable[str]) -> str:
    """`cd, mkdir and mv`; a tool used more than once says so: `spotify.play (2 calls)`."""
    counts: dict[str, int] = {}
    for name in tool_names:
        counts[name] = counts.get(name, 0) + 1
    return _names([name if n == 1 else f"{name} ({n} calls)" for name, n in counts.items()])


_EXECUTED = (
    "Done. I used {tools} for this request. The last result was: {result}",
    "I have completed this request with {tools}. Final output: {result}",
    "This is finished: {tools} ran as needed, and the last call returned: {result}",
    "Your request is taken care of ({tools}). Here is the last result: {result}",
)
_UNEXECUTED = (
    "I called {tools} to handle this request.",
    "This request is handled by {tools}, with the arguments it asked for.",
    "To answer this, I made the calls it needs: {tools}.",
)
_NO_CALL_ANSWER = (
    "I have not made any tool call for this request: none of the available tools can carry it out in the current "
    "state.",
    "I could not do this with the tools available here, so nothing was changed.",
    "This is not something the available tools can do right now, so I made no call.",
)


def executed_answer(key: Sequence[object], calls: Sequence[tuple[str, str]]) -> str:
    """The final answer after calls that ran: `calls` are (tool name, observation text), in order."""
    if not calls:
        return no_call_answer(key)
    result = _shorten(" ".join(calls[-1][1].split()), RESULT_LIMIT) or "(empty)"
    return pick(_EXECUTED, *key, "answer").format(tools=tools_phrase(n for n, _ in calls), result=result)


def unexecuted_answer(key: Sequence[object], tool_names: Sequence[str]) -> str:
    """The final answer after calls that were not run (BFCL's single-turn tools are not executable): it names the
    calls made and claims no result."""
    if not tool_names:
        return no_call_answer(key)
    return pick(_UNEXECUTED, *key, "answer").format(tools=tools_phrase(tool_names))


def no_call_answer(key: Sequence[object]) -> str:
    return pick(_NO_CALL_ANSWER, *key, "answer")


def placeholder_observation(tool_name: str) -> str:
    """An honest stand-in for the result of a call that was not executed."""
    return f"[synthetic placeholder: the call to {tool_name} was not executed; BFCL ships no executable tool for it]"
