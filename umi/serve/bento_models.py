"""The role models in the BentoML model store: what `umi deploy build` imports and the service loads.

Each role becomes the BentoML model `umi-<role>` (planner, caller, summarizer), a copy of its checkpoint directory,
labelled with where it came from so a running service can be traced back to its training:

    role, kind (checkpoint | lora-adapter), source (mlflow | directory), fingerprint (umi.vocabulary),
    mlflow_model, mlflow_version, mlflow_run_id (from the registry), data_version, stage (from umi_stage.json)

When the roles are LoRA adapters, their base is imported once as `umi-base`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umi.inference.loading import is_adapter_dir
from umi.prompts import checkpoint_prompt_format
from umi.vocabulary import ADAPTER_CONFIG, AGENT_ROLES, CHAMPION, STAGE_MANIFEST, checkpoint_fingerprint

__all__ = [
    "RoleSource",
    "BASE_MODEL",
    "bento_model_name",
    "import_role_models",
    "sources_from_dirs",
    "sources_from_registry",
]

BASE_MODEL = "umi-base"


def bento_model_name(role: str) -> str:
    return f"umi-{role}"


@dataclass
class RoleSource:
    role: str
    path: Path
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def _stage_labels(path: Path) -> dict[str, str]:
    manifest = path / STAGE_MANIFEST
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    labels = {key: str(data[key]) for key in ("stage", "data_version", "dataset_sha256") if data.get(key)}
    if data.get("run_id"):
        labels["mlflow_run_id"] = str(data["run_id"])
    return labels


def sources_from_dirs(dirs: Mapping[str, str | Path]) -> dict[str, RoleSource]:
    out = {}
    for role in AGENT_ROLES:
        if role not in dirs:
            raise ValueError(f"no directory for the {role}")
        path = Path(dirs[role])
        if not path.is_dir():
            raise ValueError(f"{role}: {path} is not a directory")
        labels = {"source": "directory", **_stage_labels(path)}
        out[role] = RoleSource(role, path, labels, {"path": str(path.resolve())})
    return out


def sources_from_registry(download_root: str | Path, alias_or_version: str | None = None) -> dict[str, RoleSource]:
    """Each role's version with `alias_or_version` (default: the champion) downloaded from the MLflow model registry
    (umi.registry.store)."""
    from umi.registry import store as registry
    from umi.registry.tags import TAG_DATA_VERSION, TAG_FINGERPRINT

    wanted = alias_or_version or CHAMPION
    out = {}
    for role in AGENT_ROLES:
        name = registry.MODEL_NAMES[role]
        try:
            version = registry.resolve(role, wanted)
        except LookupError as e:
            raise ValueError(f"{e} in the MLflow registry: promote one first, or give checkpoint directories") from None
        except Exception as e:  # the registered model itself does not exist
            if registry._is_not_found(e):
                raise ValueError(
                    f"the MLflow registry has no model {name}: register and promote one first, or give "
                    "checkpoint directories"
                ) from None
            raise
        path = Path(registry.download_role(role, Path(download_root) / role, str(version.version)))
        tags = dict(version.tags or {})
        labels = {
            **_stage_labels(path),
            "source": "mlflow",
            "mlflow_model": name,
            "mlflow_version": str(version.version),
            "mlflow_alias": wanted,
        }
        if version.run_id:
            labels["mlflow_run_id"] = str(version.run_id)
        if tags.get(TAG_DATA_VERSION):
            labels["data_version"] = tags[TAG_DATA_VERSION]
        if tags.get(TAG_FINGERPRINT):  # the registered checkpoint's, not the download's (new file times)
            labels["fingerprint"] = tags[TAG_FINGERPRINT]
        out[role] = RoleSource(role, path, labels, {"mlflow_source": version.source, "mlflow_tags": tags})
    return out


def store_weights_bf16(model_dir: str | Path) -> int:
    """Rewrite the float32 tensors of `model_dir`'s safetensors files in bfloat16, in place (atomically per file):
    half the image's weight bytes. The served model is then the bf16 rounding of the trained weights, which is what
    evaluation runs wherever bf16 is native (umi.inference's dtype rule). Returns the number of tensors cast."""
    import torch
    from safetensors.torch import load_file, save_file

    cast = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        tensors = load_file(str(f))
        if not any(t.dtype == torch.float32 for t in tensors.values()):
            continue
        out = {}
        for k, t in tensors.items():
            if t.dtype == torch.float32:
                out[k], cast = t.to(torch.bfloat16).contiguous(), cast + 1
            else:
                out[k] = t
        tmp = f.with_name(f.name + ".tmp")
        save_file(out, str(tmp), metadata={"format": "pt"})
        tmp.replace(f)
    config = Path(model_dir) / "config.json"
    if cast and config.is_file():
        data = json.loads(config.read_text())
        data["torch_dtype"] = data["dtype"] = "bfloat16"
        config.write_text(json.dumps(data, indent=2) + "\n")
    return cast


def _import(name: str, path: Path, labels: dict[str, str], metadata: dict[str, Any], store_bf16: bool = False):
    import bentoml

    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        shutil.copytree(path, model.path, dirs_exist_ok=True)
        if store_bf16:
            store_weights_bf16(model.path)
    return model


def import_role_models(
    sources: Mapping[str, RoleSource], base_dir: str | Path | None = None, store_dtype: str = "bfloat16"
) -> dict[str, Any]:
    """Import every role (and the adapters' base) into the BentoML model store: {role or "base": bentoml Model}.
    store_dtype "bfloat16" (default) stores full weights in bf16 (store_weights_bf16); "float32" keeps them as
    trained. Every role model is labelled with the prompt format it was trained with."""
    if store_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"store_dtype must be bfloat16 or float32, got {store_dtype!r}")
    bf16 = store_dtype == "bfloat16"
    adapters = [r for r in AGENT_ROLES if is_adapter_dir(sources[r].path)]
    if adapters and len(adapters) != len(AGENT_ROLES):
        raise ValueError(f"some roles are LoRA adapters ({adapters}) and some are not: import all of one kind")
    out: dict[str, Any] = {}
    if adapters:
        base = Path(base_dir) if base_dir else None
        if base is None:
            bases = {
                json.loads((sources[r].path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
                for r in AGENT_ROLES
            }
            if len(bases) != 1 or not bases or not Path(str(next(iter(bases)))).is_dir():
                raise ValueError(f"the adapters' base {sorted(map(str, bases))} is not one local directory: give it")
            base = Path(str(bases.pop()))
        out["base"] = _import(
            BASE_MODEL,
            base,
            {"kind": "base", "fingerprint": checkpoint_fingerprint(base)},
            {"path": str(base.resolve())},
            store_bf16=bf16,
        )
    for role in AGENT_ROLES:
        src = sources[role]
        labels = {
            "fingerprint": checkpoint_fingerprint(src.path),
            **src.labels,
            "role": role,
            "kind": "lora-adapter" if adapters else "checkpoint",
        }
        fmt = checkpoint_prompt_format(src.path)
        if fmt:
            labels["prompt_format"] = json.dumps(fmt, sort_keys=True, separators=(",", ":"))
        labels["stored_dtype"] = "float32" if adapters or not bf16 else "bfloat16"
        out[role] = _import(bento_model_name(role), src.path, labels, src.metadata, store_bf16=bf16 and not adapters)
    return out
