"""Import raw ToolBench answers (`answer/G*_answer/*.json`) into trajectories.

A ToolBench answer file holds one DFSDT search for one query. `answer_generation.train_messages` is a list of
message lists, one per assistant message of the final path: list k is the context that assistant message k was
generated from, ending with that message. The lists are *almost* prefixes of each other: the "This is not the first
time you try this task" user messages that DFSDT inserts after a backtrack only appear in the lists written right
after the backtrack. `merge_train_messages` rebuilds the whole path from the lists so those messages are kept where
they were seen.

Messages become α-UMi steps (`steps_from_messages`, shared with the α-UMi stage-1 `chains` format):
- system -> dropped (ToolBench's AutoGPT instructions; the tools live in `Trajectory.tools`);
- user -> user (the first one without ToolBench's "\\n...\\nBegin!\\n" wrapping);
- assistant with a function call -> assistant (thought, decision `caller`) + caller (name, arguments);
- assistant calling `Finish` -> assistant (decision `conclusion`) + conclusion (the final answer) for
  return_type give_answer, or assistant (decision `give up`) for give_up_and_restart;
- assistant without a function call -> dropped, as the reference does (ChatGPT sometimes sent the thought and the call
  as two messages). One deliberate fix: when the call that follows has an empty thought, the dropped text becomes
  its thought instead of being lost;
- function -> observation: the `response` of ToolBench's `{"error": ..., "response": ...}` envelope (the reference
  does the same). Deliberate fix: when the response is empty the error text is kept, so "status_code=503" failures do
  not read as empty observations.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from umi.data.importing import MAX_RECORD_CHARS, UnreadableRecord, json_problem, parse_json, validation_problem
from umi.schema import RecordError, Step, ToolSpec, Trajectory

SOURCE = "toolbench"
FINISH = "Finish"
GIVE_ANSWER = "give_answer"
GIVE_UP = "give_up_and_restart"


# --- text hygiene -------------------------------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """Replace lone UTF-16 surrogates (ToolBench observations are cut mid-character) so the text encodes as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def clean(value: Any) -> Any:
    """`clean_text` over every string of a parsed JSON value (keys included)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: clean(v) for k, v in value.items()}
    return value


def query_group(instruction: str) -> str:
    """Split key shared by every copy of one query (a ToolBench answer and its α-UMi conversion land in one split)."""
    return "query:" + hashlib.sha256(instruction.strip().encode("utf-8")).hexdigest()[:16]


def trajectory_of(
    record_id: str, source: str, tools: list[ToolSpec], instruction: str, steps: list[Step], meta: dict[str, Any]
) -> Trajectory:
    """The Trajectory of an imported ToolBench-format record, grouped by its query (umi.data.split), or the
    RecordError that says why the record is not one."""
    try:
        return Trajectory(
            id=record_id,
            source=source,
            group=query_group(instruction),
            tools=tools,
            instruction=instruction,
            steps=steps,
            meta=meta,
        )
    except ValueError as e:
        raise RecordError(record_id, validation_problem(e)) from None


_BEGIN = "Begin!"


def user_text(content: str) -> str:
    """ToolBench wraps the query as "\\n<query>\\nBegin!\\n"; the reference keeps just the query."""
    text = content.strip()
    if text.endswith(_BEGIN):
        text = text[: -len(_BEGIN)].strip()
    return text


_RESPONSE_KEY = re.compile(r'"response":\s*')


def _decode_cut_json_string(body: str) -> str | None:
    """Decode the body of a JSON string literal that was cut off (ToolBench cuts observations at 1024 chars + '...')."""
    ellipsis = body.endswith("...")
    if ellipsis:
        body = body[:-3]
    for cut in range(0, 7):  # a cut may fall inside an escape such as \\u00e9; drop at most one escape's worth
        candidate = body[: len(body) - cut] if cut else body
        try:
            decoded = json.loads('"' + candidate + '"')
        except json.JSONDecodeError:
            continue
        return clean_text(decoded) + ("..." if ellipsis else "")
    return None


def observation_text(content: str) -> str:
    """The observation a tool message carries.

    `{"error": e, "response": r}` (ToolBench's envelope) -> r, or e when r is empty. Envelopes cut off mid-string
    (not valid JSON any more) -> the response part decoded as far as it goes. Anything else -> the content as is.
    """
    if not content:
        return ""
    if content.startswith("{"):
        try:
            parsed = json.loads(content)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and "response" in parsed:
            response = parsed.get("response")
            if not isinstance(response, str):
                response = json.dumps(response, ensure_ascii=False)
            if not response and parsed.get("error"):
                return str(parsed["error"])
            return response
        if parsed is None:
            m = _RESPONSE_KEY.search(content)
            if m is not None:
                rest = content[m.end() :]
                if rest.startswith('"'):
                    decoded = _decode_cut_json_string(rest[1:].removesuffix('"}'))
                    if decoded is not None:
                        return decoded
                return rest  # the reference's fallback: everything after the key
    return content


# --- arguments ------------------------------------------------------------------------------------------------------
def parse_arguments(text: str) -> dict[str, Any] | None:
    """The call's arguments as an object, or None when the text is not a JSON object (the text is kept either way)."""
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _arguments_text(call: dict, where: str) -> str:
    args = call.get("arguments", "")
    if args is None:
        return "{}"
    if isinstance(args, str):
        return args
    if isinstance(args, dict):
        return json.dumps(args, ensure_ascii=False)
    raise ValueError(f"{where}: function_call.arguments must be a JSON string or an object, got {type(args).__name__}")


# --- messages -> steps ----------------------------------------------------------------------------------------------
def _finish_steps(thought: str, arguments: str, where: str) -> list[Step]:
    try:
        finish = json.loads(arguments)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: Finish arguments are not valid JSON ({e.msg})") from None
    if not isinstance(finish, dict):
        raise ValueError(f"{where}: Finish arguments must be a JSON object")
    return_type = finish.get("return_type")
    if return_type == GIVE_ANSWER:
        answer = finish.get("final_answer")
        if not isinstance(answer, str):
            raise ValueError(f"{where}: Finish with give_answer has no final_answer string")
        return [Step(role="assistant", content=thought, decision="conclusion"), Step(role="conclusion", content=answer)]
    if return_type == GIVE_UP:
        return [Step(role="assistant", content=thought, decision="give up")]
    raise ValueError(f"{where}: Finish has unknown return_type {return_type!r}")


def steps_from_messages(messages: list, record_id: str) -> tuple[list[Step], dict[str, int]]:
    """OpenAI-style messages (system / user / assistant+function_call / function) -> steps, plus counts of what was
    dropped. Raises RecordError(record_id, ...) on anything it cannot place."""
    steps: list[Step] = []
    dropped = {"system_messages": 0, "assistant_without_call": 0, "thoughts_recovered": 0}
    pending_thought: str | None = None  # text of an assistant message that came without a call
    seen_user = False
    finished = False
    try:
        for i, msg in enumerate(messages):
            where = f"message {i}"
            if not isinstance(msg, dict):
                raise ValueError(f"{where}: expected an object, got {type(msg).__name__}")
            role = msg.get("role")
            if role is None:
                raise ValueError(f"{where}: missing 'role'")
            if finished and role != "system":
                raise ValueError(f"{where}: {role} message after Finish")
            content = msg.get("content")
            if content is not None and not isinstance(content, str):
                raise ValueError(f"{where}: 'content' must be a string or null")
            content = content or ""
            if role == "system":
                dropped["system_messages"] += 1
                continue
            if role == "user":
                steps.append(Step(role="user", content=content if seen_user else user_text(content)))
                seen_user = True
                pending_thought = None
            elif role == "assistant":
                call = msg.get("function_call")
                if not call:
                    if pending_thought is not None:
                        dropped["assistant_without_call"] += 1
                    pending_thought = content
                    continue
                if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
                    raise ValueError(f"{where}: function_call needs a 'name'")
                thought = content
                if pending_thought is not None:
                    if not thought.strip() and pending_thought.strip():
                        thought = pending_thought
                        dropped["thoughts_recovered"] += 1
                    else:
                        dropped["assistant_without_call"] += 1
                    pending_thought = None
                arguments = _arguments_text(call, where)
                if call["name"] == FINISH:
                    steps.extend(_finish_steps(thought, arguments, where))
                    finished = True
                else:
                    steps.append(Step(role="assistant", content=thought, decision="caller"))
                    steps.append(
                        Step(
                            role="caller",
                            tool_name=call["name"],
                            arguments=parse_arguments(arguments),
                            arguments_text=arguments,
                        )
                    )
            elif role == "function":
                if not steps or steps[-1].role != "caller":
                    raise ValueError(f"{where}: function message without a call before it")
                steps.append(Step(role="observation", content=observation_text(content)))
                pending_thought = None
            else:
                raise ValueError(f"{where}: unknown role {role!r}")
        if pending_thought is not None:
            dropped["assistant_without_call"] += 1
    except ValueError as e:  # pydantic's ValidationError is a ValueError too
        raise RecordError(record_id, validation_problem(e)) from None
    if not steps:
        raise RecordError(record_id, "no user, assistant or function messages")
    if steps[0].role != "user":
        raise RecordError(record_id, f"the first step is {steps[0].role}, expected the user's query")
    return steps, dropped


def merge_train_messages(train_messages: list, record_id: str) -> list[dict]:
    """Rebuild the final path from ToolBench's per-step contexts (see the module doc)."""
    if not isinstance(train_messages, list) or not train_messages:
        raise RecordError(record_id, "train_messages is empty")
    chain: list[dict] = []
    for k, context in enumerate(train_messages):
        if not isinstance(context, list) or not context or not isinstance(context[-1], dict):
            raise RecordError(record_id, f"train_messages[{k}] is not a non-empty list of messages")
        if context[-1].get("role") != "assistant":
            raise RecordError(record_id, f"train_messages[{k}] does not end with an assistant message")
        if k == 0:
            chain.extend(context)
            continue
        previous = [
            j for j in range(len(context) - 1) if isinstance(context[j], dict) and context[j].get("role") == "assistant"
        ]
        if not previous or context[previous[-1]] != train_messages[k - 1][-1]:
            raise RecordError(record_id, f"train_messages[{k}] does not continue train_messages[{k - 1}]")
        chain.extend(context[previous[-1] + 1 :])
    return chain


def tool_spec(function: Any, record_id: str, index: int) -> ToolSpec:
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RecordError(record_id, f"function[{index}] has no name")
    params = function.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise RecordError(record_id, f"function[{index}] ({function['name']}): parameters must be an object")
    description = function.get("description") or ""
    try:
        return ToolSpec(name=function["name"], description=str(description), parameters=params)
    except ValueError as e:
        raise RecordError(record_id, f"function[{index}]: {validation_problem(e)}") from None


def convert_answer(record: Any, record_id: str) -> Trajectory:
    """One parsed answer file -> Trajectory; RecordError(record_id, reason) if it cannot be converted."""
    if not isinstance(record, dict):
        raise RecordError(record_id, "the file is not a JSON object")
    gen = record.get("answer_generation")
    if not isinstance(gen, dict):
        raise RecordError(record_id, "missing 'answer_generation'")
    if "train_messages" not in gen:
        if gen.get("valid_data") is False:
            raise RecordError(
                record_id,
                "valid_data is false and there are no train_messages (the search never finished)",
                excluded=True,
            )
        raise RecordError(record_id, "missing 'answer_generation.train_messages'")
    functions = gen.get("function")
    if not isinstance(functions, list):
        raise RecordError(record_id, "missing 'answer_generation.function' (the tool list)")
    record = clean(record)
    gen = record["answer_generation"]
    tools = [
        tool_spec(f, record_id, i)
        for i, f in enumerate(gen["function"])
        if not (isinstance(f, dict) and f.get("name") == FINISH)
    ]
    chain = merge_train_messages(gen["train_messages"], record_id)
    steps, dropped = steps_from_messages(chain, record_id)
    query = gen.get("query")
    instruction = query.strip() if isinstance(query, str) and query.strip() else steps[0].content
    meta: dict[str, Any] = {"finish_type": gen.get("finish_type")}
    meta.update({k: v for k, v in dropped.items() if v and k != "system_messages"})
    return trajectory_of(record_id, SOURCE, tools, instruction, steps, meta)


# --- files ----------------------------------------------------------------------------------------------------------
def answer_files(path: str | Path) -> list[Path]:
    """The answer files under `path` (a file, or a folder searched recursively), in a stable order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no ToolBench answers at {path}")
    return sorted(p for p in path.rglob("*.json") if p.is_file())


def record_id_for(file: Path) -> str:
    """`toolbench:G1_answer/10_ChatGPT_DFS_woFilter_w2`: the answer's folder and file name, the same whichever
    folder the import starts from and on every machine (ToolBench numbers queries per G*_answer folder)."""
    return f"{SOURCE}:{file.parent.name}/{file.stem}"


def import_toolbench(
    paths: str | Path | Iterable[str | Path], max_chars: int = MAX_RECORD_CHARS
) -> Iterator[Trajectory | RecordError]:
    """Stream trajectories (or RecordErrors) from answer files or folders, one file at a time."""
    roots = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    for root in roots:
        for file in answer_files(root):
            record_id = record_id_for(file)
            try:
                size = file.stat().st_size
                if size > max_chars:  # refused before reading: one hostile file must not take the memory
                    raise UnreadableRecord(f"record too large ({size:,} bytes > {max_chars:,})")
                record = parse_json(file.read_bytes(), max_chars)
            except UnreadableRecord as e:
                yield RecordError(record_id, str(e))
                continue
            try:
                yield convert_answer(record, record_id)
            except RecordError as e:
                yield e
            except RecursionError as e:  # deep, but within what the decoder takes: the converters recurse as well
                yield RecordError(record_id, json_problem(e))
