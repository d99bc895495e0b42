"""The real thing over HTTP: `bentoml serve` on 127.0.0.1 with tiny models, driven with httpx and with the official
`openai` client; and `umi deploy build` packaging the MLflow registry's champions into a Bento (temporary BENTOML_HOME,
temporary MLflow store)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from serve_tools import OPENAI_WEATHER

from umi.vocabulary import checkpoint_fingerprint

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UMI_SERVE_", "BENTOML_", "MLFLOW_"))}
    env.update(
        BENTOML_HOME=str(tmp / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
        DO_NOT_TRACK="true",
        PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
    )
    return env


def start_server(target: str, env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """`bentoml serve <target>` on a free port, once /readyz answers 200."""
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "not ready in 90 s:\n" + log_path.read_text()[-3000:]
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen, log_path: Path) -> None:
    """SIGINT, as Ctrl-C would: the server must exit 0 within 30 s, with no traceback in its log."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - report, then do not leave it behind
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("bentoml serve did not stop within 30 s of SIGINT")
    text = log_path.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, f"exit {proc.returncode}\n" + text[-3000:]


@pytest.fixture(scope="module")
def server(tiny_role_dirs, tmp_path_factory):
    """`bentoml serve umi.serve.service:UmiAgent` over the tiny models; yields its URL; shuts it down at the end."""
    tmp = tmp_path_factory.mktemp("serve")
    env = base_env(tmp)
    env.update({f"UMI_SERVE_{role.upper()}_DIR": str(path) for role, path in tiny_role_dirs.items()})
    env.update({f"UMI_SERVE_{role.upper()}_TOKENS": "8" for role in ("planner", "caller", "summarizer")})
    env.update(
        UMI_SERVE_TOOLKITS="weather=serve_tools:weather_toolkit",
        UMI_SERVE_MAX_BODY_BYTES="100000",
        UMI_SERVE_DEFAULT_STEPS="2",
    )
    proc, url = start_server("umi.serve.service:UmiAgent", env, tmp / "serve.log")
    yield url
    stop_server(proc, tmp / "serve.log")


@pytest.fixture(scope="module")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=60)


def test_health_and_readiness(server):
    assert httpx.get(f"{server}/livez").status_code == 200
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["toolkits"] == ["bfcl", "weather"]
    assert health["limits"]["max_body_bytes"] == 100_000


def test_the_openai_client_lists_the_model_and_chats_with_tools(openai_client):
    import openai

    assert [m.id for m in openai_client.models.list()] == ["umi-agent"]
    ask = [{"role": "user", "content": "What is the weather in Rome?"}]
    reply = openai_client.chat.completions.create(model="umi-agent", messages=ask, tools=[OPENAI_WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.finish_reason == "tool_calls":  # a call that came back was checked against the schema
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    else:
        assert isinstance(choice.message.content, str)
    assert reply.usage.total_tokens > 0

    # a tool result sent back as a `tool` message
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    follow = [
        *ask,
        {"role": "assistant", "content": "I should call get_weather.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 12}'},
    ]
    reply = openai_client.chat.completions.create(model="umi-agent", messages=follow, tools=[OPENAI_WEATHER])
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")

    stream = openai_client.chat.completions.create(model="umi-agent", messages=ask, tools=[OPENAI_WEATHER], stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        openai_client.chat.completions.create(model="gpt-4o", messages=ask)
    bad_tool = {
        "type": "function",
        "function": {"name": "bad", "parameters": {"type": "object", "properties": {"a": {"minimum": "zero"}}}},
    }
    with pytest.raises(openai.BadRequestError, match="tool 'bad': parameters are not a valid JSON Schema"):
        openai_client.chat.completions.create(model="umi-agent", messages=ask, tools=[bad_tool])
    with pytest.raises(openai.BadRequestError, match="last message must be"):
        openai_client.chat.completions.create(
            model="umi-agent", messages=[*ask, {"role": "assistant", "content": "hi"}]
        )


def test_agent_endpoints_over_http(server):
    r = httpx.post(
        f"{server}/agent",
        json={"query": "What is 2 + 40?", "toolkit": "bfcl", "toolkit_config": {"classes": ["MathAPI"]}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] in ("answered", "gave_up", "max_steps", "planner_empty")
    assert body["trajectory"]["steps"][0] == {
        **body["trajectory"]["steps"][0],
        "role": "user",
        "content": "What is 2 + 40?",
    }
    assert body["trajectory"]["meta"]["planner_steps"] <= 2

    with httpx.stream(
        "POST",
        f"{server}/agent/stream",
        json={"query": "What is the weather in Rome?", "toolkit": "weather"},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        events = [line[len("event: ") :] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[-1] == "result" and events.count("step") >= 2

    r = httpx.post(f"{server}/agent", json={"query": "x", "toolkit": "nope"})
    assert r.status_code == 400 and "unknown toolkit 'nope'" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/agent", json={"query": "x" * 200_000, "toolkit": "weather"})
    assert r.status_code == 413
    r = httpx.post(f"{server}/agent", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_sent_whole_before_reading_gets_its_413(server, chunked):
    """The issue's case: a client that sends the whole body before it reads (urllib, requests), a ~1.1 MB tool
    schema, 11x the limit, uploaded in pieces (a slow link: the server's answer surely comes mid-upload). The server
    reads and discards the rest, then answers 413 in OpenAI's shape and closes, where it used to answer and close
    mid-upload, leaving the client a broken pipe. The same without a Content-Length (chunked)."""
    import http.client
    from urllib.parse import urlparse

    tools = [
        {"type": "function", "function": {"name": f"f{i}", "description": "d" * 1000, "parameters": {}}}
        for i in range(1000)
    ]
    body = json.dumps({"model": "umi-agent", "messages": [{"role": "user", "content": "hi"}], "tools": tools}).encode()
    url = urlparse(server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(body)))))
    conn.endheaders()
    for at in range(0, len(body), 32_768):
        part = body[at : at + 32_768]
        conn.send(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
        time.sleep(0.01)
    if chunked:
        conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 413 and response.getheader("connection", "").lower() == "close"
    assert json.loads(response.read())["error"]["code"] == "body_too_large"
    conn.close()
    assert httpx.get(f"{server}/health").status_code == 200  # and the server goes on


def test_concurrent_clients_get_no_errors(server, openai_client):
    statuses: list[int] = []

    def agent() -> None:
        r = httpx.post(
            f"{server}/agent", json={"query": "What is the weather in Oslo?", "toolkit": "weather"}, timeout=120
        )
        statuses.append(r.status_code)

    def chat() -> None:
        openai_client.chat.completions.create(
            model="umi-agent", tools=[OPENAI_WEATHER], messages=[{"role": "user", "content": "Weather in Oslo?"}]
        )
        statuses.append(200)

    threads = [threading.Thread(target=f) for f in (agent, chat) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8


def test_the_load_benchmark_runs_against_the_server(server, tmp_path):
    out = tmp_path / "load.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "service_load.py"),
            "--url",
            server,
            "--clients",
            "2",
            "--seconds",
            "2",
            "--max-new-tokens",
            "8",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["errors"] == 0 and figures["requests"] >= 2 and figures["p99_s"] >= figures["p50_s"] > 0
    assert set(figures["per_endpoint"]) == {"agent", "chat"}


def test_umi_deploy_build_packages_the_registry_champions(tiny_role_dirs, tmp_path):
    """Register the tiny models in a temporary MLflow store, promote them, and build the Bento from the champions."""
    env = base_env(tmp_path)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register = (
        "from umi.registry import store as r\n"
        "import sys, json\n"
        "dirs = json.loads(sys.argv[1])\n"
        "for role in ('planner', 'caller', 'summarizer'):\n"
        "    v = r.register_role_model(role, dirs[role], data_version='dvc:test/' + role)\n"
        "    r.set_alias(role, v.version)\n"
    )
    dirs = json.dumps({role: str(path) for role, path in tiny_role_dirs.items()})
    done = subprocess.run([sys.executable, "-c", register, dirs], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    umi = Path(sys.executable).with_name("umi")
    done = subprocess.run(
        [str(umi), "deploy", "build", "--bentofile", str(REPO / "bentofile.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "built umi-agent:" in done.stdout

    home = tmp_path / "bentoml"
    fingerprints = {}
    for role in ("planner", "caller", "summarizer"):
        (model_yaml,) = (home / "models" / f"umi-{role}").glob("*/model.yaml")
        labels = yaml.safe_load(model_yaml.read_text())["labels"]
        fingerprints[role] = labels["fingerprint"]
        # the registered checkpoint's fingerprint (the one the registry tagged), not the downloaded copy's
        assert labels["fingerprint"] == checkpoint_fingerprint(tiny_role_dirs[role])
        assert labels["source"] == "mlflow" and labels["mlflow_model"] == f"umi-{role}"
        assert labels["mlflow_version"] == "1" and labels["mlflow_alias"] == "champion" and labels["mlflow_run_id"]
        assert labels["data_version"] == f"dvc:test/{role}" and labels["kind"] == "checkpoint"
        assert (model_yaml.parent / "model.safetensors").is_file()
    # one directory registered for two roles is one checkpoint to the service (loaded once)
    assert fingerprints["planner"] == fingerprints["caller"] != fingerprints["summarizer"]
    (bento_yaml,) = (home / "bentos" / "umi-agent").glob("*/bento.yaml")
    bento = yaml.safe_load(bento_yaml.read_text())
    packaged = {m["tag"].split(":")[0] for s in bento["services"] for m in s["models"]}
    assert packaged == {"umi-planner", "umi-caller", "umi-summarizer"}
    assert bento["service"] == "umi.serve.service:UmiAgent" and bento["labels"]["openai_endpoint"] == "/v1"
    src = bento_yaml.parent / "src"
    assert (src / "umi" / "serve" / "service.py").is_file() and not (src / "tests").exists()
    requirements = (bento_yaml.parent / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml==" in requirements and "torch==" in requirements and "bfcl_eval" not in requirements


def test_a_bento_of_lora_adapters_serves_them_on_one_base(adapter_dirs, tmp_path):
    """`umi deploy build` with adapter directories, then `bentoml serve` of the Bento: models from the store."""
    base, adapters = adapter_dirs
    env = base_env(tmp_path)
    umi = Path(sys.executable).with_name("umi")
    args = [f"--{role}={path}" for role, path in adapters.items()]
    done = subprocess.run(
        [str(umi), "deploy", "build", *args, f"--base={base}", "--bentofile", str(REPO / "bentofile.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tag = re.search(r"built (umi-agent:\S+)", done.stdout).group(1)
    env.update({f"UMI_SERVE_{role.upper()}_TOKENS": "8" for role in ("planner", "caller", "summarizer")})
    proc, url = start_server(tag, env, tmp_path / "serve.log")
    try:
        roles = httpx.get(f"{url}/v1/models").json()["data"][0]["umi"]["roles"]
        assert {r["labels"]["kind"] for r in roles.values()} == {"lora-adapter", "base"}
        assert roles["base"]["tag"].startswith("umi-base:") and roles["planner"]["labels"]["source"] == "directory"
        r = httpx.post(
            f"{url}/agent",
            json={
                "query": "What is 2 + 40?",
                "toolkit": "bfcl",
                "max_steps": 1,
                "toolkit_config": {"classes": ["MathAPI"]},
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text
    finally:
        stop_server(proc, tmp_path / "serve.log")
