"""Service load: N concurrent clients against a local agent service for a bounded time; throughput, latency, errors.

    .venv/bin/python benchmarks/service_load.py --serve tiny [--clients 8] [--seconds 30]
    .venv/bin/python benchmarks/service_load.py --serve artifacts/backbone --clients 4 --seconds 60
    .venv/bin/python benchmarks/service_load.py --url http://127.0.0.1:3000 --clients 8 --seconds 30
    .venv/bin/python benchmarks/service_load.py --serve artifacts/backbone --compare [--requests-per-client 2]

--serve starts `bentoml serve umi.serve.service:UmiAgent` on a free 127.0.0.1 port over one checkpoint directory in
all three roles (`tiny`: a tiny random Llama built in code), waits for /readyz, runs the load and stops the server;
--url targets a server that is already running.

Each client loops until --seconds have passed (requests in flight then are finished and counted), alternating
  - POST /agent: "What is 2 + 40?" with BFCL's MathAPI toolkit, executed server-side, up to --max-steps planner turns;
  - POST /v1/chat/completions: one turn with two tool schemas (the client would run the tool).
Every role generation is capped at --max-new-tokens. An untrained model rarely finishes an episode early, so /agent
requests mostly run all their steps: the figures measure the serving path (validation, the α-UMi loop, queuing on
the model lock, tools), not answer quality.

--compare (with --serve): the same bounded run twice, each on a fresh server: batching off (UMI_SERVE_MAX_BATCH=1,
every generation alone) and on (UMI_SERVE_MAX_BATCH=--max-batch); prints each run's requests/s, p50 and p99 and last
the line `batching speed-up: N.NNx` (requests/s on / off). Bounded by requests (--requests-per-client, so both runs
do the same work; greedy decoding makes it the same requests) or, without it, by --seconds. Goal (issue 12): >= 3x
with p99 no worse and 0 errors.

Reports: requests, throughput (requests/s), p50 / p99 latency per endpoint and overall, generated tokens/s, and every
error (non-2xx status or transport failure) by kind. Goal (issue 6): no errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console()

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(root: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.support.tiny import make_tiny_backbone

    texts = [json.dumps(ADD), json.dumps(WEATHER), "user: What is 2 + 40?</s>assistant: I should add them."] * 4
    return make_tiny_backbone(root / "tiny", texts=texts)


def start_server(
    model: Path, tokens: int, tmp: Path, max_batch: int | None = None, request_timeout: float | None = None
) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMI_SERVE_")}
    if request_timeout is not None:
        env["UMI_SERVE_REQUEST_TIMEOUT_S"] = str(request_timeout)
    if max_batch is not None:
        env["UMI_SERVE_MAX_BATCH"] = str(max_batch)
    env.update({f"UMI_SERVE_{r}_DIR": str(model.resolve()) for r in ("PLANNER", "CALLER", "SUMMARIZER")})
    env.update({f"UMI_SERVE_{r}_TOKENS": str(tokens) for r in ("PLANNER", "CALLER", "SUMMARIZER")})
    env.update(
        UMI_SERVE_MAX_NEW_TOKENS=str(max(tokens, 64)), BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(tmp / "bentoml")
    )
    log_path = tmp / f"serve-{port}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "umi.serve.service:UmiAgent",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with console.status(f"starting bentoml serve on {url} ({model})"):
        while True:
            if proc.poll() is not None:
                raise SystemExit("bentoml serve exited:\n" + log_path.read_text()[-3000:])
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > 300:
                proc.kill()
                raise SystemExit("not ready in 300 s:\n" + log_path.read_text()[-3000:])
            time.sleep(0.5)
    console.print(f"server ready in {time.monotonic() - started:.1f} s")
    return proc, url, log_path


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return -9


class Load:
    def __init__(
        self,
        url: str,
        seconds: float,
        max_steps: int,
        tokens: int,
        timeout: float,
        requests_per_client: int | None = None,
    ):
        self.url, self.seconds, self.max_steps, self.tokens, self.timeout = url, seconds, max_steps, tokens, timeout
        self.requests_per_client = requests_per_client
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {"agent": [], "chat": []}
        self.errors: Counter[str] = Counter()
        self.new_tokens = 0
        self.stop_at = 0.0

    def agent(self, http: httpx.Client) -> int:
        r = http.post(
            f"{self.url}/agent",
            json={
                "query": "What is 2 + 40?",
                "toolkit": "bfcl",
                "toolkit_config": {"classes": ["MathAPI"]},
                "max_steps": self.max_steps,
                "max_new_tokens": {r: self.tokens for r in ("planner", "caller", "summarizer")},
            },
        )
        r.raise_for_status()
        return sum(g["new_tokens"] for g in r.json()["trajectory"]["meta"]["generations"])

    def chat(self, http: httpx.Client) -> int:
        r = http.post(
            f"{self.url}/v1/chat/completions",
            json={
                "model": "umi-agent",
                "tools": [ADD, WEATHER],
                "max_tokens": self.tokens,
                "messages": [{"role": "user", "content": "What is the weather in Rome?"}],
            },
        )
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    def client(self, index: int) -> None:
        kinds = ("agent", "chat") if index % 2 == 0 else ("chat", "agent")
        n = 0
        with httpx.Client(timeout=self.timeout) as http:
            while n < self.requests_per_client if self.requests_per_client else time.monotonic() < self.stop_at:
                kind = kinds[n % 2]
                n += 1
                started = time.monotonic()
                try:
                    tokens = self.agent(http) if kind == "agent" else self.chat(http)
                except httpx.HTTPStatusError as e:
                    with self.lock:
                        self.errors[f"{kind}: HTTP {e.response.status_code} {e.response.text[:120]}"] += 1
                    continue
                except (httpx.HTTPError, KeyError, ValueError) as e:
                    with self.lock:
                        self.errors[f"{kind}: {type(e).__name__}: {str(e)[:120]}"] += 1
                    continue
                with self.lock:
                    self.latencies[kind].append(time.monotonic() - started)
                    self.new_tokens += tokens

    def run(self, clients: int) -> float:
        self.stop_at = time.monotonic() + self.seconds
        started = time.monotonic()
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console, transient=True
        ) as progress:
            total = clients * self.requests_per_client if self.requests_per_client else self.seconds
            task = progress.add_task(f"{clients} clients", total=total)
            while any(t.is_alive() for t in threads):
                elapsed = time.monotonic() - started
                done = sum(len(v) for v in self.latencies.values())
                progress.update(
                    task,
                    completed=done + sum(self.errors.values())
                    if self.requests_per_client
                    else min(elapsed, self.seconds),
                    description=f"{clients} clients, {done} done, {sum(self.errors.values())} errors",
                )
                time.sleep(0.25)
        return time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def measure(args, url: str, label: str) -> dict:
    """One bounded load run against `url`: its table, its figures."""
    load = Load(url, args.seconds, args.max_steps, args.max_new_tokens, args.timeout, args.requests_per_client)
    wall = load.run(args.clients)
    every = [x for v in load.latencies.values() for x in v]
    errors = sum(load.errors.values())
    table = Table(
        "endpoint", "requests", "p50 s", "p99 s", "mean s", title=f"{label}: {args.clients} clients, {wall:.1f} s"
    )
    for kind, values in [*load.latencies.items(), ("all", every)]:
        table.add_row(
            kind,
            str(len(values)),
            f"{percentile(values, 50):.3f}",
            f"{percentile(values, 99):.3f}",
            f"{statistics.fmean(values):.3f}" if values else "-",
        )
    console.print(table)
    figures = {
        "label": label,
        "url": url,
        "serve": args.serve,
        "clients": args.clients,
        "seconds": args.seconds,
        "requests_per_client": args.requests_per_client,
        "wall_seconds": wall,
        "max_steps": args.max_steps,
        "max_new_tokens": args.max_new_tokens,
        "requests": len(every),
        "throughput_rps": len(every) / wall,
        "generated_tokens_per_s": load.new_tokens / wall,
        "p50_s": percentile(every, 50),
        "p99_s": percentile(every, 99),
        "per_endpoint": {
            k: {"requests": len(v), "p50_s": percentile(v, 50), "p99_s": percentile(v, 99)}
            for k, v in load.latencies.items()
        },
        "errors": errors,
        "error_kinds": dict(load.errors),
    }
    console.print(
        f"{label}: throughput {figures['throughput_rps']:.3f} requests/s (n={len(every)}), "
        f"{figures['generated_tokens_per_s']:.0f} generated tokens/s, p50 {figures['p50_s']:.3f} s, "
        f"p99 {figures['p99_s']:.3f} s, errors {errors}",
        highlight=False,
    )
    for kind, n in load.errors.most_common(10):
        console.print(f"  [red]{n}x[/] {kind}", highlight=False)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service")
    where.add_argument("--serve", help="'tiny' or a checkpoint directory to serve in all three roles")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--requests-per-client", type=int, help="bound each client by requests instead of seconds")
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900, help="client-side timeout per request")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=600,
        help="the served UMI_SERVE_REQUEST_TIMEOUT_S (--serve): 8 clients queue long without batching",
    )
    parser.add_argument("--compare", action="store_true", help="batching off, then on, on fresh servers (--serve)")
    parser.add_argument("--max-batch", type=int, default=8, help="UMI_SERVE_MAX_BATCH of the batching-on run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.compare and not args.serve:
        parser.error("--compare starts its own servers: give --serve")

    runs = (
        [("batching off", 1), (f"batching on (max batch {args.max_batch})", args.max_batch)]
        if args.compare
        else [("service", None)]
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="umi-load-") as tmp:
        model = None
        if args.serve:
            model = tiny_model(Path(tmp)) if args.serve == "tiny" else Path(args.serve)
        for label, max_batch in runs:
            proc = None
            if model is not None:
                proc, url, log_path = start_server(
                    model, args.max_new_tokens, Path(tmp), max_batch, args.request_timeout
                )
            else:
                url = args.url.rstrip("/")
            try:
                figures = measure(args, url, label)
            finally:
                exit_code = stop_server(proc) if proc is not None else None
                if exit_code not in (None, 0):
                    console.print(f"[red]bentoml serve exited with {exit_code}[/]\n" + log_path.read_text()[-2000:])
            figures["server_exit"] = exit_code
            figures["max_batch"] = max_batch
            results.append(figures)

    bad = any(f["errors"] or not f["requests"] for f in results)
    out: dict = results[0] if not args.compare else {"off": results[0], "on": results[1]}
    if args.compare:
        off, on = results
        speedup = on["throughput_rps"] / off["throughput_rps"] if off["throughput_rps"] else float("nan")
        out["speedup"] = speedup
        for f in results:
            console.print(
                f"{f['label']}: {f['throughput_rps']:.3f} requests/s, p50 {f['p50_s']:.2f} s, "
                f"p99 {f['p99_s']:.2f} s, n={f['requests']}, errors {f['errors']}",
                highlight=False,
            )
        console.print(f"batching speed-up: {speedup:.2f}x", highlight=False)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
