"""The OpenAI chat-completions wire format, and the mapping between its messages and α-UMi steps.

Messages -> steps (`messages_to_steps`), the state of the conversation rebuilt from the request alone:

    system / developer        its text opens the first user turn (α-UMi's prompts have no system slot)
    user                      user step
    assistant + tool_calls    per call: a planner step deciding `caller` (the message's content is the planner's
                              thought, as this service returns it; empty for the later calls of a parallel batch),
                              the caller step, and the observation from the `tool` message answering the call's id
    assistant, text only      a planner step deciding `conclusion` and the conclusion (an earlier answer)
    tool                      consumed by the assistant message whose call it answers

The conversation must end with a user message or with the tool results of the last assistant message: that is when
it is the planner's turn. Every violation is a `MessageError` naming the message (index) and what is wrong.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from umi.parsing import JSONProblem, loads_untrusted_json
from umi.schema import Step, ToolSpec

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "FunctionTool",
    "MessageError",
    "messages_to_steps",
    "tool_specs",
    "completion",
    "completion_chunks",
    "new_call_id",
]

TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_ARGUMENTS_DEPTH = 32
INT64 = 2**63


def _tool_name(value: str) -> str:
    if not TOOL_NAME.match(value):
        raise ValueError(f"tool name {value!r} must be 1-64 letters, digits, '_', '-' or '.'")
    return value


class MessageError(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class _Loose(BaseModel):
    # OpenAI clients send fields this service has no use for (name, refusal, annotations, ...): ignored, not errors
    model_config = ConfigDict(extra="ignore")


class TextPart(_Loose):
    type: Literal["text"]
    text: str


Content = Union[str, list[TextPart], None]


class FunctionDef(_Loose):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _tool_name(value)


class FunctionTool(_Loose):
    type: Literal["function"]
    function: FunctionDef


class CalledFunction(_Loose):
    name: str
    arguments: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _tool_name(value)


class ToolCallOut(_Loose):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


class SystemMessage(_Loose):
    role: Literal["system", "developer"]
    content: Content


class UserMessage(_Loose):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Loose):
    role: Literal["assistant"]
    content: Content = None
    tool_calls: list[ToolCallOut] | None = None


class ToolMessage(_Loose):
    role: Literal["tool"]
    content: Content
    tool_call_id: str = Field(min_length=1)


ChatMessage = Annotated[Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage], Field(discriminator="role")]


class NamedFunction(_Loose):
    name: str


class NamedToolChoice(_Loose):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Loose):
    include_usage: bool = False


class ChatCompletionRequest(_Loose):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    seed: int | None = Field(None, ge=-INT64, lt=INT64, description="a 64-bit integer, as OpenAI's")
    n: int | None = Field(None, ge=1)

    def choice(self) -> str:
        """tool_choice as a string: none / auto / required / the named tool."""
        if self.tool_choice is None:
            return "auto"
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice


def _text(content: Content, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def tool_specs(tools: list[FunctionTool] | None) -> list[ToolSpec]:
    return [
        ToolSpec(name=t.function.name, description=t.function.description, parameters=t.function.parameters)
        for t in tools or []
    ]


def _arguments(call: ToolCallOut, index: int) -> dict[str, Any]:
    try:
        text = call.function.arguments
        value = loads_untrusted_json(text, MAX_ARGUMENTS_DEPTH) if text.strip() else {}
    except JSONProblem as e:
        raise MessageError(
            f"messages[{index}]: the arguments of tool call {call.id!r} are not acceptable: {e}",
            f"messages.{index}.tool_calls",
        ) from None
    if not isinstance(value, dict):
        raise MessageError(
            f"messages[{index}]: the arguments of tool call {call.id!r} must be a JSON object",
            f"messages.{index}.tool_calls",
        )
    return value


def messages_to_steps(messages: list[Any]) -> list[Step]:
    """The α-UMi steps of a conversation (see the module doc); MessageError if it cannot be one."""
    try:
        return _messages_to_steps(messages)
    except (
        ValidationError
    ) as e:  # a step the messages describe cannot be (the model checks what the wire format lets by)
        problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors()[:4])
        raise MessageError(f"messages: {problems}", "messages") from None


def _messages_to_steps(messages: list[Any]) -> list[Step]:
    steps: list[Step] = []
    system: list[str] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        if isinstance(m, SystemMessage):
            system.append(_text(m.content, f"messages[{i}]"))
        elif isinstance(m, UserMessage):
            text = _text(m.content, f"messages[{i}]")
            if system and not any(s.role == "user" for s in steps):
                text = "\n".join([*system, text])
            steps.append(Step(role="user", content=text))
        elif isinstance(m, AssistantMessage):
            if not steps:
                raise MessageError(f"messages[{i}]: an assistant message before any user message", f"messages.{i}")
            thought = _text(m.content, f"messages[{i}]")
            if m.tool_calls:
                results: dict[str, str] = {}
                j = i + 1
                while j < len(messages) and isinstance(messages[j], ToolMessage):
                    tm = messages[j]
                    if tm.tool_call_id in results:
                        raise MessageError(
                            f"messages[{j}]: a second result for tool call {tm.tool_call_id!r}",
                            f"messages.{j}.tool_call_id",
                        )
                    results[tm.tool_call_id] = _text(tm.content, f"messages[{j}]")
                    j += 1
                ids = [c.id for c in m.tool_calls]
                for extra in results.keys() - set(ids):
                    raise MessageError(
                        f"messages[{i + 1}..{j - 1}]: a tool message answers {extra!r}, which the "
                        f"assistant message at messages[{i}] did not call",
                        "messages",
                    )
                for n, call in enumerate(m.tool_calls):
                    if call.id not in results:
                        raise MessageError(
                            f"messages[{i}]: tool call {call.id!r} ({call.function.name}) has no tool "
                            "message with its result after it",
                            f"messages.{i}.tool_calls",
                        )
                    steps.append(Step(role="assistant", content=thought if n == 0 else "", decision="caller"))
                    steps.append(Step(role="caller", tool_name=call.function.name, arguments=_arguments(call, i)))
                    steps.append(Step(role="observation", content=results[call.id]))
                i = j
                continue
            steps.append(Step(role="assistant", content="", decision="conclusion"))
            steps.append(Step(role="conclusion", content=thought))
        elif isinstance(m, ToolMessage):
            raise MessageError(
                f"messages[{i}]: a tool message must follow the assistant message that called it", f"messages.{i}"
            )
        i += 1
    if not steps:
        raise MessageError("messages: there is no user message", "messages")
    if steps[-1].role not in ("user", "observation"):
        raise MessageError(
            "messages: the last message must be a user message or the results of the last tool calls "
            "(it is the assistant's turn then)",
            "messages",
        )
    return steps


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def completion(
    *,
    completion_id: str,
    model: str,
    message: dict[str, Any],
    finish_reason: str,
    usage: dict[str, int],
    extension: dict[str, Any],
) -> dict[str, Any]:
    """A `chat.completion` object; `umi` carries what OpenAI's format has no place for (thought, decision, timings)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
        "umi": extension,
    }


def completion_chunks(full: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The same completion as `chat.completion.chunk` objects: the role, then the content or the tool calls (whole:
    the roles are not streamed token by token), then the finish reason (and the usage, if asked for)."""
    choice = full["choices"][0]
    message = choice["message"]
    base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"], "model": full["model"]}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}

    chunks = [chunk({"role": "assistant", "content": ""})]
    if message.get("content"):
        chunks.append(chunk({"content": message["content"]}))
    for n, call in enumerate(message.get("tool_calls") or []):
        chunks.append(chunk({"tool_calls": [{"index": n, **call}]}))
    chunks.append(chunk({}, choice["finish_reason"], umi=full["umi"]))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": full["usage"]})
    return chunks
