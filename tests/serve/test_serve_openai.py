"""The OpenAI-compatible chat endpoint in-process: messages -> α-UMi steps, one planner turn then the caller
(tool_calls, arguments checked against the schema) or the summarizer (content), tool_choice, what happens to bad model
output, and every way a request can be wrong (4xx naming the problem)."""

from __future__ import annotations

import json

import pytest
from serve_helpers import OPENAI_WEATHER, make_settings, rule_app, weather_rules
from starlette.testclient import TestClient

from umi.serve.app import GIVE_UP_TEXT, create_app
from umi.serve.openai_compat import ChatCompletionRequest, MessageError, messages_to_steps

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def chat(client, messages, **kw):
    body = {"model": "umi-agent", "messages": messages, "tools": [OPENAI_WEATHER], **kw}
    return client.post("/v1/chat/completions", json=body)


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body["message"]


# --- messages -> steps ------------------------------------------------------------------------------------------------
def parse_messages(messages):
    return messages_to_steps(ChatCompletionRequest(model="m", messages=messages).messages)


def test_messages_map_to_the_steps_training_uses():
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    steps = parse_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Rome?"}]},
            {"role": "assistant", "content": "I should call get_weather.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 12}'},
            {"role": "assistant", "content": "It is 12 degrees."},
            {"role": "user", "content": "And tomorrow?"},
        ]
    )
    assert [(s.role, s.decision) for s in steps] == [
        ("user", None),
        ("assistant", "caller"),
        ("caller", None),
        ("observation", None),
        ("assistant", "conclusion"),
        ("conclusion", None),
        ("user", None),
    ]
    assert steps[0].content == "Be brief.\nWeather in Rome?"
    assert steps[1].content == "I should call get_weather."
    assert (steps[2].tool_name, steps[2].arguments) == ("get_weather", {"city": "Rome"})
    assert steps[3].content == '{"temperature": 12}' and steps[5].content == "It is 12 degrees."


def test_parallel_tool_calls_become_consecutive_steps_with_their_own_results():
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": f'{{"city": "{c}"}}'}}
        for i, c in enumerate(["Rome", "Oslo"])
    ]
    steps = parse_messages(
        [
            *ask("Rome and Oslo?"),
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "oslo"},
            {"role": "tool", "tool_call_id": "c0", "content": "rome"},
        ]
    )
    assert [s.role for s in steps] == ["user"] + ["assistant", "caller", "observation"] * 2
    assert [s.content for s in steps if s.role == "observation"] == ["rome", "oslo"]  # matched by id, not by order


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([{"role": "assistant", "content": "hi"}], "before any user message"),
        ([*ask("x"), {"role": "assistant", "content": "done"}], "last message must be"),
        ([*ask("x"), {"role": "tool", "tool_call_id": "c9", "content": "r"}], "must follow the assistant message"),
        (
            [
                *ask("x"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
            ],
            "has no tool message",
        ),
        (
            [
                *ask("x"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c2", "content": "r"},
            ],
            "did not call",
        ),
        (
            [
                *ask("x"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{bad"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "r"},
            ],
            "not valid JSON",
        ),
        ([{"role": "system", "content": "only a system prompt"}], "no user message"),
    ],
)
def test_conversations_that_are_not_the_planners_turn_are_refused(messages, problem):
    with pytest.raises(MessageError, match=problem):
        parse_messages(messages)


# --- the endpoint: the α-UMi turn -------------------------------------------------------------------------------------
def test_a_call_comes_back_as_tool_calls_and_its_result_leads_to_the_summarizers_answer(client):
    r = chat(client, ask("What is the weather in Oslo?"))
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and body["model"] == "umi-agent"
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "I should call get_weather."  # the planner's thought travels with the call
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0
    assert client.backend.roles() == ["planner", "caller"]

    # the client runs the tool and sends the result back: the state is all in the messages
    follow = [
        *ask("What is the weather in Oslo?"),
        message,
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temperature": 12}'},
    ]
    r = chat(client, follow)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == "It is 12 degrees."
    planner_prompt = client.backend.requests[2][1].prompt
    assert (
        "assistant: I should call get_weather.\n Next: caller.</s>caller: Action: get_weather\nAction Input: "
        '{"city": "Oslo"}</s>observation: {"temperature": 12}</s>'
    ) in planner_prompt
    assert client.backend.roles()[2:] == ["planner", "summarizer"]


def test_prompts_use_the_compact_tool_docs_of_training(client):
    chat(client, ask("What is the weather in Oslo?"))
    prompt = client.backend.requests[0][1].prompt
    assert "get_weather(city: string): Get the current weather of a city\n" in prompt
    assert '"Name": "get_weather"' not in prompt


def test_giving_up_is_a_plain_answer_saying_so(client):
    r = chat(client, ask("nonsense request"))
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].startswith(GIVE_UP_TEXT)
    assert r.json()["umi"]["decision"] == "give up"


def test_tool_choice_none_turns_a_call_into_an_answer(client):
    r = chat(client, ask("What is the weather in Oslo?"), tool_choice="none")
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "stop" and body["choices"][0]["message"]["content"]
    assert body["umi"]["decision"] == "conclusion" and "tool_choice is 'none'" in body["umi"]["tool_choice_override"]
    assert client.backend.roles() == ["planner", "summarizer"]


def test_no_tools_means_the_planner_cannot_pick_the_caller(client):
    r = client.post("/v1/chat/completions", json={"model": "umi-agent", "messages": ask("Weather in Oslo?")})
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    assert "no tools were offered" in r.json()["umi"]["tool_choice_override"]


def test_tool_choice_required_and_named_force_a_call_to_that_tool():
    def concluding(role, prompt, request):
        if role == "planner":
            return "I know this.\n Next: conclusion."
        if role == "caller":
            return (
                'Action: add\nAction Input: {"a": 1, "b": 2}'
                if "add(" in prompt
                else 'Action: get_weather\nAction Input: {"city": "Oslo"}'
            )
        return "An answer."

    app, backend = rule_app(concluding)
    with TestClient(app) as c:
        r = chat(c, ask("Add 1 and 2"), tools=[OPENAI_WEATHER, ADD], tool_choice="required")
        assert r.json()["choices"][0]["finish_reason"] == "tool_calls"
        r = chat(
            c,
            ask("Add 1 and 2"),
            tools=[OPENAI_WEATHER, ADD],
            tool_choice={"type": "function", "function": {"name": "add"}},
        )
        (call,) = r.json()["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "add" and json.loads(call["function"]["arguments"]) == {"a": 1, "b": 2}
        caller_prompt = backend.requests[-1][1].prompt
        assert "add(a: integer, b: integer)" in caller_prompt and "get_weather(" not in caller_prompt


def script_caller(*outputs: str):
    """Rules with a caller that writes `outputs` in turn (the last one from then on)."""
    said = []

    def rule(role, prompt, request):
        if role != "caller":
            return weather_rules(role, prompt, request)
        said.append(request)
        return outputs[min(len(said), len(outputs)) - 1]

    return rule, said


def test_a_bad_call_is_retried_once_with_sampling():
    rule, said = script_caller(
        'Action: get_weather\nAction Input: {"city": ', 'Action: get_weather\nAction Input: {"city": "Oslo"}'
    )
    app, _ = rule_app(rule)
    with TestClient(app) as c:
        body = chat(c, ask("What is the weather in Oslo?")).json()
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert [f["kind"] for f in body["umi"]["failures"]] == ["bad_json"]
    assert said[0].temperature == 0 and said[1].temperature > 0 and said[1].seed != said[0].seed


@pytest.mark.parametrize(
    "output, problem",
    [
        ("I will not call anything", "no 'Action:' found"),
        ('Action: get_forecast\nAction Input: {"city": "Oslo"}', "'get_forecast', which is not one of the tools"),
        ('Action: get_weather\nAction Input: {"city": 5}', "break the tool's schema: 5 is not of type 'string'"),
        ('Action: get_weather\nAction Input: {"town": "Oslo"}', "break the tool's schema"),
        ('Action: get_weather\nAction Input: ["Oslo"]', "must be a JSON object"),
    ],
)
def test_a_call_that_stays_bad_is_answered_as_text_never_a_server_error(output, problem):
    rule, said = script_caller(output)
    app, _ = rule_app(rule)
    with TestClient(app) as c:
        r = chat(c, ask("What is the weather in Oslo?"))
    assert r.status_code == 200
    body = r.json()
    assert len(said) == 2  # tried, retried
    assert body["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in body["choices"][0]["message"]
    content = body["choices"][0]["message"]["content"]
    assert content.startswith("Error: the caller's output could not be used as a tool call") and problem in content
    assert body["umi"]["status"] == "failed"


def test_a_planner_that_writes_nothing_is_retried_then_reported():
    calls = []

    def silent(role, prompt, request):
        calls.append(request.temperature)
        return "   "

    app, _ = rule_app(silent, planner_retries=2)
    with TestClient(app) as c:
        body = chat(c, ask("Weather in Oslo?")).json()
    assert body["choices"][0]["message"]["content"] == "Error: the planner wrote nothing, even when retried."
    assert calls == [0.0, 0.7, 0.7]


def test_a_planner_without_a_decision_goes_on_as_caller():
    def undecided(role, prompt, request):
        return "I think about the weather in Oslo" if role == "planner" else weather_rules(role, prompt, request)

    app, _ = rule_app(undecided)
    with TestClient(app) as c:
        body = chat(c, ask("What is the weather in Oslo?")).json()
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"]["content"] == "I think about the weather in Oslo"
    assert body["umi"]["failures"][0]["kind"] == "no_decision"


def test_max_tokens_reaches_the_caller_and_summarizer(client):
    chat(client, ask("What is the weather in Oslo?"), max_tokens=7)
    assert {role: r.max_new_tokens for role, r in client.backend.requests} == {"planner": 32, "caller": 7}


def test_streaming_sends_the_same_completion_as_chunks(client):
    plain = chat(client, ask("What is the weather in Oslo?")).json()
    r = chat(client, ask("What is the weather in Oslo?"), stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = [line[len("data: ") :] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [c["function"] for c in calls] == [c["function"] for c in plain["choices"][0]["message"]["tool_calls"]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_models_endpoint_lists_the_one_model(client):
    body = client.get("/v1/models").json()
    assert [m["id"] for m in body["data"]] == ["umi-agent"] and body["data"][0]["object"] == "model"
    assert client.get("/v1/models/umi-agent").json()["id"] == "umi-agent"
    assert "does not exist" in error_of(client.get("/v1/models/gpt-4"), 404)


# --- bad requests -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, status, problem",
    [
        ({"messages": ask("x")}, 400, "model: Field required"),
        ({"model": "umi-agent"}, 400, "messages: Field required"),
        ({"model": "umi-agent", "messages": []}, 400, "messages: List should have at least 1 item"),
        ({"model": "gpt-4o", "messages": ask("x")}, 404, "the model 'gpt-4o' does not exist"),
        ({"model": "umi-agent", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0"),
        (
            {"model": "umi-agent", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            400,
            "messages.0",
        ),
        ({"model": "umi-agent", "messages": ask("x"), "n": 2}, 400, "n must be 1"),
        ({"model": "umi-agent", "messages": ask("x"), "max_tokens": 10_000}, 400, "max_tokens 10000 exceeds"),
        ({"model": "umi-agent", "messages": ask("x"), "temperature": 5}, 400, "temperature"),
        (
            {
                "model": "umi-agent",
                "messages": ask("x"),
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "bad",
                            "parameters": {"type": "object", "properties": {"a": {"type": "bogus"}}},
                        },
                    }
                ],
            },
            400,
            "tool 'bad': unknown parameter type 'bogus'",
        ),
        (
            {
                "model": "umi-agent",
                "messages": ask("x"),
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "bad",
                            "parameters": {"type": "object", "properties": {"a": {"minimum": "zero"}}},
                        },
                    }
                ],
            },
            400,
            "tool 'bad': parameters are not a valid JSON Schema",
        ),
        (
            {"model": "umi-agent", "messages": ask("x"), "tools": [OPENAI_WEATHER, OPENAI_WEATHER]},
            400,
            "already registered",
        ),
        (
            {
                "model": "umi-agent",
                "messages": ask("x"),
                "tools": [{"type": "function", "function": {"name": "has space"}}],
            },
            400,
            "tool name 'has space'",
        ),
        ({"model": "umi-agent", "messages": ask("x"), "tools": [{"type": "retrieval"}]}, 400, "tools.0"),
        (
            {
                "model": "umi-agent",
                "messages": ask("x"),
                "tools": [OPENAI_WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "add"}},
            },
            400,
            "tool_choice names 'add'",
        ),
        ({"model": "umi-agent", "messages": ask("x"), "tool_choice": "required"}, 400, "needs 'tools'"),
        (
            {"model": "umi-agent", "messages": [*ask("x"), {"role": "assistant", "content": "y"}]},
            400,
            "last message must be",
        ),
        ({"model": "umi-agent", "messages": ask("x"), "tools": [OPENAI_WEATHER] * 70}, 400, "70 tools, over"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(client, body, status, problem):
    assert problem in error_of(client.post("/v1/chat/completions", json=body), status)
    assert client.backend.requests == []  # refused before any model work


def test_malformed_and_oversized_bodies(client):
    r = client.post(
        "/v1/chat/completions",
        content=b'{"model": "umi-agent", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert "not valid JSON" in error_of(r, 400)
    assert "body is missing" in error_of(client.post("/v1/chat/completions"), 400)
    big = {"model": "umi-agent", "messages": ask("x" * 300_000)}
    assert "over this service's limit of 200000 bytes" in error_of(client.post("/v1/chat/completions", json=big), 413)

    def chunked():  # no Content-Length: the limit must hold while reading
        yield b'{"model": "umi-agent", "messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"y" * 10_000
        yield b'"}]}'

    r = client.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert "over 200000 bytes" in error_of(r, 413)


def test_not_ready_is_a_503():
    app = create_app(make_settings(), lambda: None)
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "umi-agent", "messages": ask("x")})
        assert "still loading" in error_of(r, 503)
        assert c.get("/health").status_code == 503


def test_replies_parse_as_the_openai_clients_types_and_its_messages_come_back(client):
    """The loop docs/serving.md shows: the client's own message object is sent back as it is."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    messages = ask("What is the weather in Lima?")
    reply = ChatCompletion.model_validate(chat(client, messages).json())
    assert reply.choices[0].finish_reason == "tool_calls"
    message = reply.choices[0].message
    messages.append(message.model_dump(exclude_none=True))
    for call in message.tool_calls:
        result = {"temperature": len(json.loads(call.function.arguments)["city"]) * 3}
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    reply = ChatCompletion.model_validate(chat(client, messages).json())
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content == "It is 12 degrees."
    r = chat(client, ask("What is the weather in Lima?"), stream=True)
    chunks = [
        ChatCompletionChunk.model_validate(json.loads(line[6:]))
        for line in r.text.split("\n\n")
        if line.startswith("data: {")
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
