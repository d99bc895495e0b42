"""bf16 training (umi.train.precision): the master-weight optimiser keeps updates bf16 cannot hold, survives a resume
exactly, and a bf16 stage tracks a float32 one; `auto` resolves by the machine."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_train_stages import Interrupt, _dataset_loss, _weights

from umi.train import precision
from umi.train.config import load_config
from umi.train.precision import MasterWeightsAdamW, resolve_precision
from umi.train.stages import train_stage


def _tiny(mode: str, steps: int = 4):
    config = load_config("tiny", precision=mode)
    config.stages["global"].max_steps = steps
    return config


def test_updates_below_bf16_resolution_accumulate_in_the_masters():
    # an update of ~1e-4 on a weight of 1.0 is below bf16's step there (2^-7): plain bf16 AdamW loses every one
    plain = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    mastered = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    plain_opt = torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0)
    master_opt = MasterWeightsAdamW([mastered], lr=1e-4, weight_decay=0.0)
    for _ in range(200):
        for p, opt in ((plain, plain_opt), (mastered, master_opt)):
            p.grad = torch.ones_like(p)
            opt.step()
            opt.zero_grad()
    assert torch.equal(plain, torch.ones_like(plain))  # nothing learnt
    # 200 x 1e-4 = 0.02 learnt, held to bf16's resolution in the model, exactly in the master
    master = master_opt.param_groups[0]["params"][0]
    assert master.dtype == torch.float32 and master[0].item() == pytest.approx(0.98, abs=1e-4)
    assert mastered[0].item() == pytest.approx(0.98, abs=4e-3)
    assert mastered.grad is None


def test_the_state_dict_carries_the_masters_into_a_new_optimiser():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(8, dtype=torch.bfloat16))
    opt = MasterWeightsAdamW([{"params": [a], "weight_decay": 0.1}], lr=1e-3)
    for _ in range(5):
        a.grad = torch.randn_like(a)
        opt.step()
    saved = opt.state_dict()
    masters = opt.param_groups[0]["params"][0].clone()

    b = torch.nn.Parameter(a.detach().clone())  # what a checkpoint's bf16 weights give back
    fresh = MasterWeightsAdamW([{"params": [b], "weight_decay": 0.1}], lr=1e-3)
    assert not torch.equal(fresh.param_groups[0]["params"][0], masters)  # the rounding lost something
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.param_groups[0]["params"][0], masters)
    assert fresh.param_groups[0]["weight_decay"] == 0.1

    with pytest.raises(ValueError, match="master weights"):
        MasterWeightsAdamW([b, torch.nn.Parameter(b.detach().clone())], lr=1e-3).load_state_dict(saved)


def test_auto_resolves_by_the_machine(monkeypatch):
    import umi.inference.devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(umi.inference.devices, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(umi.inference.devices, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16-autocast"
    assert resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16")
    assert precision.PRECISIONS == ("auto", "fp32", "bf16", "bf16-autocast")


@pytest.fixture(scope="module")
def fp32_run(tiny_backbone, role_datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    result = train_stage("global", _tiny("fp32"), role_datasets, out, tiny_backbone, tracking=False)
    return result, _dataset_loss(result.checkpoint, role_datasets)


@pytest.fixture(scope="module")
def bf16_run(tiny_backbone, role_datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16")
    result = train_stage("global", _tiny("bf16"), role_datasets, out, tiny_backbone, tracking=False)
    return result, _dataset_loss(result.checkpoint, role_datasets)


def test_a_bf16_stage_saves_float32_weights_and_tracks_the_float32_stage(
    fp32_run, bf16_run, tiny_backbone, role_datasets
):
    (fp32, fp32_loss), (bf16, bf16_loss) = fp32_run, bf16_run
    start_loss = _dataset_loss(tiny_backbone, role_datasets)
    weights = load_file(str(bf16.checkpoint / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    # the masters, not their rounding: some weight is not a bf16 number
    assert any(not torch.equal(w, w.to(torch.bfloat16).float()) for w in weights.values())
    # both learn, and bf16 lands where float32 does: within a tenth of what float32 learnt
    assert fp32_loss < start_loss - 0.1 and bf16_loss < start_loss - 0.1
    assert abs(bf16_loss - fp32_loss) < 0.1 * (start_loss - fp32_loss)
    assert fp32.metrics["global_step"] == bf16.metrics["global_step"] == 4


def test_an_interrupted_bf16_stage_resumes_to_the_same_weights(bf16_run, tiny_backbone, role_datasets, tmp_path):
    straight, _ = bf16_run
    with pytest.raises(KeyboardInterrupt):
        train_stage(
            "global", _tiny("bf16"), role_datasets, tmp_path, tiny_backbone, tracking=False, callbacks=[Interrupt(at=2)]
        )
    resumed = train_stage("global", _tiny("bf16"), role_datasets, tmp_path, tiny_backbone, tracking=False)
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-2")
    a, b = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)  # masters restored, not re-made from the bf16 checkpoint


def test_a_stage_begun_in_another_precision_is_not_resumed_in_this_one(bf16_run, tiny_backbone, role_datasets):
    from umi.train.stages import stage_fingerprint

    fp32 = stage_fingerprint("global", _tiny("fp32"), role_datasets, tiny_backbone)[0]
    bf16 = stage_fingerprint("global", _tiny("bf16"), role_datasets, tiny_backbone)[0]
    assert fp32 != bf16
