"""The role-model registry on a real sqlite MLflow store: registration, tags, idempotence, aliases, download."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from umi import prompts
from umi.registry import store as registry


def make_checkpoint(src: Path, dst: Path, fingerprint: str, *, scale: float = 1.0, **manifest) -> Path:
    """A copy of the tiny backbone as a stage would leave it: weights (scaled, so copies differ) and umi_stage.json."""
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    save_file({k: v * scale for k, v in weights.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / registry.STAGE_MANIFEST).write_text(json.dumps({"fingerprint": fingerprint, **manifest}))
    return dst


@pytest.fixture
def store(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_artifacts_of_a_sqlite_store_live_beside_the_database(store):
    import mlflow

    assert registry.artifact_root() == (store / "mlruns").as_uri()
    experiment_id = registry.ensure_experiment("umi-somewhere")
    assert registry.ensure_experiment("umi-somewhere") == experiment_id
    assert mlflow.get_experiment(experiment_id).artifact_location == (store / "mlruns" / "umi-somewhere").as_uri()


def test_a_training_runs_logged_checkpoint_is_registered_without_a_second_copy(store, tiny_backbone, tmp_path):
    import mlflow
    from transformers import AutoModelForCausalLM

    trained_format = prompts.prompt_format("reference", 512)
    ckpt = make_checkpoint(
        tiny_backbone,
        tmp_path / "caller-model",
        "fp-caller-1",
        scale=0.5,
        data_version="dvc:abc/caller:123",
        config={"profile": "tiny", "seed": 0},
        prompt_format=trained_format,
    )
    client = mlflow.MlflowClient()
    run = client.create_run(registry.ensure_experiment("umi-train"))
    client.log_artifacts(run.info.run_id, str(ckpt), "model")
    before = {a.path for a in client.list_artifacts(run.info.run_id)}

    assert registry.champion_version("caller") is None  # nothing registered yet: None, not an error
    v = registry.register_role_model("caller", ckpt, run_id=run.info.run_id, evaluation={"live": {"pass_rate": 0.5}})
    assert v.name == "umi-caller" and str(v.version) == "1"
    assert v.source == f"runs:/{run.info.run_id}/model" and v.run_id == run.info.run_id
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == before  # nothing logged again
    assert v.tags["umi.data_version"] == "dvc:abc/caller:123"  # read from the stage manifest
    assert json.loads(v.tags["umi.config"]) == {"profile": "tiny", "seed": 0} and v.tags["umi.profile"] == "tiny"
    assert json.loads(v.tags["umi.evaluation"]) == {"live": {"pass_rate": 0.5}}
    assert v.tags["umi.fingerprint"] == "fp-caller-1"
    assert json.loads(v.tags["umi.prompt_format"]) == trained_format  # what serving must prompt it with

    again = registry.register_role_model("caller", ckpt, evaluation={"live": {"pass_rate": 0.75}})
    assert str(again.version) == "1" and len(registry.list_versions("caller")) == 1
    assert json.loads(again.tags["umi.evaluation"]) == {"live": {"pass_rate": 0.75}}  # updated, not duplicated
    assert again.tags["umi.data_version"] == "dvc:abc/caller:123"  # a tag not given again is kept

    registry.set_alias("caller", 1)
    assert str(registry.champion_version("caller").version) == "1"
    local = registry.download_role("caller", tmp_path / "dl" / "caller")
    assert local == tmp_path / "dl" / "caller"
    got, want = load_file(str(local / "model.safetensors")), load_file(str(ckpt / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    AutoModelForCausalLM.from_pretrained(str(local))  # loads as it is
    stamp = (local / "model.safetensors").stat().st_mtime_ns
    assert registry.download_role("caller", local) == local
    assert (local / "model.safetensors").stat().st_mtime_ns == stamp  # same version: not downloaded again


def test_a_checkpoint_no_run_holds_gets_a_registry_run_and_downloads_replace_other_versions(
    store, tiny_backbone, tmp_path
):
    import mlflow

    a = make_checkpoint(tiny_backbone, tmp_path / "a", "fp-a", scale=1.0)
    b = make_checkpoint(tiny_backbone, tmp_path / "b", "fp-b", scale=2.0)
    va = registry.register_role_model("planner", a, data_version="d1")
    vb = registry.register_role_model("planner", b, data_version="d2", config={"profile": "tiny"})
    assert (str(va.version), str(vb.version)) == ("1", "2") and va.run_id != vb.run_id
    run = mlflow.get_run(vb.run_id)
    assert mlflow.get_experiment(run.info.experiment_id).name == registry.REGISTRY_EXPERIMENT
    assert run.info.artifact_uri.startswith((store / "mlruns").as_uri())  # beside the database, not in the checkout
    assert [str(v.version) for v in registry.list_versions("planner")] == ["2", "1"]

    # a run whose model/ holds another checkpoint is not overwritten: the new one gets a run of its own
    c = make_checkpoint(tiny_backbone, tmp_path / "c", "fp-c", scale=3.0)
    vc = registry.register_role_model("planner", c, run_id=va.run_id)
    assert vc.run_id != va.run_id
    with_a = registry.download_role("planner", tmp_path / "va", "1")
    assert json.loads((with_a / registry.STAGE_MANIFEST).read_text())["fingerprint"] == "fp-a"

    dst = tmp_path / "planner-dl"
    registry.download_role("planner", dst, "1")
    registry.download_role("planner", dst, "2")  # another version into the same folder: replaced
    assert json.loads((dst / registry.STAGE_MANIFEST).read_text())["fingerprint"] == "fp-b"
    assert torch.equal(
        load_file(str(dst / "model.safetensors"))["model.norm.weight"],
        load_file(str(b / "model.safetensors"))["model.norm.weight"],
    )


def test_bad_input_is_named(store, tiny_backbone, tmp_path):
    with pytest.raises(ValueError, match="unknown role 'critic'"):
        registry.register_role_model("critic", tiny_backbone)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        registry.register_role_model("caller", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        registry.register_role_model("caller", tmp_path / "missing")
    registry.register_role_model("caller", make_checkpoint(tiny_backbone, tmp_path / "c", "fp"))
    with pytest.raises(LookupError, match="umi-caller has no version 9"):
        registry.set_alias("caller", 9)
    with pytest.raises(LookupError, match="no version with alias 'champion'"):
        registry.download_role("caller", tmp_path / "dl")
    assert registry.champion_version("summarizer") is None
