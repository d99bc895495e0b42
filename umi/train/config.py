"""Training profiles: YAML data validated by pydantic. `load_config("paper" | "cpu" | "tiny" | path)`.

A profile says everything a GLPFT run needs besides the data and the starting weights: sequence budget, batch,
per-stage optimiser settings, precision policy, DeepSpeed and LoRA. Unknown keys are errors, so a typo in a profile
cannot silently fall back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from umi.vocabulary import CONTROL_STAGE, LOCAL_STAGES, STAGES

CONFIG_DIR = Path(__file__).with_name("configs")
# auto: bf16 autocast on a GPU, bf16 weights (float32 masters) on a CPU with native bf16, else fp32 (umi.train.precision)
PrecisionSetting = Literal["auto", "fp32", "bf16", "bf16-autocast"]
DEEPSPEED_DIR = Path(__file__).with_name("deepspeed")


def dataset_role(stage: str) -> str:
    """The role dataset a stage trains on (the control trains on the global one)."""
    return "global" if stage == CONTROL_STAGE else stage


class StageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(gt=0)
    epochs: float = Field(gt=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_examples: int | None = Field(default=None, gt=0, description="a seeded random subset of the train split")
    max_tokens: int | None = Field(
        default=None, gt=0, description="a seeded random subset of the train split holding at most this many tokens"
    )
    max_steps: int | None = Field(default=None, gt=0, description="stop after this many optimiser steps")
    eval_examples: int = Field(default=0, ge=0, description="dev-split examples for a final dev loss; 0: none")
    # a stage whose examples share little (the summarizer: one per user turn) gains no speed from big packed
    # micro-batches, only fewer optimiser steps; so a stage may keep its own batch and engine
    per_device_batch_size: int | None = Field(default=None, gt=0, description="this stage's; default the profile's")
    global_batch_size: int | None = Field(default=None, gt=0, description="this stage's; default the profile's")
    packing: bool | None = Field(default=None, description="this stage's; default the profile's")
    # The planner's decision (` Next: caller.`) is 4-5 of its ~60 target tokens, yet it is what Plan ACC scores:
    # weighting it more is one of the field's ideas to try on dev (docs/results/recipe/). Planner only.
    decision_weight: float = Field(
        default=1.0, ge=1.0, description="planner: loss weight of the decision tokens (the rest weigh 1)"
    )


# Settings added after runs were on record, with the value that trains exactly as before they existed: at that value
# they are left out of a stage's fingerprint (umi.train.stages.stage_fingerprint), so those runs stay resumable.
FINGERPRINT_NEUTRAL: dict[str, object] = {"decision_weight": 1.0}


class LoraSettings(BaseModel):
    """peft LoRA on the given modules; the stage's final checkpoint is merged into plain weights."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(gt=0)
    alpha: int = Field(gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str
    max_length: int = Field(gt=8, description="tokens of prompt + target + EOS")
    per_device_batch_size: int = Field(gt=0)
    global_batch_size: int = Field(gt=0, description="examples per optimiser step over all devices")
    lr_scheduler: str = "cosine"
    seed: int = 42
    precision: PrecisionSetting = "auto"
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"  # auto: on where a GPU is present
    deepspeed: str | None = Field(default=None, description="a file name in umi/train/deepspeed/ or a path")
    lora: LoraSettings | None = None
    logging_steps: int = Field(default=1, gt=0)
    save_steps: int = Field(default=100, gt=0, description="Trainer checkpoint interval (what a resume restarts from)")
    save_total_limit: int | None = Field(default=2, gt=0)
    log_model_artifact: bool = True
    keep_checkpoints: bool = Field(
        default=False, description="keep the Trainer checkpoints of a finished stage (they only serve a resume)"
    )
    tokenize_workers: int | None = Field(default=None, gt=0)
    packing: bool = Field(
        default=True,
        description="tree-pack each micro-batch's examples (shared docs/history computed once; same loss); "
        "false: the per-step engine, one padded sequence per example",
    )
    pack_length: int | None = Field(
        default=None, gt=8, description="tokens of one packed sequence; default per_device_batch_size x max_length"
    )
    stages: dict[str, StageSettings]

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        missing = [s for s in STAGES if s not in self.stages]
        unknown = [s for s in self.stages if s not in STAGES]
        if missing or unknown:
            raise ValueError(f"stages must be exactly {list(STAGES)}; missing {missing}, unknown {unknown}")
        for name, s in self.stages.items():
            per_device = s.per_device_batch_size or self.per_device_batch_size
            total = s.global_batch_size or self.global_batch_size
            if total % per_device:
                raise ValueError(
                    f"stage {name}: global_batch_size {total} is not a multiple of per_device_batch_size {per_device}"
                )
        weighted = [name for name, s in self.stages.items() if s.decision_weight != 1.0 and name != "planner"]
        if weighted:
            raise ValueError(f"decision_weight is the planner's (its ` Next: ...` tokens); set on {weighted}")
        if self.pack_length is not None and self.pack_length < self.max_length:
            raise ValueError(f"pack_length {self.pack_length} < max_length {self.max_length}: an example might not fit")
        if self.lora is not None and self.deepspeed is not None:
            raise ValueError("LoRA with DeepSpeed is not supported here: pick one (lora for CPU, deepspeed for GPUs)")
        return self

    def stage_settings(self, stage: str) -> StageSettings:
        """A stage's settings; for CONTROL_STAGE the global stage's, with the budget of the three local stages
        together: their max_tokens summed when all three are token-budgeted (their optimiser steps, or examples,
        summed when all are budgeted that way), else the local epochs (the three role datasets together hold about
        the global dataset's tokens, so an epoch of each is about an epoch of global)."""
        if stage != CONTROL_STAGE:
            return self.stages[stage]
        base, local = self.stages["global"], [self.stages[s] for s in LOCAL_STAGES]
        if all(s.max_tokens for s in local):
            return base.model_copy(
                update={
                    "max_tokens": sum(s.max_tokens for s in local),
                    "max_examples": None,
                    "max_steps": None,
                    "epochs": max(s.epochs for s in local),
                }
            )
        if all(s.max_steps for s in local):
            return base.model_copy(update={"max_steps": sum(s.max_steps for s in local)})
        if all(s.max_examples for s in local):
            return base.model_copy(
                update={
                    "max_examples": sum(s.max_examples for s in local),
                    "max_tokens": None,
                    "max_steps": None,
                    "epochs": max(s.epochs for s in local),
                }
            )
        # epochs: the locals' data is not the global data's size (on BFCL they run 1.7x its tokens), so the epochs
        # are matched by tokens when the stage starts (umi.train.stages.control_settings); this is the placeholder
        return base.model_copy(update={"epochs": max(s.epochs for s in local), "max_steps": None})

    def with_epochs(self, epochs: float) -> "TrainConfig":
        """This profile with every stage trained for `epochs` (a fraction allowed) and no other budget: a learning
        curve's points are the same recipe at several budgets."""
        stages = {
            name: s.model_copy(update={"epochs": epochs, "max_steps": None, "max_examples": None, "max_tokens": None})
            for name, s in self.stages.items()
        }
        return TrainConfig.model_validate(
            {**self.model_dump(), "stages": {k: v.model_dump() for k, v in stages.items()}}
        )

    def control_by_epochs(self) -> bool:
        """Whether the control's budget is the locals' epochs (rather than tokens, steps or examples summed)."""
        local = [self.stages[s] for s in LOCAL_STAGES]
        return not (
            all(s.max_tokens for s in local) or all(s.max_steps for s in local) or all(s.max_examples for s in local)
        )

    def for_stage(self, stage: str) -> "TrainConfig":
        """This profile as `stage` trains with it: the stage's own batch sizes and packing, where it sets them, at
        the top level (idempotent), so that everything reading `per_device_batch_size` or `packing` reads the stage's."""
        s = self.stage_settings(stage)
        update = {
            "per_device_batch_size": s.per_device_batch_size or self.per_device_batch_size,
            "global_batch_size": s.global_batch_size or self.global_batch_size,
            "packing": self.packing if s.packing is None else s.packing,
        }
        if all(getattr(self, k) == v for k, v in update.items()):
            return self
        return TrainConfig.model_validate({**self.model_dump(), **update})

    def pack_budget(self) -> int:
        """The most tokens of one packed sequence: never more than a per-step micro-batch padded to max_length."""
        return self.pack_length or self.per_device_batch_size * self.max_length

    def gradient_accumulation(self, world_size: int) -> int:
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} cannot be split over {world_size} device(s) "
                f"x per_device_batch_size {self.per_device_batch_size}"
            )
        return self.global_batch_size // per_step

    def deepspeed_path(self) -> Path | None:
        if self.deepspeed is None:
            return None
        path = Path(self.deepspeed)
        if not path.suffix:
            path = path.with_suffix(".json")
        if not path.is_absolute() and not path.exists():
            path = DEEPSPEED_DIR / path
        if not path.exists():
            raise FileNotFoundError(f"DeepSpeed config {self.deepspeed!r} not found (looked in {DEEPSPEED_DIR})")
        return path


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(profile_or_path: str | Path, **overrides) -> TrainConfig:
    """A named profile (paper, cpu, tiny) or a YAML file; keyword overrides replace top-level keys."""
    path = Path(profile_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{profile_or_path}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"no training profile {profile_or_path!r}; known: {available_profiles()}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a training profile must be a YAML mapping")
    raw.update(overrides)
    return TrainConfig.model_validate(raw)
