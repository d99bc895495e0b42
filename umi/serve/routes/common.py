"""What every endpoint group shares: the OpenAI-shaped error, the serving objects' base (settings, the engine while it
loads, the toolkits, the limit checks) and running blocking work off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from umi.inference.deadlines import Deadline, RequestCancelled, RequestTimeout
from umi.inference.tokens import TooLong
from umi.schema import ToolSpec
from umi.serve.engine import AgentEngine, client_tool_registry
from umi.serve.openai_compat import FunctionTool, tool_specs
from umi.serve.sandbox import SandboxBusy
from umi.serve.settings import ServeSettings
from umi.serve.toolkits import ToolkitRegistry
from umi.tools.registry import SchemaLimits, UnsafeSchema, check_untrusted_schema

log = logging.getLogger(__name__)

__all__ = [
    "ApiError",
    "EngineSource",
    "Serving",
    "in_thread",
    "parse_tools",
    "sse",
    "tool_registry",
    "validation_message",
]

DISCONNECT_POLL_S = 0.25
EngineSource = Callable[[], AgentEngine | None]  # the engine, None while the models load


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """(message, param) of pydantic's validation errors: what is wrong, where, in a sentence a client can act on."""
    problems = []
    param = None
    for err in errors[:8]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}", None
        if err.get("type") == "missing" and not loc:
            return "the request body is missing (a JSON object is expected)", None
        where = ".".join(loc)
        param = param or where or None
        problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    more = f" (and {len(errors) - 8} more)" if len(errors) > 8 else ""
    return "invalid request: " + "; ".join(problems) + more, param


def sse(event: str | None, data: Any) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
    return ((f"event: {event}\n" if event else "") + f"data: {payload}\n\n").encode()


def parse_tools(raw: list[dict[str, Any]], limit: int) -> list[ToolSpec]:
    """A request's tools (OpenAI function tools or plain {name, description, parameters}); a 400 when invalid."""
    if len(raw) > limit:
        raise ApiError(400, f"{len(raw)} tools, over this service's limit of {limit}", param="tools")
    specs = []
    for i, tool in enumerate(raw):
        try:
            if tool.get("type") == "function" or "function" in tool:
                specs.extend(tool_specs([FunctionTool.model_validate(tool)]))
            else:
                specs.append(ToolSpec.model_validate(tool))
        except ValidationError as e:
            message, _ = validation_message([{**err, "loc": ("tools", i, *err["loc"])} for err in e.errors()])
            raise ApiError(400, message, param=f"tools.{i}") from None
    return specs


def tool_registry(specs: list[ToolSpec], schema_limits: SchemaLimits):
    """The validator of a request's tool schemas; a 400 saying what is wrong if one is invalid or unsafe."""
    for i, spec in enumerate(specs):
        try:
            check_untrusted_schema(spec.parameters, schema_limits, f"tool {spec.name!r}: parameters")
        except UnsafeSchema as e:
            raise ApiError(400, f"invalid tools: {e}", param=f"tools.{i}", code="unsafe_tool_schema") from None
    try:
        return client_tool_registry(specs)
    except ValueError as e:
        raise ApiError(400, f"invalid tools: {e}", param="tools", code="invalid_tool_schema") from None


async def in_thread(fn: Callable[[], Any], request: Request | None = None, deadline: Deadline | None = None) -> Any:
    """Run blocking work off the event loop; turn its known failures into API errors. With `request` and `deadline`:
    a client that goes away cancels the deadline, which stops the work at its next check."""
    work = asyncio.ensure_future(run_in_threadpool(fn))
    try:
        if request is not None and deadline is not None:
            while not work.done():
                await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
                if not work.done() and not deadline.cancelled and await request.is_disconnected():
                    log.info("client went away: stopping its request")
                    deadline.cancel()
        return await work
    except RequestTimeout as e:
        raise ApiError(504, str(e), type="timeout", code="request_timeout") from None
    except RequestCancelled as e:
        raise ApiError(499, str(e), type="cancelled", code="client_closed_request") from None
    except TooLong as e:
        raise ApiError(
            400,
            f"the conversation does not fit the model's context even with its history dropped: {e}",
            code="context_length_exceeded",
        ) from None
    except SandboxBusy as e:
        raise ApiError(503, f"{e}; try again shortly", type="service_unavailable", code="tools_busy") from None


class Serving:
    """The base of the objects that serve an endpoint group: the service's settings, its engine (None while the
    models load) and its toolkits, and the checks every group makes."""

    def __init__(self, settings: ServeSettings, engine: EngineSource, toolkits: ToolkitRegistry):
        self.settings = settings
        self.engine = engine
        self.toolkits = toolkits
        self.schema_limits = settings.schema_limits()

    def ready(self) -> AgentEngine:
        """The engine; a 503 while the models load."""
        current = self.engine()
        if current is None:
            raise ApiError(503, "the models are still loading", type="service_unavailable", code="not_ready")
        return current

    def deadline_for(self, requested: float | None) -> Deadline:
        limit = self.settings.request_timeout_s
        if requested is not None and requested > limit:
            raise ApiError(
                400, f"timeout_s {requested:g} exceeds this service's limit of {limit:g} s", param="timeout_s"
            )
        return Deadline(requested or limit)

    def check_tokens(self, requested: dict[str, int] | None, param: str) -> None:
        for role, value in (requested or {}).items():
            if value < 1 or value > self.settings.max_new_tokens:
                raise ApiError(
                    400,
                    f"{param}.{role} = {value}: must be between 1 and this service's limit of "
                    f"{self.settings.max_new_tokens}",
                    param=f"{param}.{role}",
                )

    def check_model(self, model_id: str) -> None:
        """A 404 unless `model_id` is the one model this service serves."""
        name = self.settings.model_name
        if model_id != name:
            raise ApiError(
                404,
                f"the model {model_id!r} does not exist (this service serves {name!r})",
                param="model",
                code="model_not_found",
            )
