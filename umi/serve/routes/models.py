"""What the service is: its health (models, limits, readiness) and the one model id it answers to.

GET  /health                models, limits, readiness (BentoML adds /livez and /readyz)
GET  /v1/models             the one model id this service answers to
GET  /v1/models/{model_id}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from umi.serve.engine import AgentEngine
from umi.serve.routes.common import Serving

__all__ = ["ModelServing", "models_router"]

HEALTH_LIMITS = {
    "max_body_bytes",
    "max_steps",
    "max_new_tokens",
    "max_tools",
    "max_messages",
    "request_timeout_s",
    "tool_timeout_s",
}


class ModelServing(Serving):
    """Serves /health and /v1/models: the role models loaded (or that they are loading) and the limits."""

    def health(self) -> JSONResponse:
        current = self.engine()
        body = {
            "status": "ok" if current else "loading",
            "models": current.models if current else {},
            "limits": self.settings.model_dump(include=HEALTH_LIMITS),
            "toolkits": self.toolkits.names,
        }
        return JSONResponse(body, status_code=200 if current else 503)

    def card(self, current: AgentEngine | None) -> dict[str, Any]:
        return {
            "id": self.settings.model_name,
            "object": "model",
            "created": int(current.loaded_at) if current else 0,
            "owned_by": "umi",
            "umi": {"roles": current.models if current else {}},
        }

    def list(self) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self.card(self.ready())]})

    def get(self, model_id: str) -> JSONResponse:
        current = self.ready()
        self.check_model(model_id)
        return JSONResponse(self.card(current))


def models_router(serving: ModelServing) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        return serving.health()

    @router.get("/v1/models")
    async def list_models() -> JSONResponse:
        return serving.list()

    @router.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> JSONResponse:
        return serving.get(model_id)

    return router
