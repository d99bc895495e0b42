"""The fine-tuning engine: role datasets -> tokenised datasets -> transformers Trainer, with MLflow logging.

What makes it cheaper than the reference recipe (pad every example to 4096 tokens):
- dynamic padding: a batch is padded only to its own longest example (CompletionCollator);
- length grouping: the Trainer's `group_by_length` sampler puts examples of similar length in the same optimiser step,
  so that longest example is close to the others.
Precision follows umi.train.precision (`auto`: bf16 autocast on a GPU, bf16 weights with float32 master weights on a
CPU with native bf16, float32 elsewhere). Gradient checkpointing is switched on only where a GPU is present: on CPU
activation memory is not the constraint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from umi.inference.tokens import TooLong, text_ids
from umi.prompts import planner_target
from umi.schema import RecordError
from umi.train.config import StageSettings, TrainConfig
from umi.train.precision import Precision, resolve_precision
from umi.train.tokenize import IGNORE_INDEX, encode_example

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "prompt", "target", "history_span")


@dataclass
class EncodedDataset:
    """A tokenised role dataset plus what was left out (ids of examples too long for the budget).

    Per-step: one row per example (input_ids, labels, length). Packed: one row per micro-batch of
    `per_device_batch_size` examples, its packed sequences as lists (umi.train.packing); counts are of examples.
    """

    dataset: object  # datasets.Dataset
    too_long_ids: list[str] = field(default_factory=list)
    truncated_examples: int = 0  # examples that lost history turns to the budget
    source_examples: int = 0
    example_lengths: list[int] = field(default_factory=list)  # per-step tokens of each example kept
    target_tokens: int = 0
    packed_tokens: int | None = None  # tokens of the packed sequences (None: not packed)
    fallback_examples: int = 0  # packed as their own per-step sequence (a tokenisation boundary; see packing)

    @property
    def examples(self) -> int:
        return len(self.example_lengths)

    @property
    def tokens(self) -> int:
        """Tokens of the examples as per-step sequences (what the per-step engine would process)."""
        return int(sum(self.example_lengths))


def role_dataset_path(datasets_dir: str | Path, role: str, split: str) -> Path:
    return Path(datasets_dir) / role / f"{split}.jsonl"


def _read_records(path: str, role: str, stamp: tuple = ()):
    """Validated records of a role dataset, one at a time. `stamp` (size, mtime) only keys datasets' cache."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(where, f"invalid JSON: {e}") from None
            if not isinstance(rec, dict):
                raise RecordError(where, "not a JSON object")
            record_id = str(rec.get("id", where))
            missing = [k for k in REQUIRED_FIELDS if k not in rec]
            if missing:
                raise RecordError(record_id, f"missing field(s) {missing}")
            if rec.get("role", role) != role:
                raise RecordError(record_id, f"role {rec.get('role')!r} in the {role} dataset")
            trajectory = rec.get("trajectory_id") or record_id.rsplit("#", 1)[0]
            yield {
                "id": record_id,
                "trajectory_id": str(trajectory),
                "prompt": rec["prompt"],
                "target": rec["target"],
                "history_span": [int(x) for x in rec["history_span"]],
            }


def _load_records(path: str | Path, role: str, cache_dir: str | Path | None):
    """The validated records of a role dataset as a datasets.Dataset (an Arrow file in datasets' cache)."""
    import datasets
    import datasets.exceptions

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"role dataset {path} not found (run the data reorganisation first)")
    # Streamed into an Arrow file on disk (datasets' cache), not a Python list: memory stays flat for ToolBench-size
    # datasets (several GB of prompts) on every rank.
    with path.open(encoding="utf-8") as f:
        if not any(line.strip() for line in f):
            raise ValueError(f"{path}: no examples")
    stat = path.stat()
    try:
        ds = datasets.Dataset.from_generator(
            _read_records,
            gen_kwargs={"path": str(path), "role": role, "stamp": (stat.st_size, stat.st_mtime_ns)},
            cache_dir=str(cache_dir) if cache_dir else None,
        )
    except datasets.exceptions.DatasetGenerationError as e:
        if isinstance(e.__cause__, RecordError):
            raise e.__cause__ from None  # the bad record's id, not datasets' generic message
        raise
    return ds


def _warn_too_long(path: str | Path, too_long_ids: list[str], max_length: int) -> None:
    shown = ", ".join(too_long_ids[:10]) + (" ..." if len(too_long_ids) > 10 else "")
    log.warning(
        "%s: %d example(s) longer than %d tokens without history, left out: %s",
        path,
        len(too_long_ids),
        max_length,
        shown,
    )


def encode_role_dataset(
    path: str | Path,
    role: str,
    tokenizer,
    max_length: int,
    *,
    max_examples: int | None = None,
    max_tokens: int | None = None,
    seed: int = 42,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> EncodedDataset:
    """Read `<role>/<split>.jsonl`, take a seeded subset if asked, encode every example completion-only.

    max_examples: a seeded random subset of that many examples.
    max_tokens: a seeded random subset whose encoded lengths add up to at most that many tokens (a compute budget
    that does not depend on how long the dataset's examples are; the CPU profile uses it).
    cache_dir: where datasets keeps the Arrow copy (default: its own cache under ~/.cache/huggingface).

    Examples that do not fit even with the whole history dropped are left out and reported by id (warning + the
    returned `too_long_ids`); if none fits, that is an error.
    """
    ds = _load_records(path, role, cache_dir)
    source_examples = len(ds)
    if max_examples is not None and max_examples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_examples))

    def encode(rec):
        return _encoded_columns(tokenizer, rec, max_length)

    if max_tokens is not None:
        ds = _token_budget_subset(ds, encode, max_tokens, seed)
    else:
        ds = ds.map(encode, num_proc=workers, desc=f"encoding {role}", load_from_cache_file=False)
    too_long_ids = [rid for rid, bad in zip(ds["id"], ds["too_long"]) if bad]
    if too_long_ids:
        _warn_too_long(path, too_long_ids, max_length)
        ds = ds.filter(lambda bad: not bad, input_columns="too_long")
    if len(ds) == 0:
        raise ValueError(f"{path}: every example is longer than max_length={max_length} tokens even without history")
    truncated = int(sum(1 for d in ds["dropped_turns"] if d))
    ds = ds.remove_columns([c for c in ds.column_names if c not in ("input_ids", "labels", "length", "target_tokens")])
    return EncodedDataset(
        ds,
        too_long_ids,
        truncated,
        source_examples,
        example_lengths=list(ds["length"]),
        target_tokens=int(sum(ds["target_tokens"])),
    )


def _encoded_columns(tokenizer, rec: dict, max_length: int) -> dict:
    """One record's per-step encoding as dataset columns (an example too long even without history: `too_long`)."""
    try:
        enc = encode_example(tokenizer, rec["prompt"], rec["target"], rec["history_span"], max_length, rec["id"])
    except TooLong:
        return {"input_ids": [], "labels": [], "length": 0, "target_tokens": 0, "dropped_turns": 0, "too_long": True}
    return {
        "input_ids": enc.input_ids,
        "labels": enc.labels,
        "length": len(enc.input_ids),
        "target_tokens": enc.target_tokens,
        "dropped_turns": enc.dropped_turns,
        "too_long": False,
    }


def _token_budget_subset(ds, encode, max_tokens: int, seed: int):
    """Records encoded in a seeded random order until their lengths fill `max_tokens`: only as many examples as the
    budget takes are encoded. Too-long examples are kept, marked, for the caller to report."""
    import datasets

    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    rows, total = [], 0
    for i in order:
        row = {**ds[i], **encode(ds[i])}
        if not row["too_long"] and total + row["length"] > max_tokens:
            if rows:
                break
        rows.append(row)
        total += row["length"]
    return datasets.Dataset.from_list(rows)


def encode_role_dataset_packed(
    path: str | Path,
    role: str,
    tokenizer,
    max_length: int,
    *,
    examples_per_row: int,
    pack_length: int,
    max_examples: int | None = None,
    max_tokens: int | None = None,
    seed: int = 42,
    cache_dir: str | Path | None = None,
) -> EncodedDataset:
    """The role dataset as tree-packed micro-batches (umi.train.packing): one row per `examples_per_row` examples.

    Every example is the per-step one (encode_example with `max_length`: same history cut, same labels). Examples
    are taken whole trajectory by whole trajectory in a seeded random order of trajectories (each trajectory's
    examples in file, i.e. step, order), so that a micro-batch holds the steps of one trajectory and shares their
    docs and history. max_examples: the subset ends at that many examples. max_tokens: a compute budget, as in
    encode_role_dataset, of the tokens the model runs over: here the packed tokens (shared docs and history
    counted once), so the same budget costs about the same time packed or not and buys more examples packed.
    Both subsets are drawn by trajectory instead of by example.
    """
    import datasets

    from umi.train.packing import packed_row

    ds = _load_records(path, role, cache_dir)
    examples, too_long_ids = _packed_subset(
        ds, tokenizer, max_length, examples_per_row=examples_per_row, pack_length=pack_length,
        max_examples=max_examples, max_tokens=max_tokens, seed=seed,
    )  # fmt: skip
    if too_long_ids:
        _warn_too_long(path, too_long_ids, max_length)
    if not examples:
        raise ValueError(f"{path}: every example is longer than max_length={max_length} tokens even without history")
    rows = [
        packed_row(examples[at : at + examples_per_row], pack_length)
        for at in range(0, len(examples), examples_per_row)
    ]
    return EncodedDataset(
        datasets.Dataset.from_list(rows),
        too_long_ids,
        truncated_examples=sum(1 for ex in examples if ex.encoded.dropped_turns),
        source_examples=len(ds),
        example_lengths=[ex.length for ex in examples],
        target_tokens=sum(ex.target_tokens for ex in examples),
        packed_tokens=sum(r["length"] for r in rows),
        fallback_examples=sum(1 for ex in examples if ex.fallback),
    )


def _packed_subset(
    ds,
    tokenizer,
    max_length: int,
    *,
    examples_per_row: int,
    pack_length: int,
    max_examples: int | None,
    max_tokens: int | None,
    seed: int,
) -> tuple[list, list[str]]:
    """(the examples taken, in micro-batch order; the ids of those too long even without history): whole
    trajectories in a seeded random order until `max_examples` or the packed-token budget `max_tokens` is reached."""
    from umi.train.packing import pack, tree_example

    groups: dict[str, list[int]] = {}
    for i, trajectory in enumerate(ds["trajectory_id"]):
        groups.setdefault(trajectory, []).append(i)
    order = list(groups)
    random.Random(seed).shuffle(order)

    def packed_tokens(row: list) -> int:
        return sum(len(seq.input_ids) for seq in pack(row, pack_length))

    examples, too_long_ids = [], []
    closed_tokens, row = 0, []  # packed tokens of the finished micro-batches; the micro-batch being filled
    for trajectory in order:
        cache: dict = {}  # this trajectory's head and turns, tokenised once
        for i in groups[trajectory]:
            rec = ds[i]
            try:
                ex = tree_example(
                    tokenizer, rec["prompt"], rec["target"], rec["history_span"], max_length, rec["id"], cache
                )
            except TooLong:
                too_long_ids.append(rec["id"])
                continue
            if max_tokens is not None and examples and closed_tokens + packed_tokens([*row, ex]) > max_tokens:
                return examples, too_long_ids
            examples.append(ex)
            row.append(ex)
            if len(row) == examples_per_row:
                closed_tokens, row = closed_tokens + packed_tokens(row), []
            if max_examples is not None and len(examples) >= max_examples:
                return examples, too_long_ids
    return examples, too_long_ids


def has_gpu() -> bool:
    return torch.cuda.is_available()


def training_precision(config: TrainConfig) -> Precision:
    """The arithmetic a stage of `config` trains in on this machine (umi.train.precision)."""
    return resolve_precision(config.precision)


def use_gradient_checkpointing(config: TrainConfig) -> bool:
    return config.gradient_checkpointing == "on" or (config.gradient_checkpointing == "auto" and has_gpu())


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _deepspeed_on_cpu_state() -> bool:
    """DeepSpeed without a GPU (DS_ACCELERATOR=cpu; tests, CPU-only checks): set up accelerate's process state by hand.

    accelerate only knows a communication backend for DeepSpeed on GPU-like devices; on CPU it initialises
    torch.distributed through DeepSpeed but then records "no backend", i.e. one process, so every rank would train
    on the whole dataset alone. Naming gloo here gives it the real world size and rank. Returns True when done, and
    the Trainer is then told to use this state.
    """
    if has_gpu() or world_size() <= 1:
        return False
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        state = PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    if state.distributed_type != DistributedType.DEEPSPEED or state.num_processes != world_size():
        raise RuntimeError(f"could not set up DeepSpeed on CPU: {state}")
    return True


def training_arguments(
    config: TrainConfig, stage: StageSettings, checkpoints_dir: str | Path, *, eval_enabled: bool = False
) -> TrainingArguments:
    """The Trainer arguments for one stage. Create these BEFORE loading the model: under ZeRO-3 that makes
    from_pretrained partition the weights across ranks as it loads them."""
    ds_path = config.deepspeed_path()
    gpu = has_gpu()
    mode = training_precision(config)
    configured_state = ds_path is not None and _deepspeed_on_cpu_state()
    return TrainingArguments(
        accelerator_config={"use_configured_state": configured_state},
        output_dir=str(checkpoints_dir),
        # packed: a train row is a whole micro-batch of per_device_batch_size examples; evaluation stays per-step
        per_device_train_batch_size=1 if config.packing else config.per_device_batch_size,
        # the dev loss is the mean of per-example losses: comparable across batch sizes and packing on or off
        per_device_eval_batch_size=1,
        gradient_accumulation_steps=config.gradient_accumulation(world_size()),
        num_train_epochs=stage.epochs,
        max_steps=stage.max_steps or -1,
        learning_rate=stage.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=stage.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=stage.weight_decay,
        # autocast; bf16 weights bring their own master weights (MasterWeightsAdamW), or DeepSpeed's bf16 engine
        bf16=mode == "bf16-autocast" or (mode == "bf16" and ds_path is not None),
        activation_checkpointing=use_gradient_checkpointing(config),
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="no",
        report_to="none",  # MLflow is logged by MlflowStageCallback, into the run the stage opened
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        remove_unused_columns=False,
        seed=config.seed,
        data_seed=config.seed,
        deepspeed=str(ds_path) if ds_path else None,
        use_cpu=not gpu and ds_path is None,  # with DeepSpeed the accelerator (DS_ACCELERATOR=cpu) decides
        dataloader_num_workers=0,
        dataloader_pin_memory=gpu,
        disable_tqdm=True,
        do_eval=eval_enabled,
        prediction_loss_only=True,
    )


class DecisionWeights:
    """Per-token loss weights that make the planner's decision count `weight` times: the label positions spelling
    ` Next: caller.` / ` Next: conclusion.` / ` Next: give up.` followed by EOS (the end of every planner target;
    found in the labels, so it works the same packed or not). Every other target token weighs 1."""

    def __init__(self, tokenizer, weight: float):
        import typing

        from umi.schema import Decision

        self.weight = float(weight)
        self.patterns = [
            torch.tensor([*text_ids(tokenizer, planner_target("", d)), tokenizer.eos_token_id])
            for d in typing.get_args(Decision)
        ]

    def __call__(self, labels: "torch.Tensor") -> "torch.Tensor":
        weights = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
        for pattern in self.patterns:
            k = len(pattern)
            if labels.shape[1] < k:
                continue
            found = (labels.unfold(1, k, 1) == pattern.to(labels.device)).all(-1).nonzero()  # (row, start)
            if len(found):
                cols = found[:, 1:] + torch.arange(k - 1, device=labels.device)  # the decision; EOS keeps 1
                weights[found[:, :1].expand_as(cols), cols] = self.weight
        return weights


def completion_loss(model, inputs: dict, num_items_in_batch=None, token_weights: DecisionWeights | None = None):
    """Cross-entropy over the target tokens only, computing logits only where a target token is predicted.

    The prompt is most of every example (tool docs + history) but contributes no loss, so projecting its hidden
    states onto the vocabulary is wasted work (and, on GPUs, the largest activation: positions x vocab floats).
    `logits_to_keep` (a tensor of sequence positions) makes the model apply its LM head only at the positions whose
    next token is supervised in at least one row of the batch. Same loss as the full computation, up to float order.
    Returns (loss summed over target tokens / normaliser, outputs); the normaliser is `num_items_in_batch` when the
    Trainer counted the tokens of the whole accumulated batch, else this batch's own target count. So the loss is
    a per-TOKEN mean over the optimiser step (every target token of the step weighs the same, a long target more
    than a short one), packed or not. Packed batches (umi.train.packing) bring a 4D tree mask and position ids.
    token_weights: while the model trains, each target token's loss is multiplied by its weight (DecisionWeights);
    the normaliser stays the token count, so a weighted token simply counts more. Evaluation stays unweighted.
    """
    labels = inputs["labels"]
    next_labels = labels[:, 1:]
    keep = (next_labels != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    # packed: tree positions, and the layout tree attention computes only the visible blocks from (umi.train.packing)
    extra = {k: inputs[k] for k in ("position_ids", "tree_layout") if k in inputs}
    outputs = model(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep, **extra
    )
    logits = outputs.logits
    targets = next_labels[:, keep]
    weighted = token_weights is not None and model.training
    token_losses = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none" if weighted else "sum",
    )
    if weighted:
        loss_sum = (token_losses * token_weights(next_labels)[:, keep].reshape(-1)).sum()
    else:
        loss_sum = token_losses
    if num_items_in_batch is None:
        normaliser = (targets != IGNORE_INDEX).sum().clamp(min=1)
    else:
        normaliser = num_items_in_batch
    if torch.is_tensor(normaliser):
        normaliser = normaliser.to(loss_sum.device)
    return loss_sum / normaliser, outputs


def _dev_sample(model_dir: str | Path, role: str, datasets_dir: str | Path, n: int, seed: int):
    """(tokenizer, float32 model in eval mode, the seeded sample of `n` dev examples of `role` a stage's
    `eval_examples` draws: encode_role_dataset's selection)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    records = _load_records(role_dataset_path(datasets_dir, role, "dev"), role, None)
    if n < len(records):
        records = records.shuffle(seed=seed).select(range(n))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return tokenizer, model, records


def _target_loss(model, tokenizer, rec: dict, target: str, max_length: int) -> tuple[float, int] | None:
    """(mean loss, target tokens) of `target` after the record's prompt; None when it does not fit."""
    from umi.train.tokenize import CompletionCollator

    try:
        enc = encode_example(tokenizer, rec["prompt"], target, rec["history_span"], max_length, rec["id"])
    except TooLong:
        return None
    batch = CompletionCollator(tokenizer.pad_token_id)([{"input_ids": enc.input_ids, "labels": enc.labels}])
    with torch.no_grad():
        loss, _ = completion_loss(model, batch)
    return float(loss), enc.target_tokens


def dev_example_losses(
    model_dir: str | Path, role: str, datasets_dir: str | Path, max_length: int, n: int, seed: int = 42
) -> list[tuple[str, float]]:
    """(trajectory id, mean target-token loss) of each of `n` dev examples of `role` (the seeded sample a stage's
    `eval_examples` draws, encode_role_dataset's selection), in float32: what recipe sweeps and the precision
    benchmark compare, per example, so that a difference gets a paired interval clustered by trajectory."""
    tokenizer, model, records = _dev_sample(model_dir, role, datasets_dir, n, seed)
    losses = []
    for rec in records:
        scored = _target_loss(model, tokenizer, rec, rec["target"], max_length)
        if scored is not None:
            losses.append((rec["trajectory_id"], scored[0]))
    return losses


def dev_decision_choices(
    model_dir: str | Path, datasets_dir: str | Path, max_length: int, n: int, seed: int = 42
) -> list[tuple[str, float]]:
    """(trajectory id, 1.0 or 0.0) per planner dev example (dev_example_losses's sample): does the planner, given the
    gold rationale, rank the gold decision first among ` Next: caller.` / `conclusion` / `give up` (the lowest target
    loss)? A teacher-forced, generation-free proxy of Plan ACC for recipe choices such as decision_weight."""
    import typing

    from umi.schema import Decision

    tokenizer, model, records = _dev_sample(model_dir, "planner", datasets_dir, n, seed)
    suffixes = [planner_target("", d) for d in typing.get_args(Decision)]  # ` Next: caller.` ...
    choices = []
    for rec in records:
        gold = rec["target"]
        ending = next((x for x in suffixes if gold.endswith(x)), None)
        if ending is None:
            continue
        rationale, scores = gold[: -len(ending)], {}
        for suffix in suffixes:
            scored = _target_loss(model, tokenizer, rec, rationale + suffix, max_length)
            if scored is not None:
                scores[suffix] = scored[0] * scored[1]  # summed loss: the shared rationale adds the same to each
        if len(scores) == len(suffixes):
            choices.append((rec["trajectory_id"], float(min(scores, key=scores.get) == ending)))
    return choices


CHECKPOINT_COMPLETE = "umi_checkpoint_complete.json"  # written last into a Trainer checkpoint: it is whole


def _fsync_tree(folder: str | Path) -> None:
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())


def checkpoint_is_complete(folder: str | Path, meta: dict | None = None) -> bool:
    """Whether a Trainer checkpoint carries its completeness marker (and, if given, the same `meta` in it)."""
    try:
        marker = json.loads((Path(folder) / CHECKPOINT_COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return meta is None or all(marker.get(k) == v for k, v in meta.items())


def last_complete_checkpoint(
    checkpoints_dir: str | Path, meta: dict | None = None, *, clean: bool = False
) -> str | None:
    """The newest `checkpoint-<step>` with its completeness marker (matching `meta`); a checkpoint without one
    (killed or out of disk during its save) never counts. clean: remove those that do not count (the main process,
    before resuming, so the Trainer's rotation and a later save of the same step never meet them)."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if not (path.is_dir() and step.isdigit()):
            continue
        if checkpoint_is_complete(path, meta):
            found.append((int(step), path))
        else:
            log.warning("%s is incomplete (no %s): not resumed from", path, CHECKPOINT_COMPLETE)
            if clean:
                import shutil

                shutil.rmtree(path, ignore_errors=True)
    return str(max(found)[1]) if found else None


class CompletionTrainer(Trainer):
    """transformers' Trainer with `completion_loss`: the LM head runs on target positions only; every checkpoint
    it saves is fsynced and then marked complete (`CHECKPOINT_COMPLETE`, holding `checkpoint_meta`), and the
    older ones are rotated out only after that, so a kill during a save leaves the previous checkpoint to resume."""

    checkpoint_meta: dict = {}
    token_weights: DecisionWeights | None = None  # the planner's decision weighting (StageSettings.decision_weight)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        from umi.atomic import write_json

        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # no rotation before this checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self.accelerator.wait_for_everyone()  # every rank's shards are written
        if self.args.should_save:
            _fsync_tree(folder)
            write_json(folder / CHECKPOINT_COMPLETE, {"step": self.state.global_step, **self.checkpoint_meta})
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = completion_loss(model, inputs, num_items_in_batch, self.token_weights)
        # Normalised by the token count of the whole accumulated batch: tell training_step not to divide again.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch was summed over all ranks while gradients are averaged over them (as Trainer does)
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The schedule of N + 1 steps, read from its second step. transformers' warmup starts at lr 0, so the first
        optimiser step would change nothing: a tenth of a 10-step CPU stage. Shifting by one keeps warmup, cosine decay
        and a non-zero last step."""
        if self.lr_scheduler is None:
            scheduler = super().create_scheduler(num_training_steps + 1, optimizer)
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                scheduler.lr_lambdas = [_shifted(f) for f in scheduler.lr_lambdas]
                scheduler._last_lr = [base * f(0) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
                for group, lr in zip(scheduler.optimizer.param_groups, scheduler._last_lr):
                    group["lr"] = lr
        return self.lr_scheduler


def _shifted(lr_lambda):
    return lambda step: lr_lambda(step + 1)


class MlflowStageCallback(TrainerCallback):
    """Logs every Trainer log entry (loss, learning rate, grad norm, ...) as MLflow metrics at the global step."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        import time

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        metrics = [
            Metric(key=k, value=float(v), timestamp=now, step=state.global_step)
            for k, v in logs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if metrics:
            MlflowClient().log_batch(self.run_id, metrics=metrics)


def dataset_stats(encoded: EncodedDataset) -> dict[str, float]:
    lengths = encoded.example_lengths
    stats = {
        "examples": encoded.examples,
        "examples_source": encoded.source_examples,
        "examples_too_long": len(encoded.too_long_ids),
        "examples_history_truncated": encoded.truncated_examples,
        "tokens": encoded.tokens,
        "target_tokens": encoded.target_tokens,
        "mean_length": sum(lengths) / len(lengths),
        "max_length_seen": max(lengths),
    }
    if encoded.packed_tokens is not None:
        stats.update(
            packed_tokens=encoded.packed_tokens,
            packed_rows=len(encoded.dataset),
            examples_packing_fallback=encoded.fallback_examples,
            packing_token_ratio=encoded.tokens / max(encoded.packed_tokens, 1),
        )
    return stats
