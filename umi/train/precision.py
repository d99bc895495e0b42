"""Training precision: which arithmetic a stage trains in, and the optimiser that keeps bf16 training exact enough.

Three ways to train (`precision` in a profile):

- `fp32`: float32 weights, activations and optimiser state. The reference; the rule on CPUs without native bf16
  (emulated bf16 is slower than float32 there).
- `bf16-autocast`: float32 weights, matmuls autocast to bfloat16 (transformers' `bf16=True`). The GPU default.
- `bf16`: the weights themselves in bfloat16 (forward, backward and the gradients all in bf16: half the memory
  traffic), with float32 *master* weights and float32 AdamW state held by the optimiser (`MasterWeightsAdamW`).
  Without master weights most updates would be lost: an update of lr x ~1 on a weight of ~0.05 is ~1e-3 of it,
  below bf16's resolution (2^-8 = 0.4%). The CPU default where the CPU computes bf16 natively (AVX512-BF16 / AMX):
  measured on such a CPU (SmolLM2-135M, 2 x 1,024 tokens, forward + backward + AdamW): fp32 127 tokens/s, autocast
  174, bf16 weights 240 (docs/training.md, "Precision").

`auto` picks bf16-autocast on a GPU with bf16, bf16 on a CPU with native bf16, fp32 elsewhere. The resolved mode is
part of a stage's fingerprint: a run resumed on another kind of machine does not switch arithmetic mid-stage.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from umi.train.config import PrecisionSetting

Precision = Literal["fp32", "bf16", "bf16-autocast"]  # what `auto` resolves to
PRECISIONS: tuple[str, ...] = get_args(PrecisionSetting)


def resolve_precision(name: str) -> Precision:
    """The mode `name` (a profile's `precision`) trains in on this machine."""
    from umi.inference.devices import cpu_has_native_bf16

    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name != "auto":
        return name  # type: ignore[return-value]
    if torch.cuda.is_available():
        return "bf16-autocast" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def weights_dtype(mode: Precision) -> torch.dtype:
    """The dtype the model's weights are loaded in for training."""
    return torch.bfloat16 if mode == "bf16" else torch.float32


class MasterWeightsAdamW(torch.optim.AdamW):
    """AdamW stepping float32 master copies of low-precision (bf16) parameters.

    Built over the model's parameter groups like any optimiser (the Trainer's decay / no-decay split). Each step
    copies the model's gradients into the masters (float32), runs AdamW on the masters, and writes them back into
    the model rounded to its dtype: updates far below bf16's resolution accumulate in the masters instead of being
    rounded away. Its state dict carries the masters, so a resumed run continues from the exact float32 weights,
    not from the rounded ones in the model checkpoint; `export_to` puts them into a float32 model for saving."""

    def __init__(self, params, **kwargs):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.model_params: list[list[torch.nn.Parameter]] = []
        master_groups = []
        for group in groups:
            model_params = list(group["params"])
            masters = [p.detach().to(torch.float32).clone().requires_grad_(True) for p in model_params]
            self.model_params.append(model_params)
            master_groups.append({**group, "params": masters})
        kwargs.pop("fused", None)  # the fused CPU kernel is for float32 params anyway; keep the portable one
        super().__init__(master_groups, **kwargs)

    def _pairs(self):
        for group, model_params in zip(self.param_groups, self.model_params):
            yield from zip(group["params"], model_params)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MasterWeightsAdamW does not take a closure")
        for master, param in self._pairs():
            master.grad = None if param.grad is None else param.grad.to(torch.float32)
        loss = super().step()
        for master, param in self._pairs():
            param.copy_(master)  # rounded to the model's dtype
            master.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for _, param in self._pairs():
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()
        super().zero_grad(set_to_none)

    def state_dict(self):
        state = super().state_dict()
        state["master_weights"] = [master.detach().clone() for master, _ in self._pairs()]
        return state

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        masters = state_dict.pop("master_weights", None)
        pairs = list(self._pairs())
        if masters is not None and len(masters) != len(pairs):
            raise ValueError(f"optimiser state holds {len(masters)} master weights for {len(pairs)} parameters")
        super().load_state_dict(state_dict)
        if masters is None:  # an optimiser state saved without masters: start them from the model's weights
            return
        for saved, (master, param) in zip(masters, pairs):
            master.copy_(saved)
            param.copy_(saved)

    @torch.no_grad()
    def export_to(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` in float32 holding the master weights exactly (what a finished stage saves)."""
        model.to(torch.float32)
        for master, param in self._pairs():
            param.copy_(master)
        return model
