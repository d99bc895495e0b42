"""GLPFT stages: global on the whole task, then planner / caller / summarizer, each starting from the global model.

Plain Python entry points for the CLI and the Prefect flows:

    train_stage(stage, config, datasets_dir, out_dir, init_from, data_version=..., tracking=True) -> StageResult
    train_glpft(config, datasets_dir, out_root, backbone, from_backbone=False, ...) -> {stage: StageResult}

Layout of one stage directory (`out_dir`):

    checkpoints/checkpoint-<step>/   Trainer checkpoints (weights or adapter + optimiser + RNG): what a resume reads;
                                     one counts only with its completeness marker (umi_checkpoint_complete.json,
                                     written last, naming the stage fingerprint)
    model/                           the final plain checkpoint (safetensors + tokenizer), LoRA merged in
    model/umi_stage.json             provenance: stage, start weights, data version, config, metrics, MLflow run
    stage_state.json                 fingerprint of (config, start weights, data) and the MLflow run id

State and manifest are written atomically (umi.atomic). A damaged stage_state.json is reported and treated as
missing: the stage resumes from its last complete checkpoint of the same fingerprint, or starts over.

Calling train_stage again on the same directory: a finished stage with the same fingerprint is returned as is; an
interrupted one resumes from its last checkpoint (and keeps logging into the same MLflow run); a different
fingerprint (new data, config or start weights) starts the stage afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from umi import prompts
from umi.atomic import write_json
from umi.train.config import FINGERPRINT_NEUTRAL, StageSettings, TrainConfig, dataset_role, load_config
from umi.train.engine import (
    CompletionTrainer,
    DecisionWeights,
    EncodedDataset,
    MlflowStageCallback,
    dataset_stats,
    encode_role_dataset,
    encode_role_dataset_packed,
    has_gpu,
    last_complete_checkpoint,
    role_dataset_path,
    training_arguments,
    training_precision,
    use_gradient_checkpointing,
    world_size,
)
from umi.train.packing import PackedCollator, use_tree_attention
from umi.train.precision import MasterWeightsAdamW, weights_dtype
from umi.train.progress import ProgressCallback
from umi.train.tokenize import CompletionCollator
from umi.vocabulary import (
    CONTROL_STAGE,
    DATASET_LAYOUT,
    LOCAL_STAGES,
    STAGE_MANIFEST,
    STAGES,
    TRAINABLE_STAGES,
    checkpoint_fingerprint,
    file_sha256,
)

if TYPE_CHECKING:
    from transformers import TrainingArguments

log = logging.getLogger(__name__)


def dataset_layout(datasets_dir: str | Path) -> dict | None:
    """The role datasets' layout.json (umi.data.reorganize: doc style, observation limit, split rule); None for
    datasets made by hand without one."""
    layout = Path(datasets_dir) / DATASET_LAYOUT
    return json.loads(layout.read_text(encoding="utf-8")) if layout.is_file() else None


def dataset_prompt_format(datasets_dir: str | Path) -> dict | None:
    """The prompt format the role datasets were rendered with; None, with a warning, for datasets without a layout."""
    data = dataset_layout(datasets_dir)
    if data is None:
        log.warning(
            "%s not found: the checkpoint will not record its prompt format", Path(datasets_dir) / DATASET_LAYOUT
        )
        return None
    return prompts.prompt_format(data["doc_style"], data.get("observation_limit"))


def dataset_split(datasets_dir: str | Path) -> dict | None:
    """The split rule the role datasets were cut with (layout.json's `split`, umi.data.splits.split_rule); None for
    datasets without one. Recorded in the stage manifest, so evaluation can refuse another split."""
    return (dataset_layout(datasets_dir) or {}).get("split")


STATE_FILE = "stage_state.json"
DEFAULT_EXPERIMENT = "umi-train"


@dataclass
class StageResult:
    stage: str
    checkpoint: Path  # the final plain checkpoint directory (load with from_pretrained)
    metrics: dict[str, float]
    init_from: Path
    run_id: str | None = None
    resumed_from: str | None = None  # the Trainer checkpoint a resumed run restarted from
    too_long_ids: list[str] = field(default_factory=list)
    skipped: bool = False  # True when the stage was already complete and nothing was trained

    def to_json(self) -> dict:
        d = asdict(self)
        d["checkpoint"], d["init_from"] = str(self.checkpoint), str(self.init_from)
        return d


def read_json_or_none(path: Path) -> dict | None:
    """A JSON object file, or None when it is missing or unreadable (truncated, not JSON, not an object): reported,
    never fatal, so a damaged state file cannot fail a stage on every retry."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.error("%s is unreadable (%s): ignored", path, e)
        return None
    if not isinstance(value, dict):
        log.error("%s is not a JSON object: ignored", path)
        return None
    return value


def read_state(state_path: Path) -> dict:
    """The stage state, or {} when missing or damaged: the stage then resumes from its last complete checkpoint of
    the same fingerprint (the checkpoint's marker names it), or starts over."""
    state = read_json_or_none(state_path)
    if state is None and state_path.exists():
        log.error(
            "%s: state lost; resuming from the last complete checkpoint of this configuration, if any",
            state_path.parent,
        )
    return state or {}


def stage_fingerprint(
    stage: str, config: TrainConfig, datasets_dir: str | Path, init_from: str | Path, data_version: str | None = None
) -> tuple[str, dict]:
    """(fingerprint, what it hashes): config, the precision it resolves to here, stage, start weights, training data
    and data version. A finished stage with the same fingerprint is not trained again (the pipeline's task cache uses
    the same key); a stage begun in another precision (`auto` on another machine) is not resumed in this one."""
    init_from = Path(init_from)
    dump = config.for_stage(stage).model_dump(mode="json")
    # A stage's weights depend on its own settings (the control's on global's and the locals' budgets), not on other
    # stages' learning rates: so the local recipe can still be chosen on dev after a long global stage has trained.
    own = (*STAGES,) if stage == CONTROL_STAGE else (stage,)
    dump["stages"] = {s: dump["stages"][s] for s in own}
    for settings in dump["stages"].values():
        for key, neutral in FINGERPRINT_NEUTRAL.items():
            if settings.get(key) == neutral:
                del settings[key]
    src = {
        "config": dump,
        "precision": training_precision(config),
        "stage": stage,
        "init": checkpoint_fingerprint(init_from),
        "data_sha256": file_sha256(role_dataset_path(datasets_dir, dataset_role(stage), "train")),
        # the control's budget under epochs is the locals' tokens (control_settings): their data counts too
        **(
            {"local_data_sha256": [file_sha256(role_dataset_path(datasets_dir, s, "train")) for s in LOCAL_STAGES]}
            if stage == CONTROL_STAGE and config.control_by_epochs()
            else {}
        ),
        "data_version": data_version,
    }
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest(), src


CONTROL_BUDGET_FILE = "control_budget.json"


def _stage_tokens(stage: str, config: TrainConfig, datasets_dir: str | Path, tokenizer, cache_dir: Path) -> int:
    """The tokens one epoch of `stage` runs over (packed tokens where the stage packs), as its training encodes it."""
    c, role = config.for_stage(stage), dataset_role(stage)
    path = role_dataset_path(datasets_dir, role, "train")
    if c.packing:
        enc = encode_role_dataset_packed(
            path, role, tokenizer, c.max_length, examples_per_row=c.per_device_batch_size,
            pack_length=c.pack_budget(), cache_dir=cache_dir,
        )  # fmt: skip
        return int(enc.packed_tokens)
    return int(encode_role_dataset(path, role, tokenizer, c.max_length, cache_dir=cache_dir).tokens)


def control_settings(config: TrainConfig, datasets_dir: str | Path, init_from: str | Path, out_dir: Path):
    """The compute-matched control's settings. Under token, step or example budgets: the locals' summed
    (TrainConfig.stage_settings). Under epochs: as many epochs of the global data (fractional) as it takes to run
    over the tokens the three local stages run over, each encoded as its stage trains it (on BFCL at max length
    2,048 the locals' packed tokens are 1.7x the global data's, so "the same epochs" would give the control 40% less
    compute). The count is kept in `<out_dir>/control_budget.json`, keyed by the config and the data, so a resumed or
    finished control does not encode four datasets again."""
    from transformers import AutoTokenizer

    settings = config.stage_settings(CONTROL_STAGE)
    if not config.control_by_epochs():
        return settings
    stages = (*LOCAL_STAGES, CONTROL_STAGE)
    key_src = {
        "config": config.model_dump(mode="json"),
        "data": [file_sha256(role_dataset_path(datasets_dir, dataset_role(s), "train")) for s in stages],
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()
    cached = read_json_or_none(out_dir / CONTROL_BUDGET_FILE) or {}
    if cached.get("key") != key:
        tokenizer = AutoTokenizer.from_pretrained(str(init_from))
        cache_dir = out_dir / "cache"
        tokens = {s: _stage_tokens(s, config, datasets_dir, tokenizer, cache_dir) for s in stages}
        local = sum(tokens[s] * config.stages[s].epochs for s in LOCAL_STAGES)
        cached = {
            "key": key,
            "tokens_per_epoch": tokens,
            "local_tokens": local,
            "epochs": local / tokens[CONTROL_STAGE],
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / CONTROL_BUDGET_FILE, cached)
    return settings.model_copy(update={"epochs": cached["epochs"]})


def stage_complete(out_dir: str | Path, fingerprint: str) -> bool:
    """Whether `out_dir` holds the finished stage of that fingerprint (what train_stage would skip)."""
    state = read_json_or_none(Path(out_dir) / STATE_FILE) or {}
    manifest = read_json_or_none(Path(out_dir) / "model" / STAGE_MANIFEST) or {}
    return bool(state.get("complete")) and state.get("fingerprint") == fingerprint == manifest.get("fingerprint")


def _start_mlflow_run(previous_run_id: str | None, experiment: str, run_name: str, parent_run_id: str | None = None):
    """The stage's run: the interrupted run again when resuming, else a new one. When the caller (a pipeline flow)
    has a run open, or names one (`parent_run_id`, e.g. from another process), the stage's run is its child, in
    the parent's experiment."""
    import mlflow

    nested = mlflow.active_run() is not None
    if parent_run_id and not nested and not previous_run_id:
        parent = mlflow.MlflowClient().get_run(parent_run_id)
        return mlflow.start_run(run_name=run_name, experiment_id=parent.info.experiment_id, parent_run_id=parent_run_id)
    if previous_run_id:
        try:
            return mlflow.start_run(run_id=previous_run_id, nested=nested)
        except Exception as e:  # the run was deleted or the tracking store changed: open a new one
            log.warning("cannot reopen MLflow run %s (%s); starting a new run", previous_run_id, e)
    if not nested:
        mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=run_name, nested=nested)


def _flat_params(config: TrainConfig, stage: str, s) -> dict[str, str]:
    params = {
        "profile": config.profile,
        "stage": stage,
        "max_length": config.max_length,
        "per_device_batch_size": config.per_device_batch_size,
        "global_batch_size": config.global_batch_size,
        "gradient_accumulation": config.gradient_accumulation(world_size()),
        "world_size": world_size(),
        "lr_scheduler": config.lr_scheduler,
        "seed": config.seed,
        "precision": training_precision(config),
        "gradient_checkpointing": use_gradient_checkpointing(config),
        "deepspeed": config.deepspeed or "none",
        "packing": config.packing,
        "pack_length": config.pack_budget() if config.packing else "none",
        "lora": "none" if config.lora is None else json.dumps(config.lora.model_dump()),
        **{k: ("none" if v is None else v) for k, v in s.model_dump().items()},
    }
    return {k: str(v) for k, v in params.items()}


class CountingCollator:
    """Counts the target (loss) tokens and all real tokens that pass through, for throughput metrics (the stage's
    metrics; benchmarks/gpu_check.py)."""

    def __init__(self, collate):
        self.collate = collate
        self.target_tokens = 0
        self.tokens = 0

    def __call__(self, features):
        batch = self.collate(features)
        self.target_tokens += int((batch["labels"] != -100).sum())
        real = batch.pop("real_tokens", None)  # packed batches: the 4D mask does not say which tokens are padding
        self.tokens += int(real.sum()) if real is not None else int(batch["attention_mask"].sum())
        return batch


def train_stage(
    stage: str,
    config: TrainConfig | str,
    datasets_dir: str | Path,
    out_dir: str | Path,
    init_from: str | Path,
    *,
    data_version: str | None = None,
    tracking: bool = True,
    experiment: str = DEFAULT_EXPERIMENT,
    callbacks: list | None = None,
    resume: bool = True,
    parent_run_id: str | None = None,
) -> StageResult:
    """Fine-tune `init_from` on `<datasets_dir>/<stage>/train.jsonl` with the profile's settings for `stage`.

    data_version: the dataset's DVC hash or version string, recorded in MLflow and in the stage manifest.
    tracking: log config, data version, per-step loss and the final checkpoint to the active MLflow tracking URI.
    callbacks: extra transformers TrainerCallbacks (tests use one to interrupt a run).
    parent_run_id: an open MLflow run (a pipeline's) to nest this stage's run under.

    The recipe, one step a function: resolve the stage, read its state (resume or start afresh), return a finished
    stage as is, encode the data, build the model, open the MLflow run, build the Trainer, train, collect the
    metrics, save the plain checkpoint, write the manifest, mark the stage complete.
    """
    setup = _resolve_stage(stage, config, datasets_dir, out_dir, init_from)
    fingerprint, fingerprint_src = stage_fingerprint(stage, setup.config, datasets_dir, setup.init_from, data_version)
    state, last_checkpoint = _read_stage_state(setup, fingerprint, resume)
    finished = _finished_stage(setup, state, fingerprint)
    if finished is not None:
        return finished

    tokenizer = _load_tokenizer(setup.init_from)
    train, evaluation = _encode_data(setup, tokenizer)
    model = _build_model(setup)
    if setup.is_main:
        setup.out_dir.mkdir(parents=True, exist_ok=True)
    run = None
    if tracking and setup.is_main:
        reopen = state.get("run_id") if last_checkpoint else None
        run = _open_run(setup, reopen, experiment, parent_run_id, data_version, fingerprint_src["data_sha256"])
    if setup.is_main:
        state = {"fingerprint": fingerprint, "complete": False, "run_id": run.info.run_id if run else None}
        write_json(setup.state_path, state)

    trainer, collator = _build_trainer(setup, model, tokenizer, train, evaluation, run, callbacks, fingerprint)
    output = _train(trainer, last_checkpoint, run)
    metrics = _train_metrics(output.metrics, train, collator, trainer.state.global_step)
    if setup.master_weights:  # the stage's result is the float32 masters, not their bf16 rounding
        getattr(trainer.optimizer, "optimizer", trainer.optimizer).export_to(trainer.model)
    if evaluation is not None:
        metrics.update(_numbers(trainer.evaluate()))
    _save_model(setup, trainer, tokenizer)

    run_id = run.info.run_id if run else None
    result = StageResult(stage, setup.model_dir, metrics, setup.init_from, run_id, last_checkpoint, train.too_long_ids)
    if setup.is_main:
        _write_manifest(setup, result, fingerprint, fingerprint_src, data_version)
        if run is not None:
            _log_stage_outputs(setup, metrics, train.too_long_ids)
        state["complete"] = True
        # last: a stage counts as done only once its model and manifest are written
        write_json(setup.state_path, state)
        _clean_up(setup)
    return result


@dataclass(frozen=True)
class _StageSetup:
    """One stage's training as resolved before anything runs: what the recipe's steps share."""

    name: str
    config: TrainConfig  # the stage's own (TrainConfig.for_stage)
    settings: StageSettings  # its settings, the compute-matched control's budget resolved
    datasets_dir: Path
    out_dir: Path
    init_from: Path
    eval_enabled: bool
    args: TrainingArguments

    @property
    def role(self) -> str:
        return dataset_role(self.name)

    def data_path(self, split: str) -> Path:
        return role_dataset_path(self.datasets_dir, self.role, split)

    @property
    def checkpoints_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.out_dir / "model"

    @property
    def cache_dir(self) -> Path:
        """Datasets' Arrow copies of the role data; removed when the stage is done."""
        return self.out_dir / "cache"

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    @property
    def is_main(self) -> bool:
        return self.args.process_index == 0

    @property
    def dtype(self):
        """The dtype the weights train in. bf16: the weights themselves in bf16, float32 masters in the optimiser
        (umi.train.precision); DeepSpeed keeps its own masters from float32 weights."""
        import torch

        return weights_dtype(training_precision(self.config)) if self.config.deepspeed is None else torch.float32

    @property
    def master_weights(self) -> bool:
        import torch

        return self.dtype != torch.float32


def _resolve_stage(
    stage: str, config: TrainConfig | str, datasets_dir: str | Path, out_dir: str | Path, init_from: str | Path
) -> _StageSetup:
    """The stage's config and settings, its data checked, and its TrainingArguments (which set up torch.distributed)."""
    if stage not in TRAINABLE_STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {list(TRAINABLE_STAGES)}")
    if isinstance(config, str):
        config = load_config(config)
    config = config.for_stage(stage)
    out_dir, init_from = Path(out_dir), Path(init_from)
    settings = config.stage_settings(stage)
    if stage == CONTROL_STAGE:
        settings = control_settings(config, datasets_dir, init_from, out_dir)
    train_path = role_dataset_path(datasets_dir, dataset_role(stage), "train")
    if not train_path.exists():
        raise FileNotFoundError(f"role dataset {train_path} not found (run the data reorganisation first)")
    eval_path = role_dataset_path(datasets_dir, dataset_role(stage), "dev")
    eval_enabled = settings.eval_examples > 0 and eval_path.exists()
    # TrainingArguments first: with ZeRO-3 it makes from_pretrained below load the weights already partitioned.
    args = training_arguments(config, settings, out_dir / "checkpoints", eval_enabled=eval_enabled)
    _ = args.device  # sets up torch.distributed (lazily done otherwise): ZeRO-3 loading and process_index need it
    return _StageSetup(stage, config, settings, Path(datasets_dir), out_dir, init_from, eval_enabled, args)


def _read_stage_state(setup: _StageSetup, fingerprint: str, resume: bool) -> tuple[dict, str | None]:
    """(the stage state, the checkpoint to resume from): a stage of another fingerprint is cleared to start afresh;
    only a checkpoint marked complete, and by a run of this very fingerprint, is resumed from."""
    with setup.args.main_process_first(local=False, desc="stage state"):  # rank 0 cleans up before the others look
        state = read_state(setup.state_path)
        if state and state.get("fingerprint") != fingerprint:
            log.warning("%s: config, data or start weights changed since the last run; training afresh", setup.out_dir)
            if setup.is_main:
                shutil.rmtree(setup.checkpoints_dir, ignore_errors=True)
                shutil.rmtree(setup.model_dir, ignore_errors=True)
            state = {}
        last_checkpoint = (
            last_complete_checkpoint(setup.checkpoints_dir, {"fingerprint": fingerprint}, clean=setup.is_main)
            if resume
            else None
        )
    return state, last_checkpoint


def _finished_stage(setup: _StageSetup, state: dict, fingerprint: str) -> StageResult | None:
    """The stage's result when it is already complete with this fingerprint (nothing to train), else None."""
    manifest = read_json_or_none(setup.model_dir / STAGE_MANIFEST) if state.get("complete") else None
    if manifest is None or manifest.get("fingerprint") != fingerprint or "metrics" not in manifest:
        return None
    log.info("stage %s already complete in %s", setup.name, setup.model_dir)
    return StageResult(
        setup.name,
        setup.model_dir,
        manifest["metrics"],
        setup.init_from,
        manifest.get("run_id"),
        None,
        manifest.get("too_long_ids", []),
        skipped=True,
    )


def _load_tokenizer(init_from: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(init_from))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _encode_data(setup: _StageSetup, tokenizer) -> tuple[EncodedDataset, EncodedDataset | None]:
    """(the train data, packed where the stage packs; the dev subset it reports a loss on, or None)."""
    config, settings = setup.config, setup.settings
    with setup.args.main_process_first(local=False, desc="encoding"):  # rank 0 builds the cache, the others reuse it
        # the control draws its subset with another seed: more of the global data, not the global stage's again
        subset_seed = config.seed + (1 if setup.name == CONTROL_STAGE else 0)
        if config.packing:
            train = encode_role_dataset_packed(
                setup.data_path("train"),
                setup.role,
                tokenizer,
                config.max_length,
                examples_per_row=config.per_device_batch_size,
                pack_length=config.pack_budget(),
                max_examples=settings.max_examples,
                max_tokens=settings.max_tokens,
                seed=subset_seed,
                cache_dir=setup.cache_dir,
            )
        else:
            train = encode_role_dataset(
                setup.data_path("train"),
                setup.role,
                tokenizer,
                config.max_length,
                max_examples=settings.max_examples,
                max_tokens=settings.max_tokens,
                seed=subset_seed,
                workers=config.tokenize_workers,
                cache_dir=setup.cache_dir,
            )
        evaluation = (
            encode_role_dataset(
                setup.data_path("dev"),
                setup.role,
                tokenizer,
                config.max_length,
                max_examples=settings.eval_examples,
                seed=config.seed,
                cache_dir=setup.cache_dir,
            )
            if setup.eval_enabled
            else None
        )
    return train, evaluation


def _build_model(setup: _StageSetup):
    """The start weights in the training dtype, with LoRA adapters when the profile has them."""
    import torch
    from transformers import AutoModelForCausalLM

    config = setup.config
    model = AutoModelForCausalLM.from_pretrained(str(setup.init_from), dtype=setup.dtype)
    model.config.use_cache = False  # no generation during training; the cache only costs memory
    if config.packing:
        use_tree_attention(model)  # packed batches attend only where their tree mask lets them (same result)
    if config.lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    if setup.args.activation_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
    lora = config.lora
    torch.manual_seed(config.seed)  # LoRA's A matrices are random: the same start for the same config
    return get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )


def _open_run(
    setup: _StageSetup,
    previous_run_id: str | None,
    experiment: str,
    parent_run_id: str | None,
    data_version: str | None,
    dataset_sha256: str,
):
    """The stage's MLflow run (the interrupted one again when resuming), its params and tags logged once per run."""
    import mlflow

    config = setup.config
    run = _start_mlflow_run(previous_run_id, experiment, f"{setup.name}-{config.profile}", parent_run_id)
    if not previous_run_id:  # params are immutable in MLflow: log them once per run
        mlflow.log_params(
            {
                **_flat_params(config, setup.name, setup.settings),
                "init_from": str(setup.init_from),
                "data_version": data_version or "unknown",
                "dataset_sha256": dataset_sha256,
            }
        )
        mlflow.set_tags(
            {"umi.stage": setup.name, "umi.profile": config.profile, "umi.data_version": data_version or "unknown"}
        )
    return run


def _build_trainer(setup: _StageSetup, model, tokenizer, train, evaluation, run, callbacks, fingerprint: str):
    """(the CompletionTrainer, the collator that counts the tokens it passes)."""
    config, settings = setup.config, setup.settings
    collate = PackedCollator if config.packing else CompletionCollator
    collator = CountingCollator(collate(tokenizer.pad_token_id, pad_to_multiple_of=8 if has_gpu() else None))
    examples_total = math.ceil(train.examples * settings.epochs)
    if settings.max_steps:
        examples_total = min(examples_total, settings.max_steps * config.global_batch_size)
    all_callbacks = [
        ProgressCallback(setup.out_dir, setup.name, config.global_batch_size, examples_total),
        *(callbacks or []),
    ]
    if run is not None:
        all_callbacks.append(MlflowStageCallback(run.info.run_id))
    optimizer = (
        (MasterWeightsAdamW, CompletionTrainer.get_optimizer_cls_and_kwargs(setup.args)[1])
        if setup.master_weights
        else None
    )
    trainer = CompletionTrainer(
        model=model,
        args=setup.args,
        data_collator=collator,
        train_dataset=train.dataset,
        eval_dataset=evaluation.dataset if evaluation else None,
        processing_class=tokenizer,
        callbacks=all_callbacks,
        optimizer_cls_and_kwargs=optimizer,
    )
    trainer.checkpoint_meta = {"fingerprint": fingerprint}
    if settings.decision_weight != 1.0:
        trainer.token_weights = DecisionWeights(tokenizer, settings.decision_weight)
    return trainer, collator


def _train(trainer, last_checkpoint: str | None, run):
    """trainer.train, resumed from `last_checkpoint`; a failure ends the MLflow run as FAILED (a resume reopens it)."""
    try:
        return trainer.train(resume_from_checkpoint=last_checkpoint)
    except BaseException:
        if run is not None:
            import mlflow

            mlflow.end_run(status="FAILED")
        raise


def _numbers(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


def _train_metrics(trainer_metrics: dict, train: EncodedDataset, collator: CountingCollator, global_step: int):
    """The Trainer's numbers, the data's, throughput and the tokens and steps run."""
    metrics = _numbers(trainer_metrics)
    metrics.update({f"data_{k}": float(v) for k, v in dataset_stats(train).items()})
    runtime = metrics.get("train_runtime") or 0.0
    if runtime > 0:
        metrics["target_tokens_per_second"] = collator.target_tokens / runtime
        metrics["tokens_per_second"] = collator.tokens / runtime
    metrics["tokens_trained"] = float(collator.tokens)  # what the model ran over (packed: shared tokens once)
    metrics["global_step"] = float(global_step)
    return metrics


def _save_model(setup: _StageSetup, trainer, tokenizer) -> None:
    """The final plain checkpoint, LoRA merged in. ZeRO-3: save_model gathers the 16-bit weights on every rank, rank 0
    writes."""
    if setup.config.lora is not None:
        if setup.is_main:
            merged = trainer.model.merge_and_unload()
            merged.config.use_cache = True
            merged.save_pretrained(setup.model_dir)
            tokenizer.save_pretrained(setup.model_dir)
    else:
        trainer.model.config.use_cache = True
        trainer.save_model(str(setup.model_dir))
    trainer.accelerator.wait_for_everyone()


def _write_manifest(
    setup: _StageSetup, result: StageResult, fingerprint: str, fingerprint_src: dict, data_version: str | None
) -> None:
    manifest = {
        "stage": setup.name,
        "profile": setup.config.profile,
        "init_from": str(setup.init_from),
        "init_fingerprint": fingerprint_src["init"],
        "data_version": data_version,
        "dataset_sha256": fingerprint_src["data_sha256"],
        "fingerprint": fingerprint,
        "config": setup.config.model_dump(mode="json"),
        "metrics": result.metrics,
        "run_id": result.run_id,
        "resumed_from": result.resumed_from,
        "too_long_ids": result.too_long_ids,
        prompts.PROMPT_FORMAT_KEY: dataset_prompt_format(setup.datasets_dir),
        "split": dataset_split(setup.datasets_dir),
    }
    write_json(setup.model_dir / STAGE_MANIFEST, manifest)


def _log_stage_outputs(setup: _StageSetup, metrics: dict[str, float], too_long_ids: list[str]) -> None:
    """The stage's final metrics, what it left out and its checkpoint (or manifest) into its MLflow run, then end it."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith(("data_", "eval_", "target_", "tokens_"))})
    if too_long_ids:
        mlflow.log_text("\n".join(too_long_ids) + "\n", "too_long_ids.txt")
    if setup.config.log_model_artifact:
        mlflow.log_artifacts(str(setup.model_dir), artifact_path="model")
    else:
        mlflow.log_artifact(str(setup.model_dir / STAGE_MANIFEST), artifact_path="model")
    mlflow.end_run()


def _clean_up(setup: _StageSetup) -> None:
    """What only a resume or the encoding needed: the optimiser states (3x the model) and the Arrow caches."""
    if not setup.config.keep_checkpoints:
        shutil.rmtree(setup.checkpoints_dir, ignore_errors=True)
    shutil.rmtree(setup.cache_dir, ignore_errors=True)


def train_glpft(
    config: TrainConfig | str,
    datasets_dir: str | Path,
    out_root: str | Path,
    backbone: str | Path,
    *,
    stages: tuple[str, ...] = STAGES,
    from_backbone: bool = False,
    data_version: str | dict[str, str] | None = None,
    tracking: bool = True,
    experiment: str = DEFAULT_EXPERIMENT,
    callbacks: dict[str, list] | None = None,
) -> dict[str, StageResult]:
    """Global first, then each local stage from the global model (or, with from_backbone, the one-stage ablation:
    each local stage straight from the backbone and no global stage), then the compute-matched control when
    `stages` names it (CONTROL_STAGE: the global model trained on for the local stages' budget). Stage directories:
    `<out_root>/<stage>`. Called again on the same folders it continues where it stopped: finished stages are
    skipped, an interrupted one resumes from its last complete checkpoint. callbacks: {stage: TrainerCallbacks}."""
    if isinstance(config, str):
        config = load_config(config)
    unknown = [s for s in stages if s not in TRAINABLE_STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known {list(TRAINABLE_STAGES)}")
    out_root = Path(out_root)
    results: dict[str, StageResult] = {}

    def version(stage: str) -> str | None:
        return data_version.get(stage) if isinstance(data_version, dict) else data_version

    def train(stage: str, init_from: Path) -> StageResult:
        return train_stage(
            stage,
            config,
            datasets_dir,
            out_root / stage,
            init_from,
            data_version=version(dataset_role(stage)),
            tracking=tracking,
            experiment=experiment,
            callbacks=(callbacks or {}).get(stage),
        )

    if from_backbone and CONTROL_STAGE in stages:
        raise ValueError("the compute-matched control continues the global model: not part of the one-stage ablation")
    global_model = Path(backbone)
    if not from_backbone and "global" in stages:
        results["global"] = train("global", Path(backbone))
        global_model = results["global"].checkpoint
    elif not from_backbone:
        global_model = out_root / "global" / "model"
        if not (global_model / STAGE_MANIFEST).exists():
            raise FileNotFoundError(f"local stages start from the global model, but {global_model} is not trained yet")
    for stage in (s for s in (*LOCAL_STAGES, CONTROL_STAGE) if s in stages):
        results[stage] = train(stage, global_model)
    return results
