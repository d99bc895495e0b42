"""Where and in what precision models run for inference, and how role checkpoints are loaded for it.

One rule for evaluation, `umi chat` and the service, so the served model is the evaluated one:

- device (`inference_device`): the CUDA GPU when there is one, else the CPU;
- dtype (`inference_dtype`): bfloat16 where the device computes in it natively (a CUDA GPU with bf16; a CPU with
  AVX512-BF16 or AMX whose AVX-512 kernels torch uses), else float32: emulated bf16 is slower than float32, and
  float16 on a CPU is slower still;
- loading (`load_role_models`): {role: checkpoint directory} to {role: LoadedRole}. A directory named for several roles
  is loaded once and plays each of them; role directories that are LoRA adapters (an `adapter_config.json`, as peft
  saves them) on one base load that base once, the adapters attached to it under the role's name (the backend switches
  its adapter in before each generation, umi.backend);
- which checkpoints play which roles (`AgentSpec`), and the usual agents of the training layout (`default_agents`:
  `<runs>/<stage>/model`, umi.train.stages; any whose checkpoints are missing left out with a reason). Kind "multi":
  the α-UMi agent (the three role prompts; the untrained backbone runs zero-shot as a "multi" agent with the backbone
  in all three roles, the paper's one-stage ablation is three locals fine-tuned straight from the backbone); kind
  "single": the single-LLM baseline (the global prompt), e.g. the GLPFT global checkpoint alone.

This module imports nothing of agent, eval or serve: they all import it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from umi.devices import cpu_has_native_bf16
from umi.vocabulary import ADAPTER_CONFIG, AGENT_ROLES, ALPHA_UMI, SINGLE_LLM

log = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_CONFIG",
    "AgentKind",
    "AgentSpec",
    "DTYPE_NAMES",
    "DtypeName",
    "LoadedRole",
    "ROLES_OF",
    "cpu_has_native_bf16",
    "default_agents",
    "inference_device",
    "inference_dtype",
    "is_adapter_dir",
    "load_role_models",
]

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPE_NAMES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


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


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


@dataclass(frozen=True)
class LoadedRole:
    """A role's model as loaded: `model` is shared (the same object) by every role over the same weights; `adapter` is
    the name of the role's LoRA adapter inside it (None for a plain checkpoint)."""

    model: Any
    tokenizer: Any
    source: Path  # the checkpoint directory (the base's, for an adapter)
    adapter: str | None
    device: str
    dtype: Any


def _adapter_base(adapter_dirs: Mapping[str, Path], base_dir: Path | None) -> Path:
    if base_dir is not None:
        return Path(base_dir)
    bases = {
        json.loads((Path(p) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
        for p in adapter_dirs.values()
    }
    if len(bases) != 1:
        raise ValueError(f"the role adapters name different bases {sorted(bases)}: give the base directory explicitly")
    base = Path(bases.pop())
    if not base.is_dir():
        raise ValueError(f"the adapters' base {str(base)!r} is not a local directory: give the base directory")
    return base


def load_role_models(
    dirs: Mapping[str, str | Path],
    *,
    base_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str = "auto",
) -> dict[str, LoadedRole]:
    """{role: LoadedRole} for {role: checkpoint or LoRA adapter directory}; see the module doc for what is shared."""
    from umi.train.backbone import load_backbone

    device = device or inference_device()
    torch_dtype = inference_dtype(device, dtype)
    resolved = {role: Path(p).resolve() for role, p in dirs.items()}
    missing = sorted({str(p) for p in resolved.values() if not p.is_dir()})
    if missing:
        raise FileNotFoundError(f"no checkpoint directory at {', '.join(missing)}")
    adapters = {role: p for role, p in resolved.items() if is_adapter_dir(p)}
    out: dict[str, LoadedRole] = {}

    plain: dict[Path, tuple[Any, Any]] = {}
    for role, path in resolved.items():
        if role in adapters:
            continue
        if path not in plain:
            model, tokenizer = load_backbone(path, dtype=torch_dtype)
            plain[path] = (model.to(device).eval(), tokenizer)
            log.info("loaded %s (%s on %s) for %s", path, str(torch_dtype).removeprefix("torch."), device, role)
        out[role] = LoadedRole(*plain[path], source=path, adapter=None, device=device, dtype=torch_dtype)

    if adapters:
        from peft import PeftModel

        base = _adapter_base(adapters, Path(base_dir) if base_dir else None)
        model, tokenizer = load_backbone(base, dtype=torch_dtype)
        names: dict[Path, str] = {}
        peft_model = None
        for role, path in adapters.items():
            if path in names:
                continue
            names[path] = role
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=role)
            else:
                peft_model.load_adapter(str(path), adapter_name=role)
        assert peft_model is not None
        peft_model = peft_model.to(device).eval()
        for role, path in adapters.items():
            out[role] = LoadedRole(
                peft_model, tokenizer, source=base.resolve(), adapter=names[path], device=device, dtype=torch_dtype
            )
        log.info("loaded base %s once for the adapters of %s", base, ", ".join(adapters))
    return out


# --- which checkpoints play which roles -------------------------------------------------------------------------------
AgentKind = Literal["multi", "single"]
ROLES_OF: dict[str, tuple[str, ...]] = {"multi": AGENT_ROLES, "single": ("global",)}


@dataclass(frozen=True)
class AgentSpec:
    """One agent: a name (for a report, a chat session) and its checkpoint directories.

    multi: `planner`, `caller`, `summarizer` (the same directory may fill several roles); single: `model`."""

    name: str
    kind: AgentKind
    planner: str | None = None
    caller: str | None = None
    summarizer: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("an agent needs a name")
        if self.kind == "multi":
            missing = [r for r in AGENT_ROLES if not getattr(self, r)]
            if missing:
                raise ValueError(f"agent {self.name!r}: a multi agent needs {', '.join(missing)} checkpoint(s)")
            if self.model is not None:
                raise ValueError(f"agent {self.name!r}: a multi agent takes planner/caller/summarizer, not model")
        elif self.kind == "single":
            if not self.model:
                raise ValueError(f"agent {self.name!r}: a single agent needs a model checkpoint")
            if any(getattr(self, r) for r in AGENT_ROLES):
                raise ValueError(f"agent {self.name!r}: a single agent takes model, not role checkpoints")
        else:
            raise ValueError(f"agent {self.name!r}: kind must be 'multi' or 'single', got {self.kind!r}")

    @classmethod
    def multi(cls, name: str, planner: str | Path, caller: str | Path, summarizer: str | Path) -> "AgentSpec":
        return cls(name=name, kind="multi", planner=str(planner), caller=str(caller), summarizer=str(summarizer))

    @classmethod
    def single(cls, name: str, model: str | Path) -> "AgentSpec":
        return cls(name=name, kind="single", model=str(model))

    @property
    def roles(self) -> dict[str, str]:
        """role -> checkpoint directory (`global` for a single agent)."""
        if self.kind == "single":
            return {"global": str(self.model)}
        return {"planner": str(self.planner), "caller": str(self.caller), "summarizer": str(self.summarizer)}

    def missing_checkpoints(self) -> list[str]:
        """The checkpoint directories that do not exist (no config.json in them)."""
        return sorted({p for p in self.roles.values() if not (Path(p) / "config.json").is_file()})

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "kind": self.kind, **self.roles}

    def params(self) -> dict[str, str]:
        """The keyword arguments that make this spec again (None left out): a task input Prefect can hash and
        persist (the pipeline's evaluation cache key reads it)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def default_agents(
    runs: str | Path = "artifacts/runs",
    backbone: str | Path = "artifacts/backbone",
    one_stage_runs: str | Path | None = "artifacts/runs-one-stage",
) -> tuple[list[AgentSpec], dict[str, str]]:
    """The paper's comparison from the training layout: backbone (zero-shot, all three roles), single-LLM (the global
    checkpoint), α-UMi (the GLPFT locals), one-stage (locals trained from the backbone).

    Returns (the agents whose checkpoints exist, {left-out agent: why})."""
    runs = Path(runs)
    candidates = [
        AgentSpec.multi("backbone", backbone, backbone, backbone),
        AgentSpec.single(SINGLE_LLM, runs / "global" / "model"),
        AgentSpec.multi(ALPHA_UMI, *(runs / r / "model" for r in AGENT_ROLES)),
    ]
    if one_stage_runs is not None:
        one = Path(one_stage_runs)
        locals_ = (one / r / "model" for r in AGENT_ROLES)
        candidates.append(AgentSpec.multi("one-stage", *locals_))
    found, skipped = [], {}
    for spec in candidates:
        missing = spec.missing_checkpoints()
        if missing:
            skipped[spec.name] = f"no checkpoint at {', '.join(missing)}"
        else:
            found.append(spec)
    return found, skipped
