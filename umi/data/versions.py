"""Data versions: the DVC hash of each role dataset, read from dvc.lock, so a stage can record exactly what it read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from umi.vocabulary import ROLES


def dataset_versions(
    datasets_dir: str | Path = "artifacts/datasets", lock_path: str | Path = "dvc.lock"
) -> dict[str, str]:
    """{role: version}. The version is the md5 DVC recorded for the datasets folder in dvc.lock plus a content hash
    of the role's own train file, so a role's version changes exactly when its training data does."""
    datasets_dir = Path(datasets_dir)
    folder_md5 = "untracked"
    lock = Path(lock_path)
    if lock.exists():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                if Path(out.get("path", "")) == datasets_dir:
                    folder_md5 = out.get("md5", folder_md5)
    versions = {}
    for role_dir in sorted(p for p in datasets_dir.iterdir() if p.is_dir()):
        train = role_dir / "train.jsonl"
        if train.exists():
            h = hashlib.md5(usedforsecurity=False)
            with train.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            versions[role_dir.name] = f"dvc:{folder_md5}/{role_dir.name}:{h.hexdigest()[:12]}"
    return versions


def reproduce_datasets(datasets_dir: str | Path, dvc_stage: str | None = "reorganize") -> tuple[dict[str, str], str]:
    """`dvc repro <dvc_stage>`: DVC rebuilds the role datasets only when data/, the code or params.yaml changed.
    dvc_stage None: use `datasets_dir` as it is. Returns ({role: data version}, the last line DVC wrote)."""
    import subprocess
    import sys

    from umi.machine import env_with_venv

    said = ""
    if dvc_stage:
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "repro", dvc_stage], env=env_with_venv(), capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"dvc repro {dvc_stage} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
        said = (done.stdout.strip().splitlines() or [""])[-1]
    if not Path(datasets_dir).is_dir():
        raise FileNotFoundError(f"role datasets folder {datasets_dir} not found (run `umi data reorganize` or dvc)")
    versions = dataset_versions(datasets_dir)
    missing = [r for r in ROLES if r not in versions]
    if missing:
        raise FileNotFoundError(f"{datasets_dir} has no train.jsonl for {', '.join(missing)}")
    return versions, said
