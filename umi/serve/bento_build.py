"""Building the agent Bento: the role models into the BentoML store (umi.serve.bento_models), the Bento's requirements
from requirements.lock, then `bentoml build`. What `umi deploy build` runs, and the pipeline's build_bento task after
a promotion."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVE_REQUIREMENTS = Path("umi/serve/requirements.txt")
# installed in the image by umi/serve/container_setup.sh instead: bfcl-eval without its dependencies (it pins numpy
# 1.26 and ~30 API SDKs); not at all: DeepSpeed (training only, and a source build), llama-cpp-python (a source build
# with this machine's CPU flags: the service does not use it yet) and sentencepiece (the GGUF converter's, at build)
NOT_IN_IMAGE = ("bfcl_eval", "bfcl-eval", "deepspeed", "llama_cpp_python", "llama-cpp-python", "sentencepiece")


def serve_requirements(lock: Path) -> str:
    """requirements.lock less what the image installs otherwise (see NOT_IN_IMAGE)."""
    keep = []
    for line in lock.read_text().splitlines():
        name = line.split("==", 1)[0].strip().lower()
        if name and name in NOT_IN_IMAGE:
            continue
        keep.append(line)
    header = "# Generated from requirements.lock by `umi deploy build` (less NOT_IN_IMAGE's packages): do not edit.\n"
    return header + "\n".join(keep).strip() + "\n"


def clean_env() -> dict[str, str]:
    """The environment for `bentoml build`: no model directories, so the service declares its store models."""
    return {k: v for k, v in os.environ.items() if not k.startswith("UMI_SERVE_")}


class BentoBuildError(RuntimeError):
    """`bentoml build` failed; `output` is the end of what it wrote, `returncode` its exit status."""

    def __init__(self, returncode: int, output: str):
        super().__init__(f"bentoml build failed (exit {returncode})")
        self.returncode, self.output = returncode, output


@dataclass
class BentoBuild:
    models: dict[str, Any]  # role (or "base") -> the bentoml Model imported
    tag: str | None = None  # the Bento built; None when only the models were imported
    notes: list[str] = field(default_factory=list)  # what was done on the way (requirements regenerated, command)


def build_agent_bento(
    bentofile: str | Path = "bentofile.yaml",
    *,
    dirs: Mapping[str, str | Path] | None = None,
    base: str | Path | None = None,
    alias: str = "champion",
    build: bool = True,
) -> BentoBuild:
    """Import the role models (the checkpoint `dirs`, {role: directory} for all three roles, or else the registry's
    versions with `alias`) into the BentoML store, then (build) build the Bento of `bentofile`. ValueError when the
    models cannot be imported, BentoBuildError when `bentoml build` fails."""
    from umi.serve.bento_models import import_role_models, sources_from_dirs, sources_from_registry

    given = {r: p for r, p in (dirs or {}).items() if p is not None}
    with tempfile.TemporaryDirectory(prefix="umi-deploy-") as tmp:
        if given:
            if len(given) != 3:
                raise ValueError(f"give all of --planner/--caller/--summarizer or none (got {sorted(given)})")
            sources = sources_from_dirs(given)
        else:
            sources = sources_from_registry(tmp, alias)
        result = BentoBuild(import_role_models(sources, base))
    if not build:
        return result
    root = Path(bentofile).resolve().parent
    lock, target = root / "requirements.lock", root / SERVE_REQUIREMENTS
    if lock.is_file() and (not target.is_file() or target.read_text() != serve_requirements(lock)):
        target.write_text(serve_requirements(lock))
        result.notes.append(f"{target} regenerated from {lock}")
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", str(Path(bentofile).resolve()), str(root), "--output", "tag"]
    result.notes.append("$ " + " ".join(cmd))
    done = subprocess.run(cmd, cwd=root, env=clean_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise BentoBuildError(done.returncode, done.stdout[-4000:] + "\n" + done.stderr[-4000:])
    tag = next((line.split("__tag__:", 1)[1].strip() for line in done.stdout.splitlines() if "__tag__:" in line), "")
    result.tag = tag or done.stdout.strip()
    return result
