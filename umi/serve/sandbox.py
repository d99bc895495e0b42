"""Server-side tools in worker processes: one process per episode, with CPU-time, memory and wall-time limits.

A tool is code the service runs on arguments a model wrote from a stranger's query: `MathAPI.power` with a huge
exponent computes for minutes, holding the GIL, and no Python thread can be stopped. So each episode's toolkit lives
in a process of its own, and:

- the process's address space is capped (RLIMIT_AS: a runaway allocation is a MemoryError there, not here);
- before each call its CPU-time soft limit is set to what it has used plus `cpu_s` (RLIMIT_CPU: past it the kernel
  ends the process with SIGXCPU);
- the parent waits no longer than `wall_s`, the request's deadline, or the client's presence allow, then kills it;
- it dies with the server: PR_SET_PDEATHSIG (the signal follows the *thread* that started the process, so every
  process is started by one long-lived thread, `_Spawner`), an atexit hook, and the app's shutdown all kill it.

A call that is stopped kills its process; the episode's next call gets a fresh process with the toolkit rebuilt from
its initial config, and the observation of the stopped call says so. An episode never shares a process with another,
so no state (a toolkit's instances, mpmath's precision, module globals) passes between episodes. One spare process
is kept started (its imports done) so an episode does not wait for an interpreter to start.

Protocol: pickled tuples over two pipes (multiprocessing.connection): ("open", factory, config) -> specs,
("call", name, arguments) -> (ok, text, tool_name, error_kind). The child's stdout is redirected to its stderr, so
nothing a tool prints can corrupt the protocol.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from umi.inference.deadlines import Deadline, RequestCancelled, RequestTimeout
from umi.schema import ToolSpec
from umi.tools.registry import Observation

log = logging.getLogger(__name__)

__all__ = ["SandboxBusy", "SandboxError", "SandboxLimits", "SandboxedRuntime", "ToolSandbox"]

POLL_S = 0.05  # how often a waiting call looks at its deadline and its client
START_TIMEOUT_S = 60.0  # an interpreter starting, its imports done
OPEN_MIN_S = 5.0  # building a toolkit gets at least this long, however short a call's wall-time limit


class SandboxError(Exception):
    """A toolkit that could not be built in its worker (the message is the factory's own)."""


class SandboxBusy(Exception):
    """Every tool worker is in use and none freed up in time."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0  # one call, wall time
    cpu_s: float = 10.0  # one call, CPU time
    memory_mb: int = 2048  # the worker's address space
    max_workers: int = 8  # episodes with server-side tools at once
    spares: int = 1  # workers kept started, imports done
    preload: tuple[str, ...] = ("umi.tools.bfcl",)  # imported by a spare before it is handed out


class _Stopped(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _describe_exit(returncode: int | None) -> str:
    if returncode == -signal.SIGXCPU:
        return "it ran past its CPU-time limit"
    if returncode is not None and returncode < 0:
        return f"its worker was ended by {signal.Signals(-returncode).name}"
    return f"its worker exited ({returncode})"


class _Worker:
    """One child process and its two pipes; used by one thread at a time."""

    def __init__(self, limits: SandboxLimits):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        spec = json.dumps({**asdict(limits), "parent": os.getpid(), "read_fd": to_child_r, "write_fd": from_child_w})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from umi.serve.sandbox import _child_main; _child_main()", spec],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.recv_conn = Connection(from_child_r, writable=False)
        self.ready = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        self.request(None, timeout, None)
        self.ready = True

    def request(self, message: tuple | None, timeout: float, deadline: Deadline | None) -> Any:
        """Send `message` (None: only wait for the greeting) and wait for the reply; _Stopped, with the process
        killed, if it does not come within `timeout`, the deadline, or while the client is there."""
        if message is not None:
            try:
                self.send_conn.send(message)
            except (OSError, ValueError) as e:
                self.kill()
                raise _Stopped(f"its worker could not be reached ({e})") from None
            except (pickle.PicklingError, AttributeError, TypeError) as e:
                raise SandboxError(
                    f"it cannot be sent to a worker process ({e}): a toolkit factory must be a "
                    "module-level function or class"
                ) from None
        until = time.monotonic() + timeout
        while True:
            if deadline is not None and deadline.cancelled:
                self.kill()
                raise RequestCancelled("the client went away during a tool call")
            if deadline is not None and deadline.remaining <= 0:
                self.kill()
                raise RequestTimeout(f"the request ran past its time limit of {deadline.seconds:g} s in a tool call")
            left = until - time.monotonic()
            if left <= 0:
                self.kill()
                raise _Stopped("timeout")
            try:
                if self.recv_conn.poll(min(POLL_S, left)):
                    kind, payload = self.recv_conn.recv()
                    if kind == "error":
                        raise SandboxError(payload)
                    return payload
            except (EOFError, OSError):
                self.proc.wait(timeout=5)
                reason = _describe_exit(self.proc.returncode)
                self.kill()
                raise _Stopped(reason) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)  # reaped: no zombie left behind
        except subprocess.TimeoutExpired:  # pragma: no cover - a process in uninterruptible sleep
            log.warning("tool worker %d did not exit after SIGKILL", self.proc.pid)
        for conn in (self.send_conn, self.recv_conn):
            try:
                conn.close()
            except OSError:
                pass


class _Spawner:
    """The one thread that starts worker processes (PR_SET_PDEATHSIG follows the starting thread), and keeps the
    spares topped up."""

    def __init__(self, sandbox: "ToolSandbox"):
        self._sandbox = weakref.ref(sandbox)
        self._queue: queue.Queue[Future | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="umi-tool-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            sandbox = self._sandbox()
            if sandbox is None:
                return
            try:
                job.set_result(sandbox._start_worker())
            except BaseException as e:  # noqa: BLE001 -- reported to whoever waits for this worker
                job.set_exception(e)

    def start(self) -> Future:
        job: Future = Future()
        self._queue.put(job)
        return job

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


class ToolSandbox:
    """Worker processes for server-side toolkits (see the module doc)."""

    def __init__(self, limits: SandboxLimits = SandboxLimits()):
        self.limits = limits
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(limits.max_workers)
        self._spares: list[_Worker] = []
        self._spare_ready = threading.Condition(self._lock)
        self._refilling = 0
        self._live: set[_Worker] = set()
        self._spawner: _Spawner | None = None
        self._closed = False
        atexit.register(self.close)

    # --- workers ------------------------------------------------------------------------------------------------------
    def _start_worker(self) -> _Worker:
        worker = _Worker(self.limits)
        with self._lock:
            self._live.add(worker)
        try:
            worker.wait_ready(START_TIMEOUT_S)
        except BaseException:
            self._discard(worker)
            raise
        return worker

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._live.discard(worker)

    def _spawn(self) -> Future:
        with self._lock:
            if self._closed:
                raise SandboxError("the service is shutting down")
            if self._spawner is None:
                self._spawner = _Spawner(self)
            return self._spawner.start()

    def _refill(self) -> None:
        with self._lock:
            missing = self.limits.spares - len(self._spares) - self._refilling
            self._refilling += max(missing, 0)
        for _ in range(max(missing, 0)):
            job = self._spawn()
            job.add_done_callback(self._add_spare)

    def _add_spare(self, job: Future) -> None:
        with self._lock:
            self._refilling -= 1
            self._spare_ready.notify()
            if job.exception() is not None:
                if not self._closed:
                    log.warning("could not start a tool worker: %s", job.exception())
                return
            worker = job.result()
            if self._closed:
                closed = True
            else:
                closed = False
                self._spares.append(worker)
                self._spare_ready.notify()
        if closed:
            self._discard(worker)

    def _take(self, deadline: Deadline | None) -> _Worker:
        """A started worker: a spare, or the one being started (waited for), or a new one."""
        until = time.monotonic() + (START_TIMEOUT_S if deadline is None else max(deadline.remaining, 0.01))
        worker = None
        with self._lock:
            while worker is None:
                while self._spares and worker is None:
                    candidate = self._spares.pop()
                    if candidate.alive:
                        worker = candidate
                    else:
                        self._live.discard(candidate)
                left = until - time.monotonic()
                if worker is not None or not self._refilling or left <= 0 or self._closed:
                    break
                self._spare_ready.wait(left)
        self._refill()
        if worker is not None:
            return worker
        job = self._spawn()
        timeout = START_TIMEOUT_S if deadline is None else max(deadline.remaining, 0.01)
        try:
            return job.result(timeout=timeout)
        except FutureTimeout:
            with self._lock:
                self._refilling += 1
            job.add_done_callback(self._add_spare)  # started late: the next episode's
            if deadline is not None and deadline.remaining <= 0:
                raise RequestTimeout(
                    f"the request ran past its time limit of {deadline.seconds:g} s waiting for a tool worker"
                ) from None
            raise SandboxError("a tool worker did not start in time") from None

    def warm(self, wait: bool = False) -> None:
        """Start the spares now (the app's startup), not at the first episode; `wait`: until they are ready."""
        if self.limits.spares:
            self._refill()
        if wait:
            with self._lock:
                self._spare_ready.wait_for(lambda: not self._refilling, timeout=START_TIMEOUT_S)

    # --- episodes -----------------------------------------------------------------------------------------------------
    def open(
        self,
        factory: Callable[[Mapping[str, Any]], Any],
        config: Mapping[str, Any],
        *,
        deadline: Deadline | None = None,
    ) -> "SandboxedRuntime":
        """A runtime of `factory(config)` built in a worker of its own. SandboxError with the factory's message if it
        refuses the config; SandboxBusy if no worker frees up before the deadline."""
        wait = None if deadline is None else max(deadline.remaining, 0.0)
        if not self._slots.acquire(timeout=wait if wait is not None else -1):
            raise SandboxBusy(f"all {self.limits.max_workers} tool workers are busy")
        runtime = SandboxedRuntime(self, factory, dict(config), deadline)
        try:
            runtime._start()
        except BaseException:
            runtime.close()
            raise
        return runtime

    def close(self) -> None:
        """Kill every worker (the app's shutdown, and atexit)."""
        with self._lock:
            self._closed = True
            workers = list(self._live)
            self._spares.clear()
            spawner, self._spawner = self._spawner, None
        for worker in workers:
            self._discard(worker)
        if spawner is not None:
            spawner.stop()

    @property
    def processes(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._live if w.alive]


class SandboxedRuntime:
    """One episode's toolkit in its worker: `specs` and `dispatch`, which never raises for what a tool does (only
    RequestTimeout / RequestCancelled, for the request's deadline and its client)."""

    def __init__(self, sandbox: ToolSandbox, factory: Callable, config: dict[str, Any], deadline: Deadline | None):
        self._sandbox = sandbox
        self._factory = factory
        self._config = config
        self._deadline = deadline
        self._worker: _Worker | None = None
        self._closed = False
        self.specs: list[ToolSpec] = []
        self.restarts = 0

    def _start(self) -> None:
        worker = self._sandbox._take(self._deadline)
        self._worker = worker
        try:
            specs = worker.request(
                ("open", self._factory, self._config), max(self._sandbox.limits.wall_s, OPEN_MIN_S), self._deadline
            )
        except _Stopped as e:
            self._drop_worker()
            why = "it did not finish in time" if e.reason == "timeout" else e.reason
            raise SandboxError(f"the toolkit could not be built: {why}") from None
        except SandboxError:
            self._drop_worker()
            raise
        self.specs = [ToolSpec.model_validate(s) for s in specs]

    def _drop_worker(self) -> None:
        if self._worker is not None:
            self._sandbox._discard(self._worker)
            self._worker = None

    def dispatch(self, name: str, arguments: Mapping[str, Any] | None = None) -> Observation:
        limits = self._sandbox.limits
        restarted = ""
        if self._worker is None:  # the last call was stopped: a fresh worker, the toolkit from its initial config
            try:
                self._start()
            except (SandboxError, _Stopped) as e:
                return Observation.failure(name, "tool_error", f"Error: the toolkit could not be restarted: {e}")
            self.restarts += 1
            restarted = " (the toolkit was restarted from its initial state after the last call was stopped)"
        assert self._worker is not None
        try:
            ok, text, tool_name, kind = self._worker.request(
                ("call", name, dict(arguments or {})), limits.wall_s, self._deadline
            )
        except _Stopped as e:
            self._drop_worker()
            if e.reason == "timeout":
                return Observation.failure(name, "timeout", f"Error: {name} did not finish within {limits.wall_s:g} s")
            return Observation.failure(name, "timeout", f"Error: {name} was stopped: {e.reason}")
        except (RequestTimeout, RequestCancelled):
            self._drop_worker()
            raise
        except SandboxError as e:
            return Observation.failure(name, "tool_error", f"Error during execution: {e}")
        return Observation(ok=ok, text=text + restarted, tool_name=tool_name, error_kind=kind)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_worker()
        self._sandbox._slots.release()


# --- the child ----------------------------------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _reset_globals() -> None:
    """Process-wide numeric state a tool may change (MathAPI.logarithm sets mpmath's precision): defaults again."""
    mpmath = sys.modules.get("mpmath")
    if mpmath is not None:
        mpmath.mp.dps = 15
    import decimal

    decimal.setcontext(decimal.Context())


def _child_main() -> None:
    import resource

    spec = json.loads(sys.argv[1])
    _die_with_parent(spec["parent"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the server's to handle: it ends its workers
    out = Connection(spec["write_fd"], readable=False)
    inbox = Connection(spec["read_fd"], writable=False)
    os.dup2(2, 1)  # what a tool prints goes to stderr, not into the protocol
    memory = spec["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    import importlib

    for module in spec["preload"]:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    out.send(("ready", None))
    runtime = None
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            os._exit(0)
        kind = message[0]
        try:
            if kind in ("open", "call"):
                _reset_globals()
                used = resource.getrusage(resource.RUSAGE_SELF)
                soft = int(used.ru_utime + used.ru_stime + spec["cpu_s"]) + 1
                if cpu_hard != resource.RLIM_INFINITY:
                    soft = min(soft, cpu_hard)
                resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
            if kind == "open":
                _, factory, config = message
                runtime = factory(config)
                if not hasattr(runtime, "specs") or not callable(getattr(runtime, "dispatch", None)):
                    raise TypeError(f"its factory returned {type(runtime).__name__}, not a tool runtime")
                out.send(("ok", [s.model_dump() for s in runtime.specs]))
            elif kind == "call":
                _, name, arguments = message
                if runtime is None:
                    raise RuntimeError("no toolkit is open")
                obs = runtime.dispatch(name, arguments)
                text = str(getattr(obs, "text", obs))
                out.send(
                    (
                        "ok",
                        (
                            bool(getattr(obs, "ok", True)),
                            text,
                            str(getattr(obs, "tool_name", name)),
                            getattr(obs, "error_kind", None),
                        ),
                    )
                )
            else:
                raise ValueError(f"unknown message {kind!r}")
        except MemoryError:
            out.send(("error", "the tool ran out of its memory limit"))
        except Exception as e:  # noqa: BLE001 -- the factory's or the runtime's failure, reported to the parent
            out.send(("error", f"{type(e).__name__}: {e}" if kind != "open" else str(e)))
