"""GLPFT stages on a tiny random Llama: learning, saving, stage chaining, resume, MLflow tracking."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from umi.train.config import load_config
from umi.train.engine import completion_loss, encode_role_dataset
from umi.train.stages import STAGE_MANIFEST, STATE_FILE, stage_complete, stage_fingerprint, train_glpft, train_stage
from umi.train.tokenize import CompletionCollator


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _dataset_loss(model_dir, datasets_dir, role="global") -> float:
    """Mean completion loss of a checkpoint over the role's whole train split (one batch)."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    enc = encode_role_dataset(datasets_dir / role / "train.jsonl", role, tok, 256)
    batch = CompletionCollator(tok.pad_token_id)(list(enc.dataset))
    with torch.no_grad():
        loss, _ = completion_loss(model, batch)
    return float(loss)


class CaptureStart(TrainerCallback):
    """Records the weights the Trainer starts from."""

    def __init__(self):
        self.start = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = {k: v.detach().clone() for k, v in model.state_dict().items()}


class CaptureEnd(TrainerCallback):
    """Records the in-memory model's logits on a fixed input at the end of training."""

    def __init__(self, input_ids):
        self.input_ids = input_ids
        self.logits = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=self.input_ids).logits.clone()


class Interrupt(TrainerCallback):
    """Dies right after the checkpoint of step `at` is written, like a killed job."""

    def __init__(self, at: int):
        self.at = at

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"interrupted after step {self.at}")


def test_completion_loss_equals_full_loss(tiny_backbone, role_datasets):
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_backbone))
    enc = encode_role_dataset(role_datasets / "planner" / "train.jsonl", "planner", tok, 256, max_examples=3)
    batch = CompletionCollator(tok.pad_token_id)(list(enc.dataset))
    with torch.no_grad():
        ours, outputs = completion_loss(model, batch)
        reference = model(**batch).loss
    assert outputs.logits.shape[1] < batch["input_ids"].shape[1]  # the LM head really ran on fewer positions
    assert torch.allclose(ours, reference, atol=1e-5)


def test_two_steps_lower_the_loss_change_the_weights_and_reload_identically(tiny_backbone, role_datasets, tmp_path):
    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    probe = torch.tensor([tok("user: What is the weather in Oslo?</s>assistant: ")["input_ids"]])
    end = CaptureEnd(probe)
    result = train_stage(
        "global",
        load_config("tiny"),
        role_datasets,
        tmp_path / "global",
        tiny_backbone,
        tracking=False,
        callbacks=[end],
    )
    assert result.metrics["global_step"] == 2
    assert _dataset_loss(result.checkpoint, role_datasets) < _dataset_loss(tiny_backbone, role_datasets) - 0.05
    before, after = _weights(tiny_backbone), _weights(result.checkpoint)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every tensor moved

    reloaded = AutoModelForCausalLM.from_pretrained(str(result.checkpoint)).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=probe).logits, end.logits)
    assert AutoTokenizer.from_pretrained(str(result.checkpoint))("a b</s>")["input_ids"] == tok("a b</s>")["input_ids"]
    manifest = json.loads((result.checkpoint / STAGE_MANIFEST).read_text())
    assert manifest["stage"] == "global" and manifest["init_from"] == str(tiny_backbone)


class CaptureStepLR(TrainerCallback):
    """The learning rate each optimiser step really uses."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_no_optimiser_step_runs_at_learning_rate_zero(tiny_backbone, role_datasets, tmp_path):
    config = load_config("tiny")
    config.stages["global"] = config.stages["global"].model_copy(update={"warmup_ratio": 0.5, "max_steps": 4})
    lrs = CaptureStepLR()
    train_stage("global", config, role_datasets, tmp_path / "global", tiny_backbone, tracking=False, callbacks=[lrs])
    peak = config.stages["global"].learning_rate
    assert len(lrs.lrs) == 4
    assert all(0 < lr <= peak for lr in lrs.lrs), lrs.lrs  # warmup starts above 0, the cosine ends above 0
    assert lrs.lrs[0] < lrs.lrs[1] and lrs.lrs[-1] < max(lrs.lrs)  # still a warmup and still a decay


def test_local_stages_start_from_the_global_checkpoint(tiny_backbone, role_datasets, tmp_path, monkeypatch):
    starts: dict[str, dict] = {}
    real_train_stage = train_stage

    def spying_train_stage(stage, *args, **kwargs):
        capture = CaptureStart()
        callbacks = [capture, *(kwargs.pop("callbacks", None) or [])]
        result = real_train_stage(stage, *args, callbacks=callbacks, **kwargs)
        starts[stage] = capture.start
        return result

    monkeypatch.setattr("umi.train.stages.train_stage", spying_train_stage)
    results = train_glpft(load_config("tiny"), role_datasets, tmp_path / "glpft", tiny_backbone, tracking=False)
    assert list(results) == ["global", "planner", "caller", "summarizer"]
    global_weights = _weights(results["global"].checkpoint)
    backbone = _weights(tiny_backbone)
    for stage in ("planner", "caller", "summarizer"):
        assert results[stage].init_from == results["global"].checkpoint
        start = starts[stage]
        assert all(torch.equal(start[k], global_weights[k]) for k in global_weights), stage
        assert not torch.equal(start["model.norm.weight"], backbone["model.norm.weight"])
        final = _weights(results[stage].checkpoint)
        assert not torch.equal(final["model.norm.weight"], global_weights["model.norm.weight"])  # and trained on
    # the stages trained apart: three different models
    assert not torch.equal(
        _weights(results["planner"].checkpoint)[
            "lm_head.weight" if "lm_head.weight" in global_weights else "model.embed_tokens.weight"
        ],
        _weights(results["caller"].checkpoint)[
            "lm_head.weight" if "lm_head.weight" in global_weights else "model.embed_tokens.weight"
        ],
    )

    # one-stage ablation: locals straight from the backbone, no global stage
    starts.clear()
    ablation = train_glpft(
        load_config("tiny"),
        role_datasets,
        tmp_path / "one-stage",
        tiny_backbone,
        from_backbone=True,
        tracking=False,
        stages=("planner",),
    )
    assert list(ablation) == ["planner"] and ablation["planner"].init_from == tiny_backbone
    assert all(torch.equal(starts["planner"][k], backbone[k]) for k in backbone)


def test_interrupted_stage_resumes_from_its_last_checkpoint(tiny_backbone, role_datasets, tmp_path, mlflow_store):
    import mlflow

    config = load_config("tiny")
    config.stages["global"].max_steps = 4
    uninterrupted = train_stage("global", config, role_datasets, tmp_path / "straight", tiny_backbone, tracking=False)

    with pytest.raises(KeyboardInterrupt):
        train_stage(
            "global",
            config,
            role_datasets,
            tmp_path / "resumed",
            tiny_backbone,
            data_version="v1",
            callbacks=[Interrupt(at=2)],
        )
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "resumed" / "model").exists()
    first_run = mlflow.search_runs(experiment_names=["umi-train"], output_format="list")
    assert [r.info.status for r in first_run] == ["FAILED"]

    result = train_stage("global", config, role_datasets, tmp_path / "resumed", tiny_backbone, data_version="v1")
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-2")
    assert result.metrics["global_step"] == 4
    # same data order, same RNG: the resumed run ends where the uninterrupted one does
    a, b = _weights(uninterrupted.checkpoint), _weights(result.checkpoint)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    runs = mlflow.search_runs(experiment_names=["umi-train"], output_format="list")
    assert len(runs) == 1 and runs[0].info.run_id == result.run_id and runs[0].info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(result.run_id, "loss")]
    assert sorted(set(steps)) == [1, 2, 3, 4]

    again = train_stage("global", config, role_datasets, tmp_path / "resumed", tiny_backbone, data_version="v1")
    assert again.skipped and again.checkpoint == result.checkpoint


def test_mlflow_records_config_data_version_loss_curve_and_checkpoint(
    tiny_backbone, role_datasets, tmp_path, mlflow_store
):
    import mlflow

    result = train_stage(
        "caller", "tiny", role_datasets, tmp_path / "caller", tiny_backbone, data_version="dvc-md5:0123abcd"
    )
    run = mlflow.get_run(result.run_id)
    assert run.data.params["data_version"] == "dvc-md5:0123abcd"
    assert run.data.tags["umi.stage"] == "caller"
    assert float(run.data.params["learning_rate"]) == 3e-3 and run.data.params["max_length"] == "256"
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert run.data.metrics["data_examples"] == 12
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "model")}
    assert {
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
        f"model/{STAGE_MANIFEST}",
    } <= artifacts


def test_new_data_version_retrains_the_stage(tiny_backbone, role_datasets, tmp_path):
    first = train_stage(
        "summarizer", "tiny", role_datasets, tmp_path / "s", tiny_backbone, data_version="a", tracking=False
    )
    assert not first.skipped
    second = train_stage(
        "summarizer", "tiny", role_datasets, tmp_path / "s", tiny_backbone, data_version="b", tracking=False
    )
    assert not second.skipped and second.resumed_from is None


def test_stage_complete_says_what_train_stage_would_skip(tiny_backbone, role_datasets, tmp_path):
    out, config = tmp_path / "s", load_config("tiny")
    fingerprint = stage_fingerprint("summarizer", config, role_datasets, tiny_backbone, "a")[0]
    assert not stage_complete(out, fingerprint)  # nothing there yet
    train_stage("summarizer", config, role_datasets, out, tiny_backbone, data_version="a", tracking=False)
    assert stage_complete(out, fingerprint)
    assert train_stage(
        "summarizer", config, role_datasets, out, tiny_backbone, data_version="a", tracking=False
    ).skipped
    assert not stage_complete(out, stage_fingerprint("summarizer", config, role_datasets, tiny_backbone, "b")[0])
    (out / STATE_FILE).write_bytes(b"\x00{")  # a damaged state file: not complete (train_stage would train again)
    assert not stage_complete(out, fingerprint)


def test_bad_records_are_reported_by_id(tiny_backbone, tmp_path):
    from umi.schema import RecordError

    tok = AutoTokenizer.from_pretrained(str(tiny_backbone))
    path = tmp_path / "planner" / "train.jsonl"
    path.parent.mkdir()
    good = json.dumps({"id": "ok#1", "role": "planner", "prompt": "p", "target": "t", "history_span": [0, 0]})
    path.write_text(good + "\n" + json.dumps({"id": "broken#3", "role": "planner", "prompt": "p"}) + "\n")
    with pytest.raises(RecordError, match="broken#3"):
        encode_role_dataset(path, "planner", tok, 64)
    path.write_text(good.replace('"planner"', '"caller"') + "\n")
    with pytest.raises(RecordError, match="ok#1.*caller"):
        encode_role_dataset(path, "planner", tok, 64)
    path.write_text(good + "\n{not json\n")
    with pytest.raises(RecordError, match="train.jsonl:2"):
        encode_role_dataset(path, "planner", tok, 64)


def test_too_long_examples_are_reported_by_id(tiny_backbone, role_datasets, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(role_datasets, data)
    path = data / "planner" / "train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["target"] = "a very long target " * 200
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = train_stage("planner", "tiny", data, tmp_path / "p", tiny_backbone, tracking=False)
    assert result.too_long_ids == [records[0]["id"]]
    assert result.metrics["data_examples"] == len(records) - 1


def test_lora_stage_saves_a_merged_plain_checkpoint(tiny_backbone, role_datasets, tmp_path):
    config = load_config("tiny", lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    result = train_stage("global", config, role_datasets, tmp_path / "lora", tiny_backbone, tracking=False)
    after, before = _weights(result.checkpoint), _weights(tiny_backbone)
    assert after.keys() == before.keys()  # no adapter tensors: a plain model
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(("q_proj" in k or "v_proj" in k) for k in moved)
    assert _dataset_loss(result.checkpoint, role_datasets) < _dataset_loss(tiny_backbone, role_datasets)


def test_a_stage_is_fingerprinted_by_its_own_settings(tiny_backbone, role_datasets):
    """Choosing the planner's learning rate after global has trained leaves the global stage finished; the control,
    trained for the locals' budget from global's settings, changes with both."""
    base = load_config("tiny")
    planner_lr = base.model_copy(deep=True)
    planner_lr.stages["planner"].learning_rate *= 3
    global_lr = base.model_copy(deep=True)
    global_lr.stages["global"].learning_rate *= 3

    def fp(stage, config):
        return stage_fingerprint(stage, config, role_datasets, tiny_backbone)[0]

    assert fp("global", planner_lr) == fp("global", base)
    assert fp("caller", planner_lr) == fp("caller", base)
    assert fp("planner", planner_lr) != fp("planner", base)
    assert fp("global", global_lr) != fp("global", base)
    assert fp("global-matched", global_lr) != fp("global-matched", base)
    budget = base.model_copy(deep=True)
    budget.stages["summarizer"].epochs += 1
    assert fp("global-matched", budget) != fp("global-matched", base)
