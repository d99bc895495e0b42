"""The API under hostile input, in-process: every bad request a 4xx in OpenAI's error shape with a message saying what
is wrong, unsafe tool schemas refused, hostile model output an invalid call, hostile tools stopped, the API key."""

from __future__ import annotations

import json
import threading
import time

import pytest
from serve_helpers import OPENAI_WEATHER, RuleBackend, make_settings, make_toolkits, weather_rules
from serve_tools import hostile_toolkit
from starlette.testclient import TestClient

from umi.serve.app import create_app
from umi.serve.engine import AgentEngine

ASK = [{"role": "user", "content": "What is the weather in Rome?"}]
DEEP: dict = {}
for _ in range(20):
    DEEP = {"items": DEEP}


def hostile_app(rule=weather_rules, **overrides):
    settings = make_settings(**{"max_body_bytes": 1_000_000, **overrides})
    backend = RuleBackend(rule)
    engine = AgentEngine({"planner": backend, "caller": backend, "summarizer": backend}, settings)
    toolkits = make_toolkits(settings)
    toolkits.register("hostile", hostile_toolkit)
    return create_app(settings, engine, toolkits), backend


@pytest.fixture(scope="module")
def client():
    app, _ = hostile_app()
    with TestClient(app) as c:
        yield c


def openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def chat(client, **extra):
    return client.post("/v1/chat/completions", json={"model": "umi-agent", "messages": ASK, **extra})


def tool(parameters, name="t"):
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


# --- the shape of every error --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "send, status, message",
    [
        (lambda c: c.get("/no/such/path"), 404, "no such endpoint: GET /no/such/path"),
        (lambda c: c.get("/agent"), 405, "/agent does not take GET"),
        (
            lambda c: c.post("/agent", content=b"[" * 200_000, headers={"content-type": "application/json"}),
            400,
            "nests deeper than 64 levels",
        ),
        (
            lambda c: c.post("/agent", content=b'{"query": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
            400,
            "nests deeper than 64 levels",
        ),
        (
            lambda c: c.post(
                "/v1/chat/completions",
                content=b'{"model": "umi-agent", "max_tokens": ' + b"7" * 5000 + b', "messages": []}',
                headers={"content-type": "application/json"},
            ),
            400,
            "an integer of 5000 digits (at most 300 are accepted)",
        ),
        (
            lambda c: c.post(
                "/v1/chat/completions",
                content=b'{"model": "umi-agent", "temperature": 1e999}',
                headers={"content-type": "application/json"},
            ),
            400,
            "the number 1e999 is out of range",
        ),
        (
            lambda c: c.post(
                "/v1/chat/completions",
                content=b'{"model": "umi-agent", "temperature": NaN}',
                headers={"content-type": "application/json"},
            ),
            400,
            "NaN is not a JSON number",
        ),
        (
            lambda c: c.post("/agent", content=b"{not json", headers={"content-type": "application/json"}),
            400,
            "not valid JSON",
        ),
        (lambda c: c.post("/agent", json={"query": 3}), 400, "query: Input should be a valid string"),
        (lambda c: chat(c, seed=2**70), 400, "seed: Input should be less than 9223372036854775808"),
        (
            lambda c: chat(
                c,
                messages=[
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "", "arguments": "{}"}}],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "x"},
                ],
            ),
            400,
            "tool name '' must be 1-64",
        ),
        (
            lambda c: chat(
                c,
                messages=[
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": "[" * 100 + "]" * 100},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "x"},
                ],
            ),
            400,
            "nests deeper than 32 levels",
        ),
        (
            lambda c: chat(
                c,
                messages=[
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1e999}'}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "x"},
                ],
            ),
            400,
            "out of range",
        ),
        (
            lambda c: c.post(
                "/agent",
                json={
                    "query": "x",
                    "toolkit": "weather",
                    "history": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "", "decision": "caller"},
                        {"role": "caller", "tool_name": "", "arguments": {}},
                    ],
                },
            ),
            400,
            "history",
        ),
    ],
    ids=[
        "404",
        "405",
        "200k-brackets",
        "100k-deep",
        "5000-digits",
        "1e999",
        "nan",
        "bad-json",
        "wrong-type",
        "seed-2**70",
        "empty-tool-name",
        "deep-arguments",
        "inf-arguments",
        "empty-tool-name-in-agent-history",
    ],
)
def test_every_bad_request_is_a_4xx_in_the_openai_shape_saying_what_is_wrong(client, send, status, message):
    error = openai_error(send(client), status)
    assert message in error["message"], error


# --- unsafe tool schemas ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"type": "object", "properties": {"a": {"$ref": "file:///etc/passwd"}}}, "only references inside the schema"),
        ({"$ref": "http://127.0.0.1:9/schema.json"}, "only references inside the schema"),
        ({"$defs": {"x": {"$dynamicRef": "https://example.com/x"}}}, "only references inside the schema"),
        ({"properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}}, "regular expressions ('pattern')"),
        ({"patternProperties": {"^(a+)+$": {}}}, "regular expressions ('patternProperties')"),
        ({"properties": {"a": {"type": "string", "format": "regex"}}}, "'format: regex'"),
        ({"properties": {f"p{i}": {"type": "string", "description": "x" * 200} for i in range(100)}}, "bytes of JSON"),
        ({"properties": {"a": DEEP}}, "nested over 16 levels"),
        ({"enum": [0] * 2500}, "over 2000 values"),
    ],
    ids=[
        "file-ref",
        "http-ref",
        "dynamic-ref",
        "pattern",
        "pattern-properties",
        "format-regex",
        "size",
        "depth",
        "nodes",
    ],
)
def test_unsafe_tool_schemas_are_a_400_on_both_endpoints(client, parameters, message):
    error = openai_error(chat(client, tools=[tool(parameters)]), 400)
    assert message in error["message"] and error["code"] == "unsafe_tool_schema", error
    error = openai_error(client.post("/agent", json={"query": "x", "tools": [tool(parameters)]}), 400)
    assert message in error["message"], error


def test_what_looks_like_a_keyword_but_is_a_property_name_is_fine(client):
    names = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string"},
            "$ref": {"type": "string"},
            "patternProperties": {"type": "object"},
        },
        "$defs": {"s": {"type": "string"}},
        "required": ["pattern"],
    }
    local = {"type": "object", "properties": {"city": {"$ref": "#/$defs/s"}}, "$defs": {"s": {"type": "string"}}}
    for parameters in (names, local):
        r = chat(client, tools=[{"type": "function", "function": {"name": "get_weather", "parameters": parameters}}])
        assert r.status_code == 200, r.text


# --- hostile model output ------------------------------------------------------------------------------------------
def test_non_finite_numbers_in_model_output_are_an_invalid_call_not_a_500():
    def infinite(role, prompt, request):
        if role == "caller":
            return 'Action: get_weather\nAction Input: {"city": 1e999}'
        return weather_rules(role, prompt, request)

    app, _ = hostile_app(infinite)
    with TestClient(app) as c:
        r = c.post("/agent", json={"query": "What is the weather in Rome?", "toolkit": "weather", "max_steps": 2})
        assert r.status_code == 200, r.text
        steps = r.json()["trajectory"]["steps"]
        assert [s["role"] for s in steps[:4]] == ["user", "assistant", "caller", "observation"]
        assert "out of range" in steps[3]["content"], steps[3]
        r = chat(c, tools=[OPENAI_WEATHER])
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["umi"]["status"] == "failed" and "out of range" in body["choices"][0]["message"]["content"]


def test_a_schema_that_cannot_be_checked_makes_an_invalid_call_not_a_500(client):
    broken = {"type": "object", "properties": {"city": {"$ref": "#/$defs/missing"}}}
    r = chat(client, tools=[{"type": "function", "function": {"name": "get_weather", "parameters": broken}}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["umi"]["status"] == "failed"
    assert "could not be checked against the schema" in body["choices"][0]["message"]["content"]


# --- hostile tools -------------------------------------------------------------------------------------------------
def caller_writes(call: str):
    def rule(role, prompt, request):
        if role == "caller":
            return call
        if role == "planner" and "observation: " in prompt.rsplit("user: ", 1)[-1]:
            return "Done.\n Next: conclusion."
        return "I should call it.\n Next: caller." if role == "planner" else "done"

    return rule


def test_a_tool_that_computes_for_ever_is_stopped_and_health_answers_meanwhile():
    app, _ = hostile_app(caller_writes('Action: spin\nAction Input: {"seconds": 3600}'), tool_timeout_s=1.5)
    with TestClient(app) as c:
        app.state.toolkits.sandbox.warm(wait=True)
        result: dict = {}
        worker = threading.Thread(
            target=lambda: result.update(
                r=c.post("/agent", json={"query": "spin", "toolkit": "hostile", "max_steps": 1})
            )
        )
        started = time.monotonic()
        worker.start()
        latencies = []
        while worker.is_alive():
            t = time.monotonic()
            assert c.get("/health").status_code == 200
            latencies.append(time.monotonic() - t)
            time.sleep(0.05)
        worker.join()
        elapsed = time.monotonic() - started
        r = result["r"]
        assert r.status_code == 200, r.text
        assert r.json()["trajectory"]["steps"][3]["content"] == "Error: spin did not finish within 1.5 s"
        assert elapsed < 5, elapsed
        assert len(latencies) >= 5 and max(latencies) < 0.1, (len(latencies), max(latencies))
        assert app.state.toolkits.sandbox.processes  # the spare: a fresh worker for the next episode


def test_math_api_arguments_are_bounded_and_its_precision_does_not_leak():
    app, _ = hostile_app(caller_writes('Action: power\nAction Input: {"base": 10, "exponent": 1000000000}'))
    with TestClient(app) as c:
        r = c.post(
            "/agent", json={"query": "x", "toolkit": "bfcl", "toolkit_config": {"classes": ["MathAPI"]}, "max_steps": 1}
        )
        observation = r.json()["trajectory"]["steps"][3]["content"]
        assert "invalid arguments for power" in observation and "1000" in observation, observation


def test_the_client_going_away_stops_a_non_streaming_request():
    """The episode's tool call runs for ever; the client leaves; the worker is killed long before the tool limit."""
    import httpx

    from umi.serve.sandbox import SandboxedRuntime

    app, _ = hostile_app(
        caller_writes('Action: spin\nAction Input: {"seconds": 3600}'), tool_timeout_s=60, request_timeout_s=60
    )
    stopped: list[float] = []
    original = SandboxedRuntime._drop_worker

    def recording(self):
        if self._worker is not None:
            stopped.append(time.monotonic())
        original(self)

    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    SandboxedRuntime._drop_worker = recording
    try:
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        app.state.toolkits.sandbox.warm(wait=True)
        sent = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"http://127.0.0.1:{port}/agent",
                json={"query": "spin", "toolkit": "hostile", "max_steps": 1},
                timeout=2.0,
            )
        deadline = time.monotonic() + 5
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stopped and stopped[0] - sent < 4, "the tool worker was not stopped when the client left"
    finally:
        SandboxedRuntime._drop_worker = original
        server.should_exit = True
        thread.join(timeout=10)


# --- the API key ---------------------------------------------------------------------------------------------------
def test_an_api_key_keeps_strangers_out_and_health_open():
    app, _ = hostile_app(api_key="s3cret")
    with TestClient(app) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.post("/v1/chat/completions", json={"model": "umi-agent", "messages": ASK}, headers=headers)
            error = openai_error(r, 401)
            assert error["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        assert openai_error(c.get("/v1/models"), 401)["type"] == "authentication_error"
        assert c.get("/health").status_code == 200
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert chat(c, tools=[OPENAI_WEATHER]).status_code == 401
        assert (
            c.post("/v1/chat/completions", json={"model": "umi-agent", "messages": ASK}, headers=ok).status_code == 200
        )


def test_the_api_key_is_off_by_default_and_read_from_the_environment(monkeypatch):
    from umi.serve.settings import ServeSettings

    assert ServeSettings().api_key is None
    monkeypatch.setenv("UMI_SERVE_API_KEY", "s3cret-value")
    settings = ServeSettings()
    assert settings.api_key.get_secret_value() == "s3cret-value" and "s3cret-value" not in repr(settings)
    monkeypatch.setenv("UMI_SERVE_API_KEY", "")
    assert ServeSettings().api_key is None
    assert json.dumps(make_settings().model_dump(mode="json")).count("api_key") == 1
