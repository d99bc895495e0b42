"""The BentoML service: the three role models behind umi.serve.app's API.

    bentoml serve umi.serve.service:UmiAgent            # from source (models from the store, or UMI_SERVE_*_DIR)
    bentoml serve umi-agent:latest                      # a Bento built by `umi deploy build`

Models: with UMI_SERVE_PLANNER_DIR / _CALLER_DIR / _SUMMARIZER_DIR set, the service loads those directories and
declares no BentoML models (development, tests). Otherwise it declares `umi-planner`, `umi-caller` and `umi-summarizer`
(plus `umi-base` when they are LoRA adapters) from the BentoML model store, which is what a Bento packages; served
from a Bento, the exact versions packaged are the ones loaded. Role models with the same checkpoint hash are loaded
once; LoRA adapters share one base (umi.inference.loading).

Health: BentoML's /livez, /healthz and /readyz (ready once the models are loaded) and the app's /health (details).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, NotFound

from umi.serve.app import create_app
from umi.serve.bento_models import BASE_MODEL, bento_model_name
from umi.serve.engine import build_engine
from umi.serve.settings import ServeSettings
from umi.vocabulary import AGENT_ROLES

log = logging.getLogger(__name__)

SETTINGS = ServeSettings()
_FROM_STORE = SETTINGS.model_dirs is None


def _current_engine():
    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return None
    return getattr(service, "engine", None) if service is not None else None


def _store_has_adapters() -> bool:
    try:
        return bentoml.models.get(f"{bento_model_name('planner')}:latest").info.labels.get("kind") == "lora-adapter"
    except (NotFound, BentoMLException):
        return False


api = create_app(SETTINGS, _current_engine)

# The container's base (`bentoml containerize`): Python 3.11 on Debian bookworm, built by deploy/image.sh. A distro that
# BentoML knows would add that distro's build packages (build-essential, 633 MB) in front of every image, with or
# without a base image, and nothing here compiles at run time; a distro it does not know adds none.
IMAGE = bentoml.images.Image(base_image="umi-python:3.11-bookworm", distro="none")  # Python: bentofile.yaml


@bentoml.service(
    name="umi-agent",
    workers=SETTINGS.workers,  # each loads the models; within one, generations on a model run batched (max_batch)
    traffic={"timeout": int(SETTINGS.request_timeout_s) + 30},  # our own deadline answers first, with a 504
    labels={"project": "umi", "api": "alpha-umi-agent, openai-chat"},
    image=IMAGE,
)
@bentoml.asgi_app(api, path="/")
class UmiAgent:
    if _FROM_STORE:
        planner_model = bentoml.models.BentoModel(f"{bento_model_name('planner')}:latest")
        caller_model = bentoml.models.BentoModel(f"{bento_model_name('caller')}:latest")
        summarizer_model = bentoml.models.BentoModel(f"{bento_model_name('summarizer')}:latest")
        if _store_has_adapters():
            base_model = bentoml.models.BentoModel(f"{BASE_MODEL}:latest")

    def __init__(self) -> None:
        self.engine = None
        dirs, base_dir, info = self._model_dirs()
        self.engine = build_engine(SETTINGS, dirs, base_dir, info)
        log.info("umi agent ready: %s", {role: i.get("tag") or i.get("path") for role, i in info.items()})

    def _model_dirs(self) -> tuple[dict[str, Path], Path | None, dict[str, dict[str, Any]]]:
        if SETTINGS.model_dirs is not None:
            dirs = SETTINGS.model_dirs
            return dirs, SETTINGS.base_dir, {r: {"source": "directory", "path": str(p)} for r, p in dirs.items()}
        packaged = {}
        if UmiAgent.bento is not None:  # served from a Bento: the versions it packaged, not whatever is latest
            packaged = {m.tag.name: str(m.tag) for m in UmiAgent.bento.info.all_models}
        dirs: dict[str, Path] = {}
        info: dict[str, dict[str, Any]] = {}
        by_hash: dict[str, Path] = {}
        for role in AGENT_ROLES:
            name = bento_model_name(role)
            model = bentoml.models.get(packaged.get(name, f"{name}:latest"))
            labels = dict(model.info.labels)
            fingerprint = labels.get("fingerprint")  # umi.vocabulary.checkpoint_fingerprint, at import
            # identical checkpoints (one model in several roles) resolve to one directory: loaded once
            dirs[role] = by_hash.setdefault(fingerprint, Path(model.path)) if fingerprint else Path(model.path)
            info[role] = {"tag": str(model.tag), "labels": labels}
        base_dir = None
        if any(i["labels"].get("kind") == "lora-adapter" for i in info.values()):
            base = bentoml.models.get(packaged.get(BASE_MODEL, f"{BASE_MODEL}:latest"))
            base_dir = Path(base.path)
            info["base"] = {"tag": str(base.tag), "labels": dict(base.info.labels)}
        return dirs, base_dir, info

    def __is_ready__(self) -> bool:
        return self.engine is not None
