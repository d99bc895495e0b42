"""The HTTP API: the α-UMi agent endpoints and the OpenAI-compatible chat endpoint, as one FastAPI app.

    POST /agent                 a query + a server-side toolkit (or tool schemas): the whole episode, its trajectory
    POST /agent/stream          the same, each step sent as a server-sent event as it happens
    GET  /agent/toolkits        the server-side toolkits
    POST /v1/chat/completions   one turn (planner, then caller or summarizer) of a conversation the client holds
    GET  /v1/models             the one model id this service answers to
    GET  /health                models, limits, readiness (BentoML adds /livez and /readyz)

The BentoML service (umi.serve.service) mounts this app; tests run it in-process with any engine. Each endpoint
group is a router over the object that serves it (umi.serve.routes: agent, chat, models); `create_app` mounts them,
puts RequestGuard in front and answers every error in one shape.

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

import hmac
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from umi.parsing import JSONProblem, loads_untrusted_json
from umi.serve.engine import AgentEngine
from umi.serve.routes.agent import AgentRequest, AgentServing, agent_router
from umi.serve.routes.chat import GIVE_UP_TEXT, ChatServing, chat_router
from umi.serve.routes.common import ApiError, validation_message
from umi.serve.routes.models import ModelServing, models_router
from umi.serve.settings import ServeSettings
from umi.serve.toolkits import ToolkitRegistry, default_toolkits

log = logging.getLogger(__name__)

__all__ = ["AgentRequest", "ApiError", "create_app", "GIVE_UP_TEXT", "install_error_handlers"]

OPEN_PATHS = ("/health",)  # answered without the API key: orchestrators probe them (BentoML's /livez, /readyz too)


# --- before FastAPI sees a request ------------------------------------------------------------------------------------
def json_body_problem(body: bytes, max_depth: int) -> str | None:
    """What is wrong with a JSON request body (umi.parsing.loads_untrusted_json), or None."""
    try:
        loads_untrusted_json(body, max_depth)
    except JSONProblem as e:
        return f"the request body is not acceptable: {e}"
    return None


class RequestGuard:
    """Before FastAPI sees a request: the API key (when set), the body's size (413, whether or not a Content-Length
    says so up front), and a JSON body's shape (`json_body_problem`, a 400), checked in a worker thread.

    An oversized body is read to its end and discarded (up to DRAIN_FACTOR times the limit) before the 413 goes out:
    most clients (urllib, requests) send the whole body before they read, and a server that answers and closes
    mid-upload leaves them a broken pipe instead of the answer. Beyond that cap the 413 goes out at once. Either way
    the connection is closed after it."""

    DRAIN_FACTOR = 16

    def __init__(self, app: ASGIApp, max_bytes: int, max_json_depth: int = 64, api_key: str | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_depth = max_json_depth
        self.api_key = api_key.encode() if api_key else None

    def _too_large(self, size: str) -> JSONResponse:
        return ApiError(
            413,
            f"the request body is {size}, over this service's limit of {self.max_bytes} bytes",
            code="body_too_large",
        ).response()

    async def _drain(self, receive: Receive, size: int) -> None:
        """Read and discard the rest of the body, up to DRAIN_FACTOR x the limit in all."""
        cap = self.DRAIN_FACTOR * self.max_bytes
        while size <= cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, size: str, scope: Scope, receive: Receive, send: Send) -> None:
        response = self._too_large(size)
        response.headers["Connection"] = "close"  # what is left unread of the body must not be taken for a request
        await response(scope, receive, send)

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
            response = ApiError(
                401,
                "a valid API key is needed: send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
            ).response()
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= self.DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive, 0)
            await self._refuse(f"{int(declared)} bytes", scope, receive, send)
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
                more = message.get("more_body", False)
                if more:
                    await self._drain(receive, size)
                await self._refuse(f"over {self.max_bytes} bytes", scope, receive, send)
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


def install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape, FastAPI's and Starlette's own included; a bug of ours is still a JSON 500."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
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
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error").response()


# --- the app ----------------------------------------------------------------------------------------------------------
def create_app(
    settings: ServeSettings,
    engine: AgentEngine | Callable[[], AgentEngine | None],
    toolkits: ToolkitRegistry | None = None,
) -> FastAPI:
    """The API over `engine` (or a callable giving it, None while the models load)."""
    toolkits = (
        toolkits
        if toolkits is not None
        else default_toolkits(settings.tool_timeout_s, settings.toolkits, settings.sandbox_limits())
    )
    get_engine = engine if callable(engine) and not isinstance(engine, AgentEngine) else (lambda: engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        toolkits.sandbox.warm()  # a spare tool worker, imports done, before the first episode asks for one
        try:
            yield
        finally:
            toolkits.close()  # every tool worker, whatever it is doing

    app = FastAPI(title="umi α-UMi agent", version="1", description=__doc__.split("\n\n")[0], lifespan=lifespan)
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    app.add_middleware(
        RequestGuard, max_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth, api_key=api_key
    )
    app.state.settings = settings
    app.state.toolkits = toolkits
    install_error_handlers(app)
    for router in (
        models_router(ModelServing(settings, get_engine, toolkits)),
        agent_router(AgentServing(settings, get_engine, toolkits)),
        chat_router(ChatServing(settings, get_engine, toolkits)),
    ):
        # the routes themselves, not include_router: FastAPI mounts an included router as one branch without a path,
        # and BentoML reads each route's path from app.routes (the Bento's schema, its `openai_endpoint` label)
        app.router.routes.extend(router.routes)
    app.router.routes.append(_Fallback(app.router.routes))
    return app
