"""The HTTP API: the α-UMi agent endpoints and the OpenAI-compatible chat endpoint, as one FastAPI app.

    POST /agent                 a query + a server-side toolkit (or tool schemas): the whole episode, its trajectory
    POST /agent/stream          the same, each step sent as a server-sent event as it happens
    GET  /agent/toolkits        the server-side toolkits
    POST /v1/chat/completions   one turn (planner, then caller or summarizer) of a conversation the client holds
    GET  /v1/models             the one model id this service answers to
    GET  /health                models, limits, readiness (BentoML adds /livez and /readyz)

The BentoML service (umi.serve.service) mounts this app; tests run it in-process with any engine.

Errors are JSON in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, FastAPI's and Starlette's own
included, with a 4xx status saying whose fault it is: 400 for a request that cannot be served as sent (malformed JSON,
JSON nested too deeply, an integer with too many digits, a non-finite number, missing or wrong fields, unknown
toolkit, invalid or unsafe tool schemas, limits exceeded, a conversation in the wrong order), 401 without the API key
(when one is set), 404 for an unknown model or path, 405 for a wrong method, 413 for a body over the size limit, 503
while the models load or every tool worker is busy, 504 past the request's time limit. What the models write is never
a server error: a turn whose output cannot be used comes back as text saying so.

Hostile input: nothing a request sends is worked on in the event loop. The body is parsed and checked (size, nesting,
numbers) in a worker thread before FastAPI sees it; validation, tool-schema checks and the models run in worker
threads; server-side tools run in worker processes (umi.serve.sandbox). Client tool schemas may refer only inside
themselves and carry no regular expressions (umi.tools.registry.check_untrusted_schema). A client that goes away
stops its request at the next generation or tool-call check, streaming or not.

With tool schemas and no server-side implementation, /agent cannot run the tools: it stops at the first call and
returns it as `pending_tool_call` (status `tool_call_pending`), as the chat endpoint returns `tool_calls`. A client
that wants to run tools itself and continue should use the chat endpoint, whose state lives in the messages.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from umi.agent.backend import TooLong
from umi.agent.loop import AgentEvent, AgentResult
from umi.schema import Step, ToolSpec, Trajectory
from umi.serve.backends import Deadline, RequestCancelled, RequestTimeout
from umi.serve.engine import AgentEngine, TurnResult, client_tool_registry
from umi.serve.openai_compat import (
    ChatCompletionRequest,
    FunctionTool,
    MessageError,
    completion,
    completion_chunks,
    messages_to_steps,
    new_call_id,
    tool_specs,
)
from umi.serve.sandbox import SandboxBusy
from umi.serve.settings import ServeSettings
from umi.serve.toolkits import ToolkitError, ToolkitRegistry, default_toolkits
from umi.tools.calls import JSONProblem, loads_untrusted_json
from umi.tools.registry import SchemaLimits, UnsafeSchema, check_untrusted_schema

log = logging.getLogger(__name__)

__all__ = ["AgentRequest", "ApiError", "create_app", "GIVE_UP_TEXT"]

GIVE_UP_TEXT = "I could not complete this request with the tools available."
TURN_STATUS = {"call": "tool_call_pending", "answer": "answered", "give_up": "gave_up", "failed": "failed"}
OPEN_PATHS = ("/health",)  # answered without the API key: orchestrators probe them (BentoML's /livez, /readyz too)
DISCONNECT_POLL_S = 0.25


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# --- request models ---------------------------------------------------------------------------------------------------
class AgentRequest(BaseModel):
    """A query and the tools to answer it with: a server-side `toolkit` (+ `toolkit_config`), or `tools` (OpenAI
    function tools or plain {name, description, parameters} schemas) that the client runs."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    toolkit: str | None = None
    toolkit_config: dict[str, Any] = Field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    history: list[Step] = Field(default_factory=list, description="steps of earlier turns of the same conversation")
    max_steps: int | None = Field(None, ge=1, description="planner turns (default: the service's default_steps)")
    max_new_tokens: dict[Literal["planner", "caller", "summarizer"], int] | None = None
    timeout_s: float | None = Field(None, gt=0, description="a time limit below the service's own")


# --- helpers ----------------------------------------------------------------------------------------------------------
def json_body_problem(body: bytes, max_depth: int) -> str | None:
    """What is wrong with a JSON request body (umi.tools.calls.loads_untrusted_json), or None."""
    try:
        loads_untrusted_json(body, max_depth)
    except JSONProblem as e:
        return f"the request body is not acceptable: {e}"
    return None


class RequestGuard:
    """Before FastAPI sees a request: the API key (when set), the body's size (413, whether or not a Content-Length
    says so up front), and a JSON body's shape (`json_body_problem`, a 400), checked in a worker thread."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_json_depth: int = 64, api_key: str | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_depth = max_json_depth
        self.api_key = api_key.encode() if api_key else None

    def _too_large(self, size: str) -> JSONResponse:
        return ApiError(413, f"the request body is {size}, over this service's limit of {self.max_bytes} bytes",
                        code="body_too_large").response()  # fmt: skip

    def _authorised(self, headers: dict[bytes, bytes], path: str) -> bool:
        if self.api_key is None or path in OPEN_PATHS:
            return True
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if not self._authorised(headers, scope.get("path", "")):
            response = ApiError(401, "a valid API key is needed: send 'Authorization: Bearer <key>'",
                                type="authentication_error", code="invalid_api_key").response()  # fmt: skip
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(f"{int(declared)} bytes")(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(f"over {self.max_bytes} bytes")(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"").lower()
        if body.strip() and (not content_type or b"json" in content_type):
            problem = await run_in_threadpool(json_body_problem, body, self.max_json_depth)
            if problem is not None:
                await ApiError(400, problem, code="invalid_json").response()(scope, receive, send)
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
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


def _sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
    return ((f"event: {event}\n" if event else "") + f"data: {payload}\n\n").encode()


def _event_json(event: AgentEvent) -> dict[str, Any]:
    return {"kind": event.kind, "step": event.step, "text": event.text, "data": event.data}


def _parse_tools(raw: list[dict[str, Any]], limit: int) -> list[ToolSpec]:
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
            message, _ = _validation_message([{**err, "loc": ("tools", i, *err["loc"])} for err in e.errors()])
            raise ApiError(400, message, param=f"tools.{i}") from None
    return specs


def _tool_registry(specs: list[ToolSpec], schema_limits: SchemaLimits):
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


class _Fallback(Route):
    """The last route: every path no other route has is a 404 (or a 405 where another route has the path) in
    OpenAI's shape. Needed because BentoML mounts this app passively (only paths one of its routes matches reach it)
    and answers the rest with a plain-text 404 of its own. BentoML's own pages behind the mount are left to it."""

    BENTOML_PAGES = ("/", "/docs.json")
    BENTOML_PREFIXES = ("/static_content/", "/assets/")

    def __init__(self, routes: list) -> None:
        super().__init__("/{path:path}", self._answer, include_in_schema=False)
        self._routes = routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.BENTOML_PAGES or path.startswith(self.BENTOML_PREFIXES):
            return Match.NONE, {}
        return Match.FULL, {}

    async def _answer(self, request: Request) -> JSONResponse:
        if any(r is not self and r.matches(request.scope)[0] == Match.PARTIAL for r in self._routes):
            raise StarletteHTTPException(405)
        raise StarletteHTTPException(404)


# --- the app ----------------------------------------------------------------------------------------------------------
def create_app(
    settings: ServeSettings,
    engine: AgentEngine | Callable[[], AgentEngine | None],
    toolkits: ToolkitRegistry | None = None,
) -> FastAPI:
    """The API over `engine` (or a callable giving it, None while the models load)."""
    toolkits = toolkits if toolkits is not None else default_toolkits(settings.tool_timeout_s, settings.toolkits,
                                                                      settings.sandbox_limits())  # fmt: skip
    schema_limits = settings.schema_limits()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        toolkits.sandbox.warm()  # a spare tool worker, imports done, before the first episode asks for one
        try:
            yield
        finally:
            toolkits.close()  # every tool worker, whatever it is doing

    app = FastAPI(title="umi α-UMi agent", version="1", description=__doc__.split("\n\n")[0], lifespan=lifespan)
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    app.add_middleware(RequestGuard, max_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth,
                       api_key=api_key)  # fmt: skip
    app.state.settings = settings
    app.state.toolkits = toolkits
    streams: set[asyncio.Task] = set()
    get_engine = engine if callable(engine) and not isinstance(engine, AgentEngine) else (lambda: engine)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(list(exc.errors()))
        return ApiError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.url.path} does not take {request.method}"
        else:
            message = str(exc.detail)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        response = ApiError(exc.status_code, message, type=kind, code=f"http_{exc.status_code}").response()
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # a bug of ours, still answered as JSON
        log.exception("unhandled error", exc_info=exc)
        return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error").response()

    def ready() -> AgentEngine:
        current = get_engine()
        if current is None:
            raise ApiError(503, "the models are still loading", type="service_unavailable", code="not_ready")
        return current

    async def in_thread(fn: Callable[[], Any], request: Request | None = None, deadline: Deadline | None = None) -> Any:
        """Run blocking work off the event loop; turn its known failures into API errors. With `request` and
        `deadline`: a client that goes away cancels the deadline, which stops the work at its next check."""
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
            raise ApiError(400, f"the conversation does not fit the model's context even with its history dropped: "
                                f"{e}", code="context_length_exceeded") from None  # fmt: skip
        except SandboxBusy as e:
            raise ApiError(503, f"{e}; try again shortly", type="service_unavailable", code="tools_busy") from None

    def deadline_for(requested: float | None) -> Deadline:
        limit = settings.request_timeout_s
        if requested is not None and requested > limit:
            raise ApiError(400, f"timeout_s {requested:g} exceeds this service's limit of {limit:g} s",
                           param="timeout_s")  # fmt: skip
        return Deadline(requested or limit)

    def check_tokens(requested: dict[str, int] | None, param: str) -> None:
        for role, value in (requested or {}).items():
            if value < 1 or value > settings.max_new_tokens:
                raise ApiError(400, f"{param}.{role} = {value}: must be between 1 and this service's limit of "
                                    f"{settings.max_new_tokens}", param=f"{param}.{role}")  # fmt: skip

    # --- health -------------------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        current = get_engine()
        limits = settings.model_dump(include={"max_body_bytes", "max_steps", "max_new_tokens", "max_tools",
                                              "max_messages", "request_timeout_s", "tool_timeout_s"})  # fmt: skip
        body = {"status": "ok" if current else "loading", "models": current.models if current else {},
                "limits": limits, "toolkits": toolkits.names}  # fmt: skip
        return JSONResponse(body, status_code=200 if current else 503)

    # --- /agent -------------------------------------------------------------------------------------------------------
    def prepare(req: AgentRequest) -> tuple[AgentEngine, Deadline, dict[str, Any]]:
        current = ready()
        if len(req.query) > settings.max_query_chars:
            raise ApiError(400, f"query is {len(req.query)} characters, over the limit of {settings.max_query_chars}",
                           param="query")  # fmt: skip
        if (req.toolkit is None) == (req.tools is None):
            raise ApiError(400, "give exactly one of 'toolkit' (server-side tools) or 'tools' (schemas the client "
                                "runs)", param="toolkit")  # fmt: skip
        if req.toolkit is None and req.toolkit_config:
            raise ApiError(400, "'toolkit_config' needs a 'toolkit'", param="toolkit_config")
        if req.toolkit is not None and req.toolkit not in toolkits:
            raise ApiError(400, f"unknown toolkit {req.toolkit!r} (registered: {', '.join(toolkits.names)})",
                           param="toolkit", code="unknown_toolkit")  # fmt: skip
        max_steps = req.max_steps or settings.default_steps
        if max_steps > settings.max_steps:
            raise ApiError(400, f"max_steps {max_steps} exceeds this service's limit of {settings.max_steps}",
                           param="max_steps")  # fmt: skip
        check_tokens(req.max_new_tokens, "max_new_tokens")
        if req.history:  # the steps must be in an order a trajectory can have (the episode's result is one)
            try:
                Trajectory(id="history", source="request", tools=[], instruction=req.query,
                           steps=[*req.history, Step(role="user", content=req.query)])  # fmt: skip
            except ValidationError as e:
                problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
                raise ApiError(400, f"history: {problems}", param="history") from None
        plan: dict[str, Any] = {"max_steps": max_steps, "tokens": current.token_limits(req.max_new_tokens)}
        deadline = deadline_for(req.timeout_s)
        if req.tools is not None:
            plan["specs"] = _parse_tools(req.tools, settings.max_tools)
            plan["validator"] = _tool_registry(plan["specs"], schema_limits)
        else:  # the episode's tool worker; a config the toolkit refuses is a 400 here, before any model work
            plan["runtime"] = make_runtime(req, deadline)
        return current, deadline, plan

    def release(plan: dict[str, Any] | None) -> None:
        if plan is not None and plan.get("runtime") is not None:
            plan["runtime"].close()

    def make_runtime(req: AgentRequest, deadline: Deadline):
        try:
            return toolkits.create(req.toolkit, req.toolkit_config, deadline=deadline)  # type: ignore[arg-type]
        except ToolkitError as e:
            raise ApiError(400, str(e), param="toolkit_config", code="invalid_toolkit_config") from None

    def episode_response(result: AgentResult, current: AgentEngine) -> dict[str, Any]:
        return {"id": result.trajectory.id, "status": result.status, "answer": result.answer, "steps": result.steps,
                "pending_tool_call": None, "trajectory": result.trajectory.model_dump(mode="json"),
                "models": current.models}  # fmt: skip

    def turn_response(req: AgentRequest, turn: TurnResult, specs: list[ToolSpec], task_id: str,
                      current: AgentEngine) -> dict[str, Any]:  # fmt: skip
        status = TURN_STATUS[turn.kind]
        steps = [*req.history, Step(role="user", content=req.query), *turn.steps]
        if turn.kind == "answer":
            steps.append(Step(role="conclusion", content=turn.answer or ""))
        meta = {"agent": "alpha-umi", "status": status, "planner_steps": 1, "failures": turn.failures,
                "generations": turn.generations, "tool_choice_override": turn.overridden}  # fmt: skip
        if turn.message:
            meta["error"] = turn.message
        trajectory = Trajectory(id=task_id, source="agent", tools=specs, instruction=req.query, steps=steps, meta=meta)
        pending = None
        if turn.call is not None:
            pending = {"id": new_call_id(), "name": turn.call.tool_name, "arguments": turn.call.arguments}
        return {"id": task_id, "status": status, "answer": turn.answer, "steps": 1, "pending_tool_call": pending,
                "trajectory": trajectory.model_dump(mode="json"), "models": current.models}  # fmt: skip

    def run_request(req: AgentRequest, current: AgentEngine, deadline: Deadline, plan: dict[str, Any],
                    on_event: Callable[[AgentEvent], None] | None = None) -> dict[str, Any]:  # fmt: skip
        task_id = f"agent-{uuid.uuid4().hex[:12]}"
        if req.toolkit is not None:
            try:
                result = current.run_agent(req.query, plan["runtime"], deadline=deadline, max_steps=plan["max_steps"],
                                           max_new_tokens=plan["tokens"], history=req.history, task_id=task_id,
                                           on_event=on_event)  # fmt: skip
            finally:
                release(plan)
            return episode_response(result, current)
        steps = [*req.history, Step(role="user", content=req.query)]
        turn = current.next_turn(steps, plan["specs"], deadline=deadline, validator=plan["validator"],
                                 max_new_tokens=plan["tokens"], record_id=task_id)  # fmt: skip
        if on_event is not None:
            on_event(AgentEvent("planner", 1, turn.thought, {"decision": turn.decision}))
            if turn.call is not None:
                on_event(AgentEvent("caller", 1, turn.call.render(), {"tool": turn.call.tool_name,
                                                                       "arguments": turn.call.arguments}))  # fmt: skip
            elif turn.kind == "answer":
                on_event(AgentEvent("answer", 1, turn.answer or ""))
            elif turn.kind == "give_up":
                on_event(AgentEvent("give_up", 1, turn.thought))
        return turn_response(req, turn, plan["specs"], task_id, current)

    @app.post("/agent")
    async def agent(req: AgentRequest, request: Request) -> JSONResponse:
        current, deadline, plan = await in_thread(lambda: prepare(req))
        try:
            body = await in_thread(lambda: run_request(req, current, deadline, plan), request, deadline)
        finally:
            release(plan)
        return await in_thread(lambda: JSONResponse(body))  # rendering a long trajectory is work too

    @app.post("/agent/stream")
    async def agent_stream(req: AgentRequest) -> StreamingResponse:
        current, deadline, plan = await in_thread(lambda: prepare(req))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()

        def put(item: tuple[str, Any] | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        async def work() -> None:
            try:
                body = await in_thread(lambda: run_request(req, current, deadline, plan,
                                                           lambda ev: put(("step", _event_json(ev)))))  # fmt: skip
                put(("result", body))
            except ApiError as e:
                put(("error", {"error": {"message": e.message, "type": e.type, "code": e.code, "status": e.status}}))
            except Exception as e:  # noqa: BLE001 -- reported in the stream; the connection is already 200
                log.exception("agent stream failed")
                put(("error", {"error": {"message": f"internal error: {type(e).__name__}", "type": "server_error"}}))
            finally:
                release(plan)
                put(None)

        task = asyncio.create_task(work())
        streams.add(task)  # the loop holds tasks weakly: keep a reference until it ends
        task.add_done_callback(streams.discard)

        async def events() -> AsyncIterator[bytes]:
            try:
                while (item := await queue.get()) is not None:
                    yield _sse(*item)
            finally:
                # a client that left stops the episode at its next generation (a no-op once it has ended)
                deadline.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    @app.get("/agent/toolkits")
    async def list_toolkits() -> JSONResponse:
        return JSONResponse({"toolkits": toolkits.describe()})

    # --- OpenAI-compatible --------------------------------------------------------------------------------------------
    def model_card(current: AgentEngine | None) -> dict[str, Any]:
        return {"id": settings.model_name, "object": "model", "created": int(current.loaded_at) if current else 0,
                "owned_by": "umi", "umi": {"roles": current.models if current else {}}}  # fmt: skip

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [model_card(ready())]})

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> JSONResponse:
        current = ready()
        if model_id != settings.model_name:
            raise ApiError(404, f"the model {model_id!r} does not exist (this service serves {settings.model_name!r})",
                           param="model", code="model_not_found")  # fmt: skip
        return JSONResponse(model_card(current))

    def chat_plan(req: ChatCompletionRequest) -> dict[str, Any]:
        """Everything a chat request is checked for, before any model work (in a worker thread)."""
        current = ready()
        if req.model != settings.model_name:
            raise ApiError(404, f"the model {req.model!r} does not exist (this service serves {settings.model_name!r})",
                           param="model", code="model_not_found")  # fmt: skip
        if req.n not in (None, 1):
            raise ApiError(400, "n must be 1: this service returns one choice", param="n")
        if len(req.messages) > settings.max_messages:
            raise ApiError(400, f"{len(req.messages)} messages, over this service's limit of {settings.max_messages}",
                           param="messages")  # fmt: skip
        specs = tool_specs(req.tools)
        if len(specs) > settings.max_tools:
            raise ApiError(400, f"{len(specs)} tools, over this service's limit of {settings.max_tools}", param="tools")
        validator = _tool_registry(specs, schema_limits)
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
                raise ApiError(400, f"{name} {max_tokens} exceeds this service's limit of {settings.max_new_tokens}",
                               param=name)  # fmt: skip
            requested = {"caller": max_tokens, "summarizer": max_tokens}
        try:
            steps = messages_to_steps(req.messages)
        except MessageError as e:
            raise ApiError(400, str(e), param=e.param) from None
        if sum(len(s.content) for s in steps if s.role == "user") > settings.max_query_chars * 4:
            raise ApiError(400, "the user messages are too long for this service", param="messages")
        return {"engine": current, "steps": steps, "specs": specs, "validator": validator, "choice": choice,
                "tokens": requested}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request):
        plan = await in_thread(lambda: chat_plan(req))
        current = plan["engine"]
        deadline = deadline_for(None)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        turn: TurnResult = await in_thread(lambda: current.next_turn(
            plan["steps"], plan["specs"], deadline=deadline, tool_choice=plan["choice"], validator=plan["validator"],
            max_new_tokens=plan["tokens"], temperature=req.temperature or 0.0, seed=req.seed or 0,
            record_id=completion_id), request, deadline)  # fmt: skip
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if turn.kind == "call":
            assert turn.call is not None
            message["content"] = turn.thought or None
            message["tool_calls"] = [{"id": new_call_id(), "type": "function", "function": {
                "name": turn.call.tool_name, "arguments": json.dumps(turn.call.arguments, ensure_ascii=False)}}]
        elif turn.kind == "answer":
            message["content"] = turn.answer or ""
        elif turn.kind == "give_up":
            message["content"] = GIVE_UP_TEXT + (f" {turn.thought}" if turn.thought else "")
        else:
            message["content"] = turn.message
        extension = {"status": turn.kind, "thought": turn.thought, "decision": turn.decision,
                     "tool_choice_override": turn.overridden, "failures": turn.failures,
                     "generations": turn.generations}  # fmt: skip
        full = completion(completion_id=completion_id, model=settings.model_name, message=message,
                          finish_reason=turn.finish, usage=turn.usage(), extension=extension)  # fmt: skip
        if not req.stream:
            return JSONResponse(full)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in completion_chunks(full, include_usage):
                yield _sse(None, chunk)
            yield _sse(None, "[DONE]")

        return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    app.router.routes.append(_Fallback(app.router.routes))
    return app
