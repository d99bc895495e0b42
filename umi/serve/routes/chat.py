"""The OpenAI-compatible chat endpoint: one turn (planner, then caller or summarizer) of a conversation the client
holds, its tools run by the client.

    POST /v1/chat/completions
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from umi.serve.engine import TurnResult
from umi.serve.openai_compat import (
    ChatCompletionRequest,
    MessageError,
    completion,
    completion_chunks,
    messages_to_steps,
    new_call_id,
    tool_specs,
)
from umi.serve.routes.common import ApiError, Serving, in_thread, sse, tool_registry

__all__ = ["ChatServing", "GIVE_UP_TEXT", "chat_router"]

GIVE_UP_TEXT = "I could not complete this request with the tools available."


class ChatServing(Serving):
    """Serves /v1/chat/completions: checks a request (`prepare`, before any model work), takes the engine's turn and
    answers it as a chat completion (streamed as chunks when asked)."""

    def prepare(self, req: ChatCompletionRequest) -> dict[str, Any]:
        """Everything a chat request is checked for, before any model work (in a worker thread)."""
        settings = self.settings
        current = self.ready()
        self.check_model(req.model)
        if req.n not in (None, 1):
            raise ApiError(400, "n must be 1: this service returns one choice", param="n")
        if len(req.messages) > settings.max_messages:
            raise ApiError(
                400,
                f"{len(req.messages)} messages, over this service's limit of {settings.max_messages}",
                param="messages",
            )
        specs = tool_specs(req.tools)
        if len(specs) > settings.max_tools:
            raise ApiError(400, f"{len(specs)} tools, over this service's limit of {settings.max_tools}", param="tools")
        validator = tool_registry(specs, self.schema_limits)
        choice = req.choice()
        if choice not in ("none", "auto", "required") and choice not in validator:
            raise ApiError(400, f"tool_choice names {choice!r}, which is not in 'tools'", param="tool_choice")
        if choice == "required" and not specs:
            raise ApiError(400, "tool_choice 'required' needs 'tools'", param="tool_choice")
        max_tokens = req.max_completion_tokens or req.max_tokens
        requested = None
        if max_tokens is not None:
            name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            if max_tokens > settings.max_new_tokens:
                raise ApiError(
                    400, f"{name} {max_tokens} exceeds this service's limit of {settings.max_new_tokens}", param=name
                )
            requested = {"caller": max_tokens, "summarizer": max_tokens}
        try:
            steps = messages_to_steps(req.messages)
        except MessageError as e:
            raise ApiError(400, str(e), param=e.param) from None
        if sum(len(s.content) for s in steps if s.role == "user") > settings.max_query_chars * 4:
            raise ApiError(400, "the user messages are too long for this service", param="messages")
        return {
            "engine": current,
            "steps": steps,
            "specs": specs,
            "validator": validator,
            "choice": choice,
            "tokens": requested,
        }

    @staticmethod
    def message(turn: TurnResult) -> dict[str, Any]:
        """The assistant message of a turn: its tool call, its answer, a give-up or what went wrong, as text."""
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if turn.kind == "call":
            assert turn.call is not None
            message["content"] = turn.thought or None
            message["tool_calls"] = [
                {
                    "id": new_call_id(),
                    "type": "function",
                    "function": {
                        "name": turn.call.tool_name,
                        "arguments": json.dumps(turn.call.arguments, ensure_ascii=False),
                    },
                }
            ]
        elif turn.kind == "answer":
            message["content"] = turn.answer or ""
        elif turn.kind == "give_up":
            message["content"] = GIVE_UP_TEXT + (f" {turn.thought}" if turn.thought else "")
        else:
            message["content"] = turn.message
        return message

    async def respond(self, req: ChatCompletionRequest, request: Request):
        plan = await in_thread(lambda: self.prepare(req))
        current = plan["engine"]
        deadline = self.deadline_for(None)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        turn: TurnResult = await in_thread(
            lambda: current.next_turn(
                plan["steps"],
                plan["specs"],
                deadline=deadline,
                tool_choice=plan["choice"],
                validator=plan["validator"],
                max_new_tokens=plan["tokens"],
                temperature=req.temperature or 0.0,
                seed=req.seed or 0,
                record_id=completion_id,
            ),
            request,
            deadline,
        )
        extension = {
            "status": turn.kind,
            "thought": turn.thought,
            "decision": turn.decision,
            "tool_choice_override": turn.overridden,
            "failures": turn.failures,
            "generations": turn.generations,
        }
        full = completion(
            completion_id=completion_id,
            model=self.settings.model_name,
            message=self.message(turn),
            finish_reason=turn.finish,
            usage=turn.usage(),
            extension=extension,
        )
        if not req.stream:
            return JSONResponse(full)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in completion_chunks(full, include_usage):
                yield sse(None, chunk)
            yield sse(None, "[DONE]")

        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def chat_router(serving: ChatServing) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request):
        return await serving.respond(req, request)

    return router
