"""Import the α-UMi reference's data formats into trajectories.

Both formats are JSON arrays (JSONL, one record a line, is read too) of records with the tools in the reference's
compact form (`{"Name", "function", "input": {"arg": "type, description"}}`) and the `instruction`:

- stage 1: `chains`, ToolBench-style messages (system / user / assistant with function_call / function); converted by
  the same rules as ToolBench answers (umi.data.toolbench.steps_from_messages).
- stage 2: `conversations` with `from` = user / assistant / caller / observation / conclusion. An assistant value
  ends in ` Next: caller.`, ` Next: conclusion.` or ` Next: give up.`; a caller value is
  `Action: <name>\\nAction Input: <arguments>`. Assistant values without a decision (the out-of-domain test set keeps
  ChatGPT's call-less messages) are dropped as the stage-1 -> stage-2 conversion drops them, with the same fix: their
  text becomes the thought of a following decision that has none.

Compact tool inputs are mapped back to JSON-Schema properties ({"quizid": "string, "} ->
{"quizid": {"type": "string", "description": ""}}), so umi.prompts.tool_doc_reference gives back the original object.
Ids: `alpha-umi:<file stem>:<index>:<first 8 hex of sha256 of the record>`, stable across re-imports.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from umi.data.importing import MAX_RECORD_CHARS, UnreadableRecord, iter_jsonl, json_problem, validation_problem
from umi.data.toolbench import clean, parse_arguments, steps_from_messages, trajectory_of
from umi.schema import RecordError, Step, ToolSpec, Trajectory

SOURCE = "alpha-umi"
_DECISION = re.compile(r" Next: (caller|conclusion|give up)\.\Z")
_CALL = re.compile(r"Action: (?P<name>[^\n]*)\nAction Input: (?P<args>.*)\Z", re.DOTALL)


# --- streaming a JSON array -----------------------------------------------------------------------------------------
class TruncatedJSON(ValueError):
    pass


class _ValueScan:
    """Finds where a JSON value ends by counting brackets outside strings, across as many pieces of text as it takes.
    Used to step over an element the decoder refused (too deep, a huge integer, too big) without holding it."""

    def __init__(self) -> None:
        self.depth, self.in_string, self.escaped = 0, False, False

    def end(self, buf: str, pos: int) -> int | None:
        """The index of the separator after the value, or None if `buf` ends first (feed the next piece)."""
        for i in range(pos, len(buf)):
            c = buf[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "[{":
                self.depth += 1
            elif c in "]}":
                if self.depth == 0:
                    return i
                self.depth -= 1
            elif self.depth == 0 and c in ", \t\r\n":
                return i
        return None


def iter_json_records(
    path: str | Path, chunk_size: int = 1 << 20, max_chars: int = MAX_RECORD_CHARS
) -> Iterator[tuple[int, Any]]:
    """Yield (index, record) from a JSON array file without loading the whole array, or from a JSONL file.

    A record that is not JSON we accept (nested too deeply, an integer over Python's digit limit, over `max_chars`)
    comes as an UnreadableRecord in place of the record, and reading goes on. In JSONL every line stands alone, so an
    invalid line is one such record. In an array, invalid JSON raises TruncatedJSON(index) naming the element where
    the text stops being valid: nothing after that point can be trusted, so reading stops there.
    """
    with Path(path).open("rb") as raw:
        head = raw.read(4096)
        raw.seek(0)
        if not head.lstrip().startswith(b"["):
            yield from ((i, record) for i, (_, record) in enumerate(iter_jsonl(raw, max_chars)))
            return
        yield from _iter_array(io.TextIOWrapper(raw, encoding="utf-8"), chunk_size, max_chars)


def _iter_array(f: IO[str], chunk_size: int, max_chars: int) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    buf = f.read(chunk_size)
    pos = len(buf) - len(buf.lstrip()) + 1  # past the "["
    index = 0
    eof = False
    want = chunk_size

    def refill(keep_from: int, size: int) -> None:
        nonlocal buf, pos, eof
        more = f.read(size)
        eof = not more
        buf, pos = buf[keep_from:] + more, 0

    while True:
        # skip separators
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) or eof:
                break
            refill(pos, want)
        if pos >= len(buf):
            raise TruncatedJSON(f"element {index}: the array is not closed (file cut short?)")
        if buf[pos] == "]":
            return
        problem_text: str | None = None
        try:
            record, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as e:
            if eof:
                raise TruncatedJSON(
                    f"element {index}: invalid JSON ({e.msg} at char {e.pos - pos} of the element)"
                ) from None
            if len(buf) - pos <= max_chars:
                refill(pos, want)
                want *= 2  # an element bigger than the buffer: read more, doubling, until it parses
                continue
            problem_text = f"record too large (> {max_chars:,} characters)"
        except (ValueError, RecursionError) as e:  # a huge integer; nesting deeper than the decoder recurses
            problem_text = json_problem(e)
        if problem_text is not None:
            # step over the element without parsing it, holding at most one chunk of it at a time
            scan, start = _ValueScan(), pos
            while (end := scan.end(buf, start)) is None:
                if eof:
                    raise TruncatedJSON(f"element {index}: the array is not closed (file cut short?)")
                refill(len(buf), chunk_size)  # the scanned part is dropped
                start = 0
            yield index, UnreadableRecord(f"element {index}: {problem_text}")
            index += 1
            pos = end
            want = chunk_size
            continue
        want = chunk_size
        if end - pos > max_chars:  # parsed within one buffer, but over the cap all the same
            record = UnreadableRecord(f"element {index}: record too large ({end - pos:,} > {max_chars:,} characters)")
        yield index, record
        index += 1
        pos = end
        if len(buf) - pos < chunk_size // 2 and not eof:
            refill(pos, chunk_size)


# --- tools ----------------------------------------------------------------------------------------------------------
def property_from_compact(text: Any) -> dict[str, Any]:
    """'string, the id' -> {"type": "string", "description": "the id"} (the inverse of prompts._param_line)."""
    if isinstance(text, dict):
        return text
    if not isinstance(text, str):
        raise ValueError(f"a compact input must be 'type, description', got {type(text).__name__}")
    kind, sep, description = text.partition(", ")
    if not sep:  # no description part: keep the whole text as the type
        return {"type": kind, "description": ""}
    return {"type": kind, "description": description}


def tool_from_compact(tool: Any, record_id: str, index: int) -> ToolSpec:
    if not isinstance(tool, dict):
        raise RecordError(record_id, f"tools[{index}] is not an object")
    try:
        if "Name" in tool:
            inputs = tool.get("input") or {}
            if not isinstance(inputs, dict):
                raise ValueError("'input' must be an object")
            properties = {name: property_from_compact(v) for name, v in inputs.items()}
            return ToolSpec(
                name=tool["Name"],
                description=tool.get("function") or "",
                parameters={"type": "object", "properties": properties},
            )
        if "name" in tool:  # OpenAI-style function schema
            return ToolSpec(
                name=tool["name"],
                description=tool.get("description") or "",
                parameters=tool.get("parameters") or {"type": "object", "properties": {}},
            )
    except (ValueError, TypeError) as e:
        raise RecordError(record_id, f"tools[{index}]: {validation_problem(e)}") from None
    raise RecordError(record_id, f"tools[{index}] has neither 'Name' nor 'name'")


# --- stage 2 --------------------------------------------------------------------------------------------------------
def split_decision(value: str) -> tuple[str, str] | None:
    """'<thought>\\n Next: caller.' -> ('<thought>', 'caller'); None when the value carries no decision."""
    m = _DECISION.search(value)
    if m is None:
        return None
    thought = value[: m.start()]
    if thought.endswith("\n"):
        thought = thought[:-1]
    return thought, m.group(1)


def steps_from_conversations(conversations: Any, record_id: str) -> tuple[list[Step], dict[str, int]]:
    if not isinstance(conversations, list) or not conversations:
        raise RecordError(record_id, "'conversations' must be a non-empty list")
    steps: list[Step] = []
    dropped = {"assistant_without_decision": 0, "thoughts_recovered": 0}
    pending: str | None = None
    try:
        for i, turn in enumerate(conversations):
            where = f"conversations[{i}]"
            if not isinstance(turn, dict):
                raise ValueError(f"{where}: expected an object")
            if "from" not in turn or "value" not in turn:
                raise ValueError(f"{where}: needs 'from' and 'value'")
            role, value = turn["from"], turn["value"]
            if not isinstance(value, str):
                raise ValueError(f"{where}: 'value' must be a string")
            if role == "assistant":
                parsed = split_decision(value)
                if parsed is None:
                    if pending is not None:
                        dropped["assistant_without_decision"] += 1
                    pending = value
                    continue
                thought, decision = parsed
                if pending is not None:
                    if not thought.strip() and pending.strip():
                        thought = pending.rstrip("\n")
                        dropped["thoughts_recovered"] += 1
                    else:
                        dropped["assistant_without_decision"] += 1
                    pending = None
                steps.append(Step(role="assistant", content=thought, decision=decision))
                continue
            if pending is not None:
                dropped["assistant_without_decision"] += 1
                pending = None
            if role == "user":
                steps.append(Step(role="user", content=value))
            elif role == "caller":
                m = _CALL.match(value)
                if m is None:
                    raise ValueError(f"{where}: a caller value must be 'Action: <name>\\nAction Input: <arguments>'")
                args = m.group("args")
                steps.append(
                    Step(
                        role="caller",
                        tool_name=m.group("name").strip(),
                        arguments=parse_arguments(args),
                        arguments_text=args,
                    )
                )
            elif role == "observation":
                steps.append(Step(role="observation", content=value))
            elif role == "conclusion":
                steps.append(Step(role="conclusion", content=value))
            else:
                raise ValueError(f"{where}: unknown role {role!r}")
        if pending is not None:
            dropped["assistant_without_decision"] += 1
    except ValueError as e:
        raise RecordError(record_id, validation_problem(e)) from None
    if not steps or steps[0].role != "user":
        raise RecordError(record_id, "the conversation must start with the user's query")
    return steps, dropped


# --- records --------------------------------------------------------------------------------------------------------
def record_id_for(source_name: str, index: int, record: Any) -> str:
    digest = hashlib.sha256(json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass"))
    return f"{SOURCE}:{source_name}:{index}:{digest.hexdigest()[:8]}"


def convert_record(record: Any, record_id: str) -> Trajectory:
    """One stage-1 or stage-2 record -> Trajectory; RecordError(record_id, reason) if it cannot be converted."""
    if not isinstance(record, dict):
        raise RecordError(record_id, "a record must be a JSON object")
    record = clean(record)
    if "chains" in record:
        stage = 1
        if not isinstance(record["chains"], list):
            raise RecordError(record_id, "'chains' must be a list of messages")
        steps, dropped = steps_from_messages(record["chains"], record_id)
    elif "conversations" in record:
        stage = 2
        steps, dropped = steps_from_conversations(record["conversations"], record_id)
    else:
        raise RecordError(record_id, "the record has neither 'chains' (stage 1) nor 'conversations' (stage 2)")
    tools_raw = record.get("tools")
    if not isinstance(tools_raw, list):
        raise RecordError(record_id, "missing 'tools' (a list)")
    tools = [tool_from_compact(t, record_id, i) for i, t in enumerate(tools_raw)]
    instruction = record.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        instruction = steps[0].content
    meta: dict[str, Any] = {"stage": stage}
    meta.update({k: v for k, v in dropped.items() if v and k != "system_messages"})
    return trajectory_of(record_id, SOURCE, tools, instruction, steps, meta)


def import_alpha_umi(path: str | Path, max_chars: int = MAX_RECORD_CHARS) -> Iterator[Trajectory | RecordError]:
    """Stream trajectories (or RecordErrors) from a stage-1 or stage-2 file (JSON array or JSONL): one item per
    record read. A record that could not be parsed has the id `alpha-umi:<file stem>:<index>` (no digest)."""
    path = Path(path)
    name = path.stem
    index = -1
    try:
        for index, record in iter_json_records(path, max_chars=max_chars):
            if isinstance(record, UnreadableRecord):
                yield RecordError(f"{SOURCE}:{name}:{index}", str(record))
                continue
            try:
                record_id = record_id_for(name, index, record)
            except (ValueError, RecursionError) as e:  # parsed, yet too deep to serialize again
                yield RecordError(f"{SOURCE}:{name}:{index}", json_problem(e))
                continue
            try:
                yield convert_record(record, record_id)
            except RecordError as e:
                yield e
            except RecursionError:  # deep, but within what the decoder takes: the converters recurse as well
                yield RecordError(record_id, json_problem(RecursionError()))
    except TruncatedJSON as e:
        yield RecordError(f"{SOURCE}:{name}:{index + 1}", str(e))
    except UnicodeDecodeError as e:
        yield RecordError(f"{SOURCE}:{name}:{index + 1}", f"not UTF-8 text: {e}")
