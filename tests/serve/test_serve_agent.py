"""POST /agent and /agent/stream in-process: whole episodes with server-side toolkits (a user toolkit and BFCL's own
tool classes), the pending call for client-side tool schemas, streaming, time limits, concurrent requests, and the 4xx
for every kind of bad request."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from serve_helpers import OPENAI_WEATHER, WEATHER, rule_app, weather_rules
from starlette.testclient import TestClient

from umi.schema import Trajectory


def run(client, **body):
    return client.post("/agent", json={"query": "What is the weather in Rome?", **body})


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        event = re.search(r"^event: (.*)$", block, re.M).group(1)
        out.append((event, json.loads(re.search(r"^data: (.*)$", block, re.M).group(1))))
    return out


def test_an_episode_with_a_server_side_toolkit_returns_the_answer_and_the_whole_trajectory(client):
    r = run(client, toolkit="weather", toolkit_config={"unit": "F"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "answered" and body["answer"] == "It is 12 degrees." and body["steps"] == 2
    assert body["pending_tool_call"] is None
    trajectory = Trajectory.model_validate(body["trajectory"])  # a valid umi trajectory, reusable as data
    assert [s.role for s in trajectory.steps] == [
        "user",
        "assistant",
        "caller",
        "observation",
        "assistant",
        "conclusion",
    ]
    assert trajectory.steps[2].arguments == {"city": "Rome"}
    assert json.loads(trajectory.steps[3].content) == {"city": "Rome", "temperature": 12, "unit": "F"}  # really ran
    assert trajectory.meta["status"] == "answered" and len(trajectory.meta["generations"]) == 4
    assert trajectory.meta["config"]["doc_style"] == "compact"
    assert body["models"] == {"planner": {"source": "rules"}}


def test_bfcl_tool_classes_run_server_side(client):
    def math(role, prompt, request):
        if role == "planner":
            return (
                "Done.\n Next: conclusion."
                if "observation: " in prompt.rsplit("user: ", 1)[-1]
                else "I should add them.\n Next: caller."
            )
        if role == "caller":
            return 'Action: add\nAction Input: {"a": 2, "b": 40}'
        return "The sum is " + re.findall(r"observation: (.*?)</s>", prompt)[-1]

    app, _ = rule_app(math)
    with TestClient(app) as c:
        body = run(c, query="What is 2 + 40?", toolkit="bfcl", toolkit_config={"classes": ["MathAPI"]}).json()
    assert body["status"] == "answered"
    observation = body["trajectory"]["steps"][3]["content"]
    assert json.loads(observation) == {"result": 42}  # BFCL's MathAPI.add, executed
    assert body["answer"] == f"The sum is {observation}"
    assert "add" in {t["name"] for t in body["trajectory"]["tools"]}


def test_tool_schemas_without_an_implementation_return_the_pending_call(client):
    body = run(client, tools=[OPENAI_WEATHER]).json()
    assert body["status"] == "tool_call_pending" and body["answer"] is None
    pending = body["pending_tool_call"]
    assert pending["name"] == "get_weather" and pending["arguments"] == {"city": "Rome"} and pending["id"]
    assert [s["role"] for s in body["trajectory"]["steps"]] == ["user", "assistant", "caller"]
    # plain {name, description, parameters} schemas work too
    assert run(client, tools=[WEATHER.model_dump()]).json()["pending_tool_call"]["name"] == "get_weather"
    # and a conclusion needs no tool: the answer comes back
    body = run(client, query="nonsense", tools=[OPENAI_WEATHER]).json()
    assert body["status"] == "gave_up" and body["pending_tool_call"] is None


def test_history_of_earlier_turns_reaches_the_prompts(client):
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "", "decision": "conclusion"},
        {"role": "conclusion", "content": "Hello!"},
    ]
    assert run(client, toolkit="weather", history=history).json()["status"] == "answered"
    assert (
        "user: Hi</s>assistant:  Next: conclusion.</s>conclusion: Hello!</s>user: What is the weather in Rome?</s>"
        in client.backend.requests[0][1].prompt
    )


def test_the_step_cap_ends_an_episode(client):
    def stubborn(role, prompt, request):
        return "Again.\n Next: caller." if role == "planner" else weather_rules(role, prompt, request)

    app, backend = rule_app(stubborn)
    with TestClient(app) as c:
        body = run(c, toolkit="weather", max_steps=3).json()
    assert body["status"] == "max_steps" and body["steps"] == 3 and body["answer"] is None
    assert backend.roles() == ["planner", "caller"] * 3


def test_streaming_sends_each_step_as_it_happens_then_the_result(client):
    r = client.post("/agent/stream", json={"query": "What is the weather in Rome?", "toolkit": "weather"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert [e for e, _ in events] == ["step"] * 6 + ["result"]
    assert [d["kind"] for _, d in events[:-1]] == ["planner", "caller", "observation", "planner", "answer", "end"]
    assert events[1][1]["data"]["arguments"] == {"city": "Rome"}
    result = events[-1][1]
    assert result["status"] == "answered" and len(result["trajectory"]["steps"]) == 6
    # schema-only tools stream too
    events = sse(client.post("/agent/stream", json={"query": "Weather in Rome?", "tools": [OPENAI_WEATHER]}).text)
    assert [d.get("kind", "result") for _, d in events] == ["planner", "caller", "result"]


def test_a_slow_tool_is_cut_at_the_tool_time_limit_and_the_episode_goes_on():
    def slow(role, prompt, request):
        if role == "caller":
            return 'Action: slow_lookup\nAction Input: {"seconds": 3}'
        return weather_rules(role, prompt, request)

    app, _ = rule_app(slow, tool_timeout_s=0.2)
    started = time.monotonic()
    with TestClient(app) as c:
        body = run(c, toolkit="weather").json()
    assert time.monotonic() - started < 2.5
    assert body["trajectory"]["steps"][3]["content"] == "Error: slow_lookup did not finish within 0.2 s"
    assert body["status"] == "answered"


def test_a_request_past_its_time_limit_is_a_504_and_frees_the_model():
    def sluggish(role, prompt, request):
        time.sleep(0.3)
        return weather_rules(role, prompt, request)

    app, backend = rule_app(sluggish)
    with TestClient(app) as c:
        app.state.toolkits.sandbox.warm(wait=True)  # the tool worker started, so the 0.5 s are the models'
        r = run(c, toolkit="weather", timeout_s=0.5)
        assert "time limit of 0.5 s" in error_of(r, 504)
        assert len(backend.requests) == 2  # stopped at the next generation, not after the whole episode
        events = sse(
            c.post(
                "/agent/stream", json={"query": "What is the weather in Rome?", "toolkit": "weather", "timeout_s": 0.5}
            ).text
        )
        assert events[-1][0] == "error" and events[-1][1]["error"]["status"] == 504


def test_concurrent_requests_each_get_their_own_episode():
    def paced(role, prompt, request):
        time.sleep(0.01)  # let the threads interleave
        return weather_rules(role, prompt, request)

    app, _ = rule_app(paced)
    cities = ["Rome", "Oslo", "Lima", "Kyiv", "Doha", "Bern", "Riga", "Baku"]
    answers: dict[str, dict] = {}
    with TestClient(app) as c:

        def one(city: str) -> None:
            answers[city] = c.post(
                "/agent", json={"query": f"What is the weather in {city}?", "toolkit": "weather"}
            ).json()

        threads = [threading.Thread(target=one, args=(city,)) for city in cities]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for city in cities:
        assert answers[city]["answer"] == f"It is {len(city) * 3} degrees.", answers[city]
        assert answers[city]["trajectory"]["steps"][2]["arguments"] == {"city": city}


def test_toolkits_are_listed(client):
    names = [t["name"] for t in client.get("/agent/toolkits").json()["toolkits"]]
    assert names == ["bfcl", "weather"]


@pytest.mark.parametrize(
    "body, problem",
    [
        ({}, "query: Field required"),
        ({"query": ""}, "query: String should have at least 1 character"),
        ({"query": "x"}, "give exactly one of 'toolkit'"),
        ({"query": "x", "toolkit": "weather", "tools": [OPENAI_WEATHER]}, "give exactly one of 'toolkit'"),
        ({"query": "x", "toolkit": "shell"}, "unknown toolkit 'shell' (registered: bfcl, weather)"),
        ({"query": "x", "tools": [OPENAI_WEATHER], "toolkit_config": {"a": 1}}, "'toolkit_config' needs a 'toolkit'"),
        ({"query": "x", "toolkit": "weather", "toolkit_config": {"unit": "K"}}, "toolkit 'weather': unit must be C"),
        ({"query": "x", "toolkit": "bfcl", "toolkit_config": {"classes": ["Shell"]}}, "unknown or unsupported BFCL"),
        ({"query": "x", "toolkit": "bfcl", "toolkit_config": {}}, "'classes' must be a non-empty list"),
        ({"query": "x", "toolkit": "weather", "max_steps": 13}, "max_steps 13 exceeds this service's limit of 8"),
        ({"query": "x", "toolkit": "weather", "max_steps": 0}, "max_steps: Input should be greater than or equal to 1"),
        ({"query": "x", "toolkit": "weather", "max_new_tokens": {"planner": 9999}}, "max_new_tokens.planner = 9999"),
        ({"query": "x", "toolkit": "weather", "max_new_tokens": {"global": 8}}, "max_new_tokens.global"),
        ({"query": "x", "toolkit": "weather", "timeout_s": 999}, "timeout_s 999 exceeds"),
        ({"query": "x", "toolkit": "weather", "temperature": 1}, "temperature: Extra inputs are not permitted"),
        ({"query": "x" * 9000, "toolkit": "weather"}, "query is 9000 characters, over the limit of 8000"),
        ({"query": "x", "tools": [{"name": "t", "parameters": {"type": "nope"}}]}, "tool 't': unknown parameter type"),
        ({"query": "x", "tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools.0.function"),
        ({"query": "x", "toolkit": "weather", "history": [{"role": "caller"}]}, "history.0"),
        (
            {"query": "x", "toolkit": "weather", "history": [{"role": "observation", "content": "r"}]},
            "history: step 0: an observation must follow a caller step",
        ),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(client, body, problem):
    assert problem in error_of(client.post("/agent", json=body), 400)
    assert problem in error_of(client.post("/agent/stream", json=body), 400)  # before the stream starts
    assert client.backend.requests == []


def test_bodies_over_the_limit_and_broken_json_are_refused(client):
    big = {"query": "x" * 250_000, "toolkit": "weather"}
    assert "over this service's limit" in error_of(client.post("/agent", json=big), 413)
    r = client.post(
        "/agent", content=b'{"query": "x", "toolkit": weather}', headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in error_of(r, 400)


def test_a_bug_is_still_answered_as_json():
    def broken(role, prompt, request):
        raise RuntimeError("a bug")

    app, _ = rule_app(broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = run(c, toolkit="weather")
    assert error_of(r, 500) == "internal error: RuntimeError"


def test_a_client_that_leaves_a_stream_stops_the_episode():
    import asyncio

    def stubborn(role, prompt, request):
        time.sleep(0.05)
        return "Again.\n Next: caller." if role == "planner" else weather_rules(role, prompt, request)

    app, backend = rule_app(stubborn)
    body = json.dumps({"query": "What is the weather in Rome?", "toolkit": "weather", "max_steps": 8}).encode()

    async def leave_after_first_event() -> None:
        first_event = asyncio.Event()
        sent_body = False

        async def receive():
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await first_event.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                first_event.set()

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/agent/stream",
            "raw_path": b"/agent/stream",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("test", 80),
            "client": ("test", 1),
            "root_path": "",
        }
        await app(scope, receive, send)
        # the server lives on (its loop too); the episode would go on for 16 generations (about 0.8 s)
        await asyncio.sleep(0.5)
        seen = len(backend.requests)
        await asyncio.sleep(0.4)
        return seen

    seen = asyncio.run(leave_after_first_event())
    assert len(backend.requests) == seen < 16


def test_a_busy_model_is_waited_for_only_as_long_as_the_request_may_take():
    from serve_helpers import RuleBackend

    from umi.inference.deadlines import Deadline, RequestCancelled, RequestTimeout
    from umi.inference.protocol import GenerationRequest
    from umi.inference.sharing import SharedBackend

    role = SharedBackend(RuleBackend(), threading.Lock())
    prompt = (
        "The conversation history is:\nuser: What is the weather in Rome?</s>"
        + "\nYou are the assistant to plan what to do next and whether is caller's or conclusion's turn to answer.\n"
        "Answer with a following format:\nThe thought of the next step, followed by Next: caller or conclusion or "
        "give up.\nassistant: "
    )
    request = GenerationRequest(prompt=prompt)
    assert role.generate(request, Deadline(5)).text.endswith("Next: caller.")
    with role.lock:  # another request is generating
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="stayed busy past the request's time limit of 0.2 s"):
            role.generate(request, Deadline(0.2))
        assert 0.15 < time.monotonic() - started < 1
    cancelled = Deadline(5)
    cancelled.cancel()
    with pytest.raises(RequestCancelled):
        role.generate(request, cancelled)
