"""The α-UMi agent endpoints: a whole episode over a server-side toolkit (or the first call for client-side tool
schemas), as one response or as server-sent events, and the list of toolkits.

    POST /agent                 the episode and its trajectory
    POST /agent/stream          the same, each step sent as a server-sent event as it happens
    GET  /agent/toolkits        the server-side toolkits
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from umi.agent.loop import AgentEvent, AgentResult
from umi.inference.deadlines import Deadline
from umi.schema import Step, ToolSpec, Trajectory
from umi.serve.engine import AgentEngine, TurnResult
from umi.serve.openai_compat import new_call_id
from umi.serve.routes.common import ApiError, EngineSource, Serving, in_thread, parse_tools, sse, tool_registry
from umi.serve.settings import ServeSettings
from umi.serve.toolkits import ToolkitError, ToolkitRegistry
from umi.vocabulary import AGENT_ROLES

log = logging.getLogger(__name__)

__all__ = ["AgentRequest", "AgentServing", "agent_router"]

AgentRole = Literal[AGENT_ROLES]  # type: ignore[valid-type]  # a request may set the three role models' caps
TURN_STATUS = {"call": "tool_call_pending", "answer": "answered", "give_up": "gave_up", "failed": "failed"}


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
    max_new_tokens: dict[AgentRole, int] | None = None
    timeout_s: float | None = Field(None, gt=0, description="a time limit below the service's own")


def _event_json(event: AgentEvent) -> dict[str, Any]:
    return {"kind": event.kind, "step": event.step, "text": event.text, "data": event.data}


class AgentServing(Serving):
    """Serves /agent: checks a request (`prepare`, before any model work), runs it (`run`: the engine's episode, or
    one turn for client-side tools) and renders the result."""

    def __init__(self, settings: ServeSettings, engine: EngineSource, toolkits: ToolkitRegistry):
        super().__init__(settings, engine, toolkits)
        self.streams: set[asyncio.Task] = set()  # the loop holds tasks weakly: a reference until each ends

    def prepare(self, req: AgentRequest) -> tuple[AgentEngine, Deadline, dict[str, Any]]:
        settings = self.settings
        current = self.ready()
        if len(req.query) > settings.max_query_chars:
            raise ApiError(
                400,
                f"query is {len(req.query)} characters, over the limit of {settings.max_query_chars}",
                param="query",
            )
        if (req.toolkit is None) == (req.tools is None):
            raise ApiError(
                400,
                "give exactly one of 'toolkit' (server-side tools) or 'tools' (schemas the client runs)",
                param="toolkit",
            )
        if req.toolkit is None and req.toolkit_config:
            raise ApiError(400, "'toolkit_config' needs a 'toolkit'", param="toolkit_config")
        if req.toolkit is not None and req.toolkit not in self.toolkits:
            raise ApiError(
                400,
                f"unknown toolkit {req.toolkit!r} (registered: {', '.join(self.toolkits.names)})",
                param="toolkit",
                code="unknown_toolkit",
            )
        max_steps = req.max_steps or settings.default_steps
        if max_steps > settings.max_steps:
            raise ApiError(
                400, f"max_steps {max_steps} exceeds this service's limit of {settings.max_steps}", param="max_steps"
            )
        self.check_tokens(req.max_new_tokens, "max_new_tokens")
        if req.history:  # the steps must be in an order a trajectory can have (the episode's result is one)
            try:
                Trajectory(
                    id="history",
                    source="request",
                    tools=[],
                    instruction=req.query,
                    steps=[*req.history, Step(role="user", content=req.query)],
                )
            except ValidationError as e:
                problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
                raise ApiError(400, f"history: {problems}", param="history") from None
        plan: dict[str, Any] = {"max_steps": max_steps, "tokens": current.token_limits(req.max_new_tokens)}
        deadline = self.deadline_for(req.timeout_s)
        if req.tools is not None:
            plan["specs"] = parse_tools(req.tools, settings.max_tools)
            plan["validator"] = tool_registry(plan["specs"], self.schema_limits)
        else:  # the episode's tool worker; a config the toolkit refuses is a 400 here, before any model work
            plan["runtime"] = self._runtime(req, deadline)
        return current, deadline, plan

    @staticmethod
    def release(plan: dict[str, Any] | None) -> None:
        if plan is not None and plan.get("runtime") is not None:
            plan["runtime"].close()

    def _runtime(self, req: AgentRequest, deadline: Deadline):
        try:
            return self.toolkits.create(req.toolkit, req.toolkit_config, deadline=deadline)  # type: ignore[arg-type]
        except ToolkitError as e:
            raise ApiError(400, str(e), param="toolkit_config", code="invalid_toolkit_config") from None

    @staticmethod
    def _episode_response(result: AgentResult, current: AgentEngine) -> dict[str, Any]:
        return {
            "id": result.trajectory.id,
            "status": result.status,
            "answer": result.answer,
            "steps": result.steps,
            "pending_tool_call": None,
            "trajectory": result.trajectory.model_dump(mode="json"),
            "models": current.models,
        }

    @staticmethod
    def _turn_response(
        req: AgentRequest, turn: TurnResult, specs: list[ToolSpec], task_id: str, current: AgentEngine
    ) -> dict[str, Any]:
        status = TURN_STATUS[turn.kind]
        steps = [*req.history, Step(role="user", content=req.query), *turn.steps]
        if turn.kind == "answer":
            steps.append(Step(role="conclusion", content=turn.answer or ""))
        meta = {
            "agent": "alpha-umi",
            "status": status,
            "planner_steps": 1,
            "failures": turn.failures,
            "generations": turn.generations,
            "tool_choice_override": turn.overridden,
        }
        if turn.message:
            meta["error"] = turn.message
        trajectory = Trajectory(id=task_id, source="agent", tools=specs, instruction=req.query, steps=steps, meta=meta)
        pending = None
        if turn.call is not None:
            pending = {"id": new_call_id(), "name": turn.call.tool_name, "arguments": turn.call.arguments}
        return {
            "id": task_id,
            "status": status,
            "answer": turn.answer,
            "steps": 1,
            "pending_tool_call": pending,
            "trajectory": trajectory.model_dump(mode="json"),
            "models": current.models,
        }

    def run(
        self,
        req: AgentRequest,
        current: AgentEngine,
        deadline: Deadline,
        plan: dict[str, Any],
        on_event: Callable[[AgentEvent], None] | None = None,
    ) -> dict[str, Any]:
        """The response body of a prepared request (blocking: run it in a worker thread)."""
        task_id = f"agent-{uuid.uuid4().hex[:12]}"
        if req.toolkit is not None:
            try:
                result = current.run_agent(
                    req.query,
                    plan["runtime"],
                    deadline=deadline,
                    max_steps=plan["max_steps"],
                    max_new_tokens=plan["tokens"],
                    history=req.history,
                    task_id=task_id,
                    on_event=on_event,
                )
            finally:
                self.release(plan)
            return self._episode_response(result, current)
        steps = [*req.history, Step(role="user", content=req.query)]
        turn = current.next_turn(
            steps,
            plan["specs"],
            deadline=deadline,
            validator=plan["validator"],
            max_new_tokens=plan["tokens"],
            record_id=task_id,
        )
        if on_event is not None:
            on_event(AgentEvent("planner", 1, turn.thought, {"decision": turn.decision}))
            if turn.call is not None:
                on_event(
                    AgentEvent(
                        "caller", 1, turn.call.render(), {"tool": turn.call.tool_name, "arguments": turn.call.arguments}
                    )
                )
            elif turn.kind == "answer":
                on_event(AgentEvent("answer", 1, turn.answer or ""))
            elif turn.kind == "give_up":
                on_event(AgentEvent("give_up", 1, turn.thought))
        return self._turn_response(req, turn, plan["specs"], task_id, current)

    async def respond(self, req: AgentRequest, request: Request) -> JSONResponse:
        current, deadline, plan = await in_thread(lambda: self.prepare(req))
        try:
            body = await in_thread(lambda: self.run(req, current, deadline, plan), request, deadline)
        finally:
            self.release(plan)
        return await in_thread(lambda: JSONResponse(body))  # rendering a long trajectory is work too

    async def stream(self, req: AgentRequest) -> StreamingResponse:
        current, deadline, plan = await in_thread(lambda: self.prepare(req))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()

        def put(item: tuple[str, Any] | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        async def work() -> None:
            try:
                body = await in_thread(
                    lambda: self.run(req, current, deadline, plan, lambda ev: put(("step", _event_json(ev))))
                )
                put(("result", body))
            except ApiError as e:
                put(("error", {"error": {"message": e.message, "type": e.type, "code": e.code, "status": e.status}}))
            except Exception as e:  # noqa: BLE001 -- reported in the stream; the connection is already 200
                log.exception("agent stream failed")
                put(("error", {"error": {"message": f"internal error: {type(e).__name__}", "type": "server_error"}}))
            finally:
                self.release(plan)
                put(None)

        task = asyncio.create_task(work())
        self.streams.add(task)
        task.add_done_callback(self.streams.discard)

        async def events() -> AsyncIterator[bytes]:
            try:
                while (item := await queue.get()) is not None:
                    yield sse(*item)
            finally:
                # a client that left stops the episode at its next generation (a no-op once it has ended)
                deadline.cancel()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )


def agent_router(serving: AgentServing) -> APIRouter:
    router = APIRouter()

    @router.post("/agent")
    async def agent(req: AgentRequest, request: Request) -> JSONResponse:
        return await serving.respond(req, request)

    @router.post("/agent/stream")
    async def agent_stream(req: AgentRequest) -> StreamingResponse:
        return await serving.stream(req)

    @router.get("/agent/toolkits")
    async def list_toolkits() -> JSONResponse:
        return JSONResponse({"toolkits": serving.toolkits.describe()})

    return router
