"""The MLflow model registry of umi: one registered model per GLPFT role, `umi-global`, `umi-planner`, `umi-caller`,
`umi-summarizer`, and the alias `champion` on the version of each that the deployed agent uses.

How a checkpoint is stored: as the plain Hugging Face checkpoint directory (config.json, model.safetensors,
tokenizer files, umi_stage.json) in the artifact path `model/` of an MLflow run -- the training stage's own run
when it already logged it there (`log_model_artifact: true` in the profile), so the weights are not copied a second
time -- and a model version whose source is `runs:/<run_id>/model`. Not `mlflow.transformers.log_model`: that would
write a second full copy of the weights (about 520 MB per role for a 135M fp32 model), infer pip requirements and
wrap the model in a pyfunc flavour, while everything in umi (the agent runtime, the Bento) loads a role with
`from_pretrained` from a plain directory, which is exactly what `download_role` gives back.

Each version carries tags (their keys: umi.registry.tags): `umi.role`, `umi.data_version` (the DVC dataset hash the
stage trained on), `umi.config` (the training profile as JSON) and `umi.config_sha256`, `umi.fingerprint` (the stage
fingerprint: config + start weights + data; umi.vocabulary.checkpoint_fingerprint), `umi.prompt_format` (the doc
style, observation limit and prompt version it was trained on, JSON), and, once evaluated, `umi.evaluation` (JSON).
Registering the same checkpoint again returns the existing version (tags updated), so re-running a pipeline does not
pile up identical versions.

Works against any MLflow tracking URI (MLFLOW_TRACKING_URI), a sqlite store with a local artifact folder included.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from umi import prompts
from umi.registry.tags import (
    TAG_CONFIG,
    TAG_CONFIG_SHA,
    TAG_DATA_VERSION,
    TAG_EVALUATION,
    TAG_FINGERPRINT,
    TAG_PROFILE,
    TAG_PROMPT_FORMAT,
    TAG_ROLE,
)
from umi.vocabulary import CHAMPION, ROLES, STAGE_MANIFEST, checkpoint_fingerprint

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

MODEL_NAMES: dict[str, str] = {role: f"umi-{role}" for role in ROLES}
REGISTRY_EXPERIMENT = "umi-registry"  # runs created only to hold a checkpoint that no training run had logged
ARTIFACT_PATH = "model"
DOWNLOAD_MARKER = ".umi_model_version.json"  # what download_role put in a folder, so a second call can skip


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def artifact_root() -> str | None:
    """Where new experiments keep their artifacts: beside the database for a sqlite tracking URI (`mlruns/` next to
    `mlflow.db`, wherever the process runs from); None (MLflow's default) for any other store."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:///:memory:"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return None


def ensure_experiment(name: str) -> str:
    """The id of experiment `name`, created (artifacts per `artifact_root`) if it does not exist."""
    from mlflow.exceptions import MlflowException

    client = _client()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = artifact_root()
    try:
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    except MlflowException:  # created meanwhile by a concurrent process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _check_role(role: str) -> str:
    if role not in MODEL_NAMES:
        raise ValueError(f"unknown role {role!r}; one of {list(ROLES)}")
    return MODEL_NAMES[role]


def _is_not_found(error: Exception) -> bool:
    return getattr(error, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def check_checkpoint(checkpoint: str | Path) -> Path:
    """A directory `from_pretrained` can load: config.json and weights. Raises naming what is missing."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is not a directory")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"checkpoint {path} has no config.json (not a Hugging Face checkpoint directory)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise FileNotFoundError(f"checkpoint {path} has no weights (*.safetensors or *.bin)")
    return path


def _ensure_registered_model(name: str, role: str) -> None:
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if not _is_not_found(e):
            raise
        try:
            client.create_registered_model(
                name, tags={TAG_ROLE: role}, description=f"α-UMi {role} model (GLPFT), trained by umi"
            )
        except MlflowException as again:  # created meanwhile by a concurrent registration
            if getattr(again, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise


def _run_model_artifacts(run_id: str, fingerprint: str) -> str:
    """What the run has under `model/`: "ours" (this very checkpoint: weights, config and the same stage
    fingerprint), "none" (nothing), or "other" (something else, or a checkpoint we cannot identify)."""
    client = _client()
    names = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, ARTIFACT_PATH)}
    if not names:
        return "none"
    if "config.json" not in names or not any(n.endswith((".safetensors", ".bin")) for n in names):
        return "other"
    if STAGE_MANIFEST not in names:
        return "other"
    with tempfile.TemporaryDirectory() as tmp:
        local = _download(f"runs:/{run_id}/{ARTIFACT_PATH}/{STAGE_MANIFEST}", tmp)
        return "ours" if json.loads(Path(local).read_text()).get("fingerprint") == fingerprint else "other"


def _download(uri: str, dst: str | Path) -> str:
    import mlflow

    return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))


def _log_checkpoint(role: str, checkpoint: Path, run_id: str | None) -> str:
    """Log the checkpoint directory under `model/` of `run_id`, or of a new run in the umi-registry experiment."""
    client = _client()
    if run_id is None:
        run = client.create_run(
            ensure_experiment(REGISTRY_EXPERIMENT), run_name=f"register-{role}", tags={TAG_ROLE: role}
        )
        run_id = run.info.run_id
        client.log_artifacts(run_id, str(checkpoint), ARTIFACT_PATH)
        client.set_terminated(run_id)
    else:
        client.log_artifacts(run_id, str(checkpoint), ARTIFACT_PATH)
    return run_id


def _compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def register_role_model(
    role: str,
    checkpoint: str | Path,
    *,
    data_version: str | None = None,
    config: dict | None = None,
    evaluation: dict | None = None,
    run_id: str | None = None,
) -> "ModelVersion":
    """A new version of `umi-<role>` for the checkpoint directory (or the existing version of the same checkpoint).

    run_id: the MLflow run that trained it; its `model/` artifacts are the version's source when they hold this
    checkpoint, otherwise the checkpoint is logged there (or, without run_id, into a new run of `umi-registry`).
    data_version / config / evaluation: recorded as tags (config and evaluation as JSON); when not given, the data
    version and config are read from the checkpoint's stage manifest if it has one.
    """
    from mlflow.exceptions import MlflowException

    name = _check_role(role)
    checkpoint = check_checkpoint(checkpoint)
    manifest_path = checkpoint / STAGE_MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if data_version is None:
        data_version = manifest.get("data_version")
    if config is None:
        config = manifest.get("config")
    if run_id is None:
        run_id = manifest.get("run_id")
    fingerprint = checkpoint_fingerprint(checkpoint)
    client = _client()

    tags = {TAG_ROLE: role, TAG_FINGERPRINT: fingerprint}
    if data_version is not None:
        tags[TAG_DATA_VERSION] = data_version
    if config is not None:
        tags[TAG_CONFIG] = _compact_json(config)
        tags[TAG_CONFIG_SHA] = hashlib.sha256(tags[TAG_CONFIG].encode()).hexdigest()
        if isinstance(config, dict) and config.get("profile"):
            tags[TAG_PROFILE] = str(config["profile"])
    if evaluation is not None:
        tags[TAG_EVALUATION] = _compact_json(evaluation)
    trained_format = manifest.get(prompts.PROMPT_FORMAT_KEY)
    if trained_format:
        tags[TAG_PROMPT_FORMAT] = _compact_json(trained_format)

    _ensure_registered_model(name, role)
    for existing in client.search_model_versions(f"name='{name}'"):
        if existing.tags.get(TAG_FINGERPRINT) == fingerprint:
            for key, value in tags.items():
                if existing.tags.get(key) != value:
                    client.set_model_version_tag(name, existing.version, key, value)
            log.info("%s: checkpoint %s is already version %s", name, checkpoint, existing.version)
            return client.get_model_version(name, existing.version)

    if run_id is not None:
        try:
            client.get_run(run_id)
        except MlflowException as e:
            if not _is_not_found(e):
                raise
            log.warning("run %s of %s is not in this tracking store; logging the checkpoint anew", run_id, checkpoint)
            run_id = None
    held = _run_model_artifacts(run_id, fingerprint) if run_id is not None else "other"
    if held != "ours":  # log it into the training run when its model/ is free, else into a registry run of its own
        run_id = _log_checkpoint(role, checkpoint, run_id if held == "none" else None)
    tags.setdefault(TAG_DATA_VERSION, "unknown")
    version = client.create_model_version(
        name,
        f"runs:/{run_id}/{ARTIFACT_PATH}",
        run_id=run_id,
        tags=tags,
        description=f"{role} checkpoint {checkpoint} (data {data_version or 'unknown'})",
    )
    log.info("registered %s version %s from run %s", name, version.version, run_id)
    return client.get_model_version(name, str(version.version))


def get_version(role: str, version: str | int) -> "ModelVersion":
    from mlflow.exceptions import MlflowException

    name = _check_role(role)
    try:
        return _client().get_model_version(name, str(version))
    except MlflowException as e:
        if _is_not_found(e):
            raise LookupError(f"{name} has no version {version}") from e
        raise


def resolve(role: str, alias_or_version: str | int = CHAMPION) -> "ModelVersion":
    """A version by number (`3`, `"3"`) or by alias (`champion`); LookupError when there is none."""
    from mlflow.exceptions import MlflowException

    name = _check_role(role)
    if isinstance(alias_or_version, int) or str(alias_or_version).isdigit():
        return get_version(role, alias_or_version)
    try:
        return _client().get_model_version_by_alias(name, str(alias_or_version))
    except MlflowException as e:
        if _is_not_found(e):
            raise LookupError(f"{name} has no version with alias {alias_or_version!r}") from e
        raise


def set_alias(role: str, version: str | int, alias: str = CHAMPION) -> None:
    """Point `alias` of `umi-<role>` at `version` (which must exist)."""
    name = _check_role(role)
    get_version(role, version)  # a clear error for a version that does not exist
    _client().set_registered_model_alias(name, alias, str(version))


def delete_alias(role: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    name = _check_role(role)
    try:
        _client().delete_registered_model_alias(name, alias)
    except MlflowException as e:
        if not _is_not_found(e):
            raise


def alias_version(role: str, alias: str) -> "ModelVersion | None":
    try:
        return resolve(role, alias)
    except LookupError:
        return None
    except Exception as e:  # the registered model itself does not exist yet
        if _is_not_found(e):
            return None
        raise


def champion_version(role: str) -> "ModelVersion | None":
    """The version of `umi-<role>` with the `champion` alias, or None (no model or no champion yet)."""
    return alias_version(role, CHAMPION)


def champions() -> dict[str, "ModelVersion | None"]:
    return {role: champion_version(role) for role in ROLES}


def list_versions(role: str) -> list["ModelVersion"]:
    """All versions of `umi-<role>`, newest first (empty when the model was never registered)."""
    name = _check_role(role)
    client = _client()
    # search results carry no aliases (the sqlite store leaves them out): read each version in full
    numbers = sorted((int(v.version) for v in client.search_model_versions(f"name='{name}'")), reverse=True)
    return [client.get_model_version(name, str(n)) for n in numbers]


def version_evaluation(version: "ModelVersion") -> dict | None:
    raw = version.tags.get(TAG_EVALUATION)
    return json.loads(raw) if raw else None


def download_role(role: str, dst: str | Path, alias_or_version: str = CHAMPION) -> Path:
    """Download a version of `umi-<role>` (by alias or number) into `dst` and return `dst`, a directory that
    `from_pretrained` loads (config.json, safetensors, tokenizer). When `dst` already holds that version, nothing is
    downloaded again; a different version there is replaced."""
    version = resolve(role, alias_or_version)
    dst = Path(dst)
    marker = dst / DOWNLOAD_MARKER
    wanted = {
        "name": version.name,
        "version": str(version.version),
        "source": version.source,
        "fingerprint": version.tags.get(TAG_FINGERPRINT),
    }
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}-") as tmp:
        local = Path(_download(version.source, tmp))
        check_checkpoint(local)
        if dst.exists():
            shutil.rmtree(dst)
        shutil.move(str(local), str(dst))
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return dst
