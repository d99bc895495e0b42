"""The tool sandbox: each episode's toolkit in a worker process with CPU-time, memory and wall-time limits, killed and
replaced when a call is stopped; no state between episodes; nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from serve_tools import hostile_toolkit, weather_toolkit

from umi.inference.deadlines import Deadline, RequestCancelled, RequestTimeout
from umi.serve.sandbox import SandboxLimits, ToolSandbox
from umi.serve.toolkits import BFCLFactory, ToolkitError, default_toolkits

HERE = Path(__file__).resolve().parent


@pytest.fixture
def sandbox():
    box = ToolSandbox(SandboxLimits(wall_s=3.0, cpu_s=1.0, memory_mb=512, max_workers=4))
    box.warm(wait=True)
    yield box
    box.close()
    assert box.processes == []


def test_a_call_past_its_cpu_time_is_ended_by_the_kernel_and_the_toolkit_restarted():
    sandbox = ToolSandbox(SandboxLimits(wall_s=60.0, cpu_s=1.0, memory_mb=512))
    runtime = sandbox.open(hostile_toolkit, {})
    try:
        pid = runtime._worker.proc.pid
        started = time.monotonic()
        obs = runtime.dispatch("spin", {"seconds": 3600})
        assert not obs.ok and obs.error_kind == "timeout"
        assert obs.text == "Error: spin was stopped: it ran past its CPU-time limit", obs.text
        assert time.monotonic() - started < 30  # the 1 s CPU limit (on a shared machine), not the 60 s wall limit
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        again = runtime.dispatch("get_weather", {"city": "Rome"})
        assert again.ok and "restarted from its initial state" in again.text and runtime.restarts == 1
    finally:
        runtime.close()
        sandbox.close()


def test_a_call_past_its_wall_time_is_killed(sandbox):
    runtime = sandbox.open(weather_toolkit, {})
    try:
        started = time.monotonic()
        obs = runtime.dispatch("slow_lookup", {"seconds": 30})  # sleeping: no CPU, only the wall limit ends it
        assert obs.text == "Error: slow_lookup did not finish within 3 s" and time.monotonic() - started < 4.5
    finally:
        runtime.close()


def test_a_call_past_its_memory_is_an_error_observation(sandbox):
    runtime = sandbox.open(hostile_toolkit, {})
    try:
        obs = runtime.dispatch("hog", {"mb": 4096})
        assert not obs.ok and "memory" in obs.text.lower(), obs.text
        assert runtime.dispatch("get_weather", {"city": "Oslo"}).ok  # the worker lives on
    finally:
        runtime.close()


def test_a_factory_that_spins_is_stopped_and_reported(sandbox):
    with pytest.raises(Exception, match="could not be built: it (ran past its CPU-time limit|did not finish in time)"):
        sandbox.open(hostile_toolkit, {"spin_s": 3600})


def test_the_request_deadline_and_the_client_hold_inside_a_tool_call(sandbox):
    runtime = sandbox.open(weather_toolkit, {}, deadline=Deadline(0.5))
    started = time.monotonic()
    with pytest.raises(RequestTimeout, match="in a tool call"):
        runtime.dispatch("slow_lookup", {"seconds": 30})
    assert time.monotonic() - started < 1.0
    runtime.close()

    deadline = Deadline(60)
    runtime = sandbox.open(weather_toolkit, {}, deadline=deadline)
    threading.Timer(0.3, deadline.cancel).start()
    started = time.monotonic()
    with pytest.raises(RequestCancelled):
        runtime.dispatch("slow_lookup", {"seconds": 30})
    assert time.monotonic() - started < 1.0
    runtime.close()


def test_no_state_passes_between_calls_or_episodes(sandbox):
    """MathAPI.logarithm sets mpmath's precision for its whole process: the next call starts from the default."""
    runtime = sandbox.open(BFCLFactory(), {"classes": ["MathAPI"]})
    try:
        precise = runtime.dispatch("logarithm", {"value": 10, "base": 3, "precision": 60})
        assert precise.ok and len(precise.text) > 60
        plain = runtime.dispatch("divide", {"a": 1, "b": 3})
        assert plain.ok and json.loads(plain.text) == {"result": round(1 / 3, 2)} or "0.333" in plain.text
        huge = runtime.dispatch("power", {"base": 10, "exponent": 10**9})
        assert huge.error_kind == "invalid_arguments" and "maximum of 1000" in huge.text
        worker = runtime._worker.proc.pid
    finally:
        runtime.close()
    other = sandbox.open(BFCLFactory(), {"classes": ["MathAPI"]})
    try:
        assert other._worker.proc.pid != worker  # an episode never shares a process
    finally:
        other.close()


def test_a_toolkit_config_it_refuses_is_a_toolkit_error_naming_it():
    toolkits = default_toolkits(2.0, "weather=serve_tools:weather_toolkit")
    try:
        with pytest.raises(ToolkitError, match="toolkit 'weather': unit must be C or F"):
            toolkits.create("weather", {"unit": "K"})
        with pytest.raises(ToolkitError, match="toolkit 'bfcl': unknown or unsupported BFCL class 'Shell'"):
            toolkits.create("bfcl", {"classes": ["Shell"]})
        with pytest.raises(ValueError, match="must be importable by a worker process"):
            toolkits.register("local", lambda config: None)
    finally:
        toolkits.close()


def test_many_episodes_leave_no_threads_or_processes_behind(sandbox):
    def episode():
        runtime = sandbox.open(weather_toolkit, {})
        try:
            assert runtime.dispatch("get_weather", {"city": "Rome"}).ok
            runtime.dispatch("slow_lookup", {"seconds": 10 if n % 3 == 0 else 0})
        finally:
            runtime.close()

    n = 0
    episode()
    sandbox.warm(wait=True)
    threads, children = threading.active_count(), len(psutil.Process().children(recursive=True))
    for n in range(1, 7):
        episode()
    sandbox.warm(wait=True)
    assert threading.active_count() == threads
    assert len(psutil.Process().children(recursive=True)) == children
    assert len(sandbox.processes) == sandbox.limits.spares  # the spare, and no episode's worker left


def test_workers_die_with_the_server_process_even_when_it_is_killed():
    """SIGKILL leaves no atexit to run: the workers' parent-death signal ends them."""
    script = (
        "import sys, time\n"
        "from serve_tools import hostile_toolkit\n"
        "from umi.serve.sandbox import SandboxLimits, ToolSandbox\n"
        "box = ToolSandbox(SandboxLimits(wall_s=600, cpu_s=600))\n"
        "box.warm(wait=True)\n"
        "rt = box.open(hostile_toolkit, {})\n"
        "box.warm(wait=True)\n"  # the spare that replaces the one the episode took (started in the background)
        "print(' '.join(map(str, box.processes)), flush=True)\n"
        "rt.dispatch('spin', {'seconds': 3600})\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2  # the episode's worker and the spare
        time.sleep(0.5)  # the episode's worker is computing now
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            assert time.monotonic() < deadline, "a tool worker outlived its server"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
