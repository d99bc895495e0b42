"""The machine the pipeline runs on: its GPUs and CPUs, how many training stages fit on it at once, the device slots
those stages take turns on, and the environment of the processes it starts. (Where and in what precision a model
runs for inference is umi.inference.devices.)"""

from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no torch / no driver: no GPU
        return 0


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_local_concurrency() -> int:
    """How many of the three local stages to train at once: one per GPU (at most three); on CPU one per 8 cores (a
    stage already uses every core it gets; below 8 cores two stages only contend) and per 8 GB of memory."""
    gpus = gpu_count()
    if gpus:
        return min(3, gpus)
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gb = 8.0
    return max(1, min(3, cpu_count() // 8, int(memory_gb // 8)))


_pools: dict[tuple, queue.Queue] = {}
_pools_lock = threading.Lock()


def device_pool(key: tuple, slots: int) -> queue.Queue:
    """One pool of device slots per key (a flow run and its concurrency): GPU ids when there are GPUs (round-robin
    when there are more slots than GPUs), else CPU slots (None) that split the cores evenly. Take a slot with get(),
    give it back with put()."""
    with _pools_lock:
        if key not in _pools:
            gpus = gpu_count()
            pool: queue.Queue = queue.Queue()
            for i in range(slots):
                pool.put(i % gpus if gpus else None)
            _pools[key] = pool
        return _pools[key]


def env_with_venv() -> dict[str, str]:
    """This environment with the interpreter's own bin directory first on PATH (dvc.yaml's commands are `umi ...`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
