"""The HTTP layer per endpoint group (umi.serve.routes): each router serves its group over its own serving object,
on an app of its own too; create_app mounts exactly the three groups."""

from __future__ import annotations

from fastapi import FastAPI
from serve_helpers import OPENAI_WEATHER, RuleBackend, make_settings, make_toolkits, rule_app
from starlette.testclient import TestClient

from umi.serve.app import install_error_handlers
from umi.serve.engine import AgentEngine
from umi.serve.routes.agent import AgentServing, agent_router
from umi.serve.routes.chat import ChatServing, chat_router
from umi.serve.routes.models import ModelServing, models_router


def test_one_group_serves_alone_and_the_others_are_openai_shaped_404s():
    settings = make_settings()
    backend = RuleBackend()
    engine = AgentEngine({r: backend for r in ("planner", "caller", "summarizer")}, settings)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(chat_router(ChatServing(settings, lambda: engine, make_toolkits(settings))))
    with TestClient(app) as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "umi-agent",
                "tools": [OPENAI_WEATHER],
                "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
        missing = c.get("/health")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "http_404"
        assert c.post("/v1/chat/completions", json={}).json()["error"]["type"] == "invalid_request_error"
    assert backend.roles() == ["planner", "caller"]


def test_a_serving_object_answers_while_the_models_load():
    settings = make_settings()
    loading = ModelServing(settings, lambda: None, make_toolkits(settings))
    response = loading.health()
    assert response.status_code == 503 and b'"loading"' in response.body


def test_create_app_mounts_the_three_groups():
    settings = make_settings()
    toolkits = make_toolkits(settings)
    groups = [
        router(serving(settings, lambda: None, toolkits))
        for router, serving in ((models_router, ModelServing), (agent_router, AgentServing), (chat_router, ChatServing))
    ]
    expected = {(route.path, method.lower()) for g in groups for route in g.routes for method in route.methods}
    app, _ = rule_app()
    mounted = {(path, method) for path, methods in app.openapi()["paths"].items() for method in methods}
    assert mounted == expected
    # BentoML finds the mounted paths (its schema, the Bento's openai_endpoint label) as route.path on app.routes
    paths = {getattr(route, "path", None) for route in app.routes}
    assert {path for path, _ in expected} <= paths and "/v1/chat/completions" in paths
    assert ("/agent", "post") in expected and ("/v1/models/{model_id}", "get") in expected and len(expected) == 7
