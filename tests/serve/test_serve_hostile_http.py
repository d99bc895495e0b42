"""Hostile requests against a real `umi deploy serve` (BentoML) with tiny models on 127.0.0.1: each gets its 4xx, in
OpenAI's error shape, within its deadline; /health answers within 100 ms all along; a schema that would fetch a URL
fetches nothing (a local listener sees no request); the server's threads and processes are as many after as before;
SIGTERM ends every process of the service within 10 s while a tool is computing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from test_serve_integration import base_env, free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
ASK = [{"role": "user", "content": "What is the weather in Rome?"}]
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def service(tiny_role_dirs, tmp_path_factory):
    """`umi deploy serve` (which runs `bentoml serve`), in a session of its own; yields (process, url, log)."""
    tmp = tmp_path_factory.mktemp("hostile")
    env = base_env(tmp)
    env.update({f"UMI_SERVE_{role.upper()}_TOKENS": "8" for role in ("planner", "caller", "summarizer")})
    env.update(
        UMI_SERVE_TOOLKITS="weather=serve_tools:weather_toolkit,hostile=serve_tools:hostile_toolkit",
        UMI_SERVE_TOOL_TIMEOUT_S="3",
        UMI_SERVE_TOOL_CPU_S="2",
        UMI_SERVE_DEFAULT_STEPS="1",
    )
    port = free_port()
    log_path = tmp / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "umi.cli",
                "deploy",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *[f"--{r}={p}" for r, p in tiny_role_dirs.items()],
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "not ready in 120 s:\n" + log_path.read_text()[-3000:]
        time.sleep(0.5)
    yield proc, url, log_path
    if proc.poll() is None:  # the SIGTERM test did not run or failed: leave nothing behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def tool(parameters, name="t"):
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def chat(**extra) -> dict:
    return {"model": "umi-agent", "messages": ASK, **extra}


def big_tools(n: int = 60) -> list[dict]:
    """n valid schemas of ~14 KB each (the 889 KB request whose schema checks took 7 s in the event loop)."""
    properties = {f"field_{i}": {"type": "string", "description": "d" * 100} for i in range(95)}
    return [tool({"type": "object", "properties": properties}, name=f"tool_{k}") for k in range(n)]


def cases(url_base: str) -> list[tuple[str, str, str, bytes | dict, int, float, str]]:
    """(name, method, path, body, status, deadline s, what the message says)."""
    return [
        ("unknown path", "GET", "/nope", b"", 404, 5, "no such endpoint"),
        ("wrong method", "GET", "/agent", b"", 405, 5, "does not take GET"),
        ("200k brackets", "POST", "/agent", b"[" * 200_000, 400, 5, "nests deeper than"),
        (
            "100k-deep nesting",
            "POST",
            "/v1/chat/completions",
            b'{"model": "umi-agent", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            400,
            5,
            "nests deeper",
        ),
        (
            "5000-digit integer",
            "POST",
            "/v1/chat/completions",
            b'{"model": "umi-agent", "messages": [], "seed": ' + b"1" * 5000 + b"}",
            400,
            5,
            "integer of 5000 digits",
        ),
        (
            "1e999",
            "POST",
            "/v1/chat/completions",
            b'{"model": "umi-agent", "temperature": 1e999, "messages": []}',
            400,
            5,
            "out of range",
        ),
        ("seed 2**70", "POST", "/v1/chat/completions", chat(seed=2**70), 400, 5, "seed"),
        (
            "empty tool name in history",
            "POST",
            "/v1/chat/completions",
            chat(
                messages=[
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "", "arguments": "{}"}}],
                    },
                    {"role": "tool", "tool_call_id": "c", "content": "x"},
                ]
            ),
            400,
            5,
            "tool name '' must be",
        ),
        (
            "empty tool name in /agent history",
            "POST",
            "/agent",
            {
                "query": "x",
                "toolkit": "weather",
                "history": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "", "decision": "caller"},
                    {"role": "caller", "tool_name": "", "arguments": {}},
                ],
            },
            400,
            5,
            "history",
        ),
        (
            "file $ref",
            "POST",
            "/v1/chat/completions",
            chat(tools=[tool({"properties": {"a": {"$ref": "file:///etc/passwd"}}})]),
            400,
            5,
            "only references inside the schema",
        ),
        (
            "http $ref",
            "POST",
            "/v1/chat/completions",
            chat(tools=[tool({"properties": {"a": {"$ref": f"{url_base}/schema.json"}}})]),
            400,
            5,
            "only references inside the schema",
        ),
        (
            "http $ref on /agent",
            "POST",
            "/agent",
            {"query": "x", "tools": [tool({"$ref": f"{url_base}/a.json"})]},
            400,
            5,
            "only references inside the schema",
        ),
        (
            "catastrophic pattern",
            "POST",
            "/v1/chat/completions",
            chat(tools=[tool({"properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}})]),
            400,
            5,
            "regular expressions",
        ),
        (
            "oversized schema",
            "POST",
            "/v1/chat/completions",
            chat(tools=[tool({"description": "x" * 20_000})]),
            400,
            5,
            "bytes of JSON",
        ),
        (
            "840 KB of valid schemas",
            "POST",
            "/v1/chat/completions",
            chat(tools=big_tools(), tool_choice={"type": "function", "function": {"name": "missing"}}),
            400,
            30,
            "tool_choice names 'missing'",
        ),
        (
            "a toolkit that computes for ever",
            "POST",
            "/agent",
            {"query": "x", "toolkit": "hostile", "toolkit_config": {"spin_s": 3600}},
            400,
            15,
            "could not be built",
        ),
    ]


def tree(proc: subprocess.Popen) -> list[psutil.Process]:
    root = psutil.Process(proc.pid)
    return [root, *root.children(recursive=True)]


def counts(proc: subprocess.Popen) -> tuple[int, int]:
    members = tree(proc)
    return len(members), sum(p.num_threads() for p in members)


def run_cases(url: str, listener_url: str) -> list[str]:
    """Every case once, /health polled meanwhile; the problems found (empty: all well)."""
    problems: list[str] = []
    slow_health: list[float] = []
    health_times: list[float] = []
    stop = threading.Event()

    def poll_health() -> None:
        with httpx.Client(timeout=5) as h:
            while not stop.is_set():
                started = time.monotonic()
                r = h.get(f"{url}/health")
                took = time.monotonic() - started
                health_times.append(took)
                if r.status_code != 200 or took > 0.1:
                    slow_health.append(took)
                time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with httpx.Client(base_url=url) as client:
            for name, method, path, body, status, deadline, message in cases(listener_url):
                started = time.monotonic()
                kwargs = {"json": body} if isinstance(body, dict) else {"content": body, "headers": JSON}
                r = client.request(method, path, timeout=deadline + 5, **kwargs)
                took = time.monotonic() - started
                try:
                    error = r.json()["error"]
                except (ValueError, KeyError, TypeError):
                    problems.append(f"{name}: not the OpenAI error shape: {r.status_code} {r.text[:200]}")
                    continue
                if (
                    r.status_code != status
                    or message not in error["message"]
                    or set(error) != {"message", "type", "param", "code"}
                ):
                    problems.append(f"{name}: {r.status_code} {error}")
                if took > deadline:
                    problems.append(f"{name}: took {took:.1f} s, over its {deadline} s")
    finally:
        stop.set()
        poller.join()
    print(
        f"/health: n={len(health_times)}, max {max(health_times) * 1000:.1f} ms, "
        f"median {sorted(health_times)[len(health_times) // 2] * 1000:.1f} ms"
    )
    if slow_health:
        problems.append(f"/health over 100 ms (or not 200) {len(slow_health)} times, worst {max(slow_health):.3f} s")
    return problems


def test_hostile_requests_get_their_4xx_and_leave_the_service_as_it_was(service, listener):
    proc, url, log_path = service
    listener_url, seen = listener
    # a schema whose references resolve against a remote base ($id, $schema) is accepted, and fetches nothing
    remote_base = {
        "$schema": f"{listener_url}/meta.json",
        "$id": f"{listener_url}/root/",
        "type": "object",
        "properties": {"city": {"$ref": "#/$defs/city"}},
        "$defs": {"city": {"type": "string"}},
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=chat(tools=[tool(remote_base, "get_weather")]), timeout=60)
    assert r.status_code == 200, r.text

    assert run_cases(url, listener_url) == []  # the first round also starts the threads a round needs
    time.sleep(1)
    before = counts(proc)
    assert run_cases(url, listener_url) == []
    time.sleep(1)
    after = counts(proc)
    assert after == before, f"(processes, threads) before {before}, after {after}"
    print(f"(processes, threads) before and after a round of {len(cases(listener_url))} cases: {before}")
    assert seen == [], f"the listener was asked for {seen}"
    assert "Traceback" not in log_path.read_text()


def test_sigterm_ends_every_process_within_10_s_while_a_tool_computes(service):
    proc, url, _ = service
    members = tree(proc)
    assert len(members) >= 3  # umi deploy serve, bentoml's arbiter, its worker (and tool workers)
    pending = threading.Thread(
        target=lambda: httpx.post(
            f"{url}/agent", json={"query": "x", "toolkit": "hostile", "toolkit_config": {"spin_s": 3600}}, timeout=30
        ),
        daemon=True,
    )
    pending.start()
    time.sleep(1.0)  # the factory is computing in its worker now
    members = tree(proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in members):
        alive = [f"{p.pid} {p.name()}" for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert time.monotonic() - sent < 10, f"still running 10 s after SIGTERM: {alive}"
        time.sleep(0.1)
    print(f"every process ({len(members)}) gone {time.monotonic() - sent:.1f} s after SIGTERM")
    proc.wait(timeout=5)
