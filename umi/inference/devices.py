"""Where and in what precision models run for inference: one rule for evaluation, `umi chat` and the service, so the
served model is the evaluated one.

- device (`inference_device`): the CUDA GPU when there is one, else the CPU;
- dtype (`inference_dtype`): bfloat16 where the device computes in it natively (a CUDA GPU with bf16; a CPU with
  AVX512-BF16 or AMX whose AVX-512 kernels torch uses, `cpu_has_native_bf16`), else float32: emulated bf16 is slower
  than float32, and float16 on a CPU is slower still. Training's precision rule (umi.train.precision) asks the CPU
  the same question.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["DTYPE_NAMES", "DtypeName", "cpu_has_native_bf16", "inference_device", "inference_dtype"]

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPE_NAMES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles) and torch dispatches to its AVX-512
    kernels: with those capped (ATEN_CPU_CAPABILITY=avx2, as for portable numerics, docs/training.md), torch 2.13's
    bf16 attention fails on such a CPU ("pack_vnni2 is only supported when avx512 is supported"), so it is float32."""
    import torch

    try:  # private but long-standing helpers; a torch without them gets float32
        hardware = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover
        return False
    return hardware and torch.backends.cpu.get_cpu_capability() == "AVX512"


def inference_device() -> str:
    """cuda when a CUDA GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def inference_dtype(device: str | None = None, name: str = "auto"):
    """The torch dtype to run on `device` (default: inference_device()). `name` forces one (float32, bfloat16,
    float16); auto is the rule of the module doc."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    if name != "auto":
        return getattr(torch, name)
    device = device or inference_device()
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32  # mps and others: float32, the one dtype every kernel has
