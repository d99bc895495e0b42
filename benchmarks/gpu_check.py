"""The GPU path, run once: train, evaluate and serve on one CUDA device and print what it reached (issue 30).

    python benchmarks/gpu_check.py --json gpu-check.json     # on a CUDA machine: SmolLM2-135M's shape, bf16
    python benchmarks/gpu_check.py --model tiny --steps 4    # anywhere (tests/model/test_gpu_check.py runs this)
    bash benchmarks/gpu_check.sh wheels                      # here, once: the wheels the device machine lacks
    bash benchmarks/gpu_check.sh run                         # there: install them, run this, JSON and log to $OUT

No line of umi had run on a GPU: bf16 and activation checkpointing switch on only where CUDA is present, tree
packing's attention was built and measured on CPU, and the generation backend and the service had never seen a CUDA
device. This script runs each of those once, on a model of SmolLM2-135M's shape initialised in code (no weights
travel) and the committed sample of the real BFCL role data (benchmarks/data/gpu_check/, made by --write-sample):

1. train: the global stage's engine as umi.train.stages assembles it (training_arguments of the `paper` profile
   without DeepSpeed, CompletionTrainer, the per-step CompletionCollator, or tree packing's PackedCollator and tree
   attention) for a fixed number of optimiser steps, packing off and on, from the same initial weights, over whole
   epochs of the same examples. Per arm, after the warm-up steps: target tokens/s, tokens/s and, on CUDA, the model
   FLOPs utilisation: 6 x parameters x tokens the model ran, over the GPU's dense bf16 peak (PaLM's count: the
   attention score and value products and activation checkpointing's recomputation are not counted; the tied LM head
   is counted at every token although completion_loss applies it at target positions only). Then packed / per-step.
2. loss: on one optimiser step's examples, packed and per-step loss and gradients agree: in fp32, and in bf16
   autocast as the Trainer trains on CUDA, within the stated tolerances (the packed arm's trained model).
3. generate: that model saved and loaded by umi's inference rule (umi.inference.loading.load_backend: CUDA, bf16)
   decodes a fixed number of tokens for each of 64 BFCL test planner prompts at batch 1 and at batch 32
   (generate_batch, static evaluation's path); new tokens/s of each.
4. serve: the service's app (create_app over build_engine, the BentoML service's own engine, in-process through
   Starlette's TestClient) answers one /v1/chat/completions turn with a tool call. A model trained for seconds writes
   no tool call, so the turn's planner and caller outputs are taught to it first: their prompts recorded through the
   same app over a scripted backend, then fine-tuned (completion_loss) until the loss is near zero. The served turn
   then shows that training's tokenisation, the inference loader and the service's prompts agree on the device.

Each check ends ok, failed (with the error) or skipped (with the reason: no CUDA device, a package missing); the
JSON (--json) is rewritten after every check, so a run stopped by a time limit still leaves what it reached. Exit
status 1 if a check failed. Off CUDA the engine's own policy trains in fp32 without activation checkpointing, there
is no bf16 peak to measure against, and the bf16 loss comparison is skipped: each is said in `skipped`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "benchmarks" / "data" / "gpu_check"
TRAIN_SAMPLE = "global_train.jsonl.gz"  # whole trajectories of the global role's train split
PROMPT_SAMPLE = "planner_test.jsonl.gz"  # planner prompts of the test split
TOKENIZER_FILE = "tokenizer.json.gz"  # SmolLM2-135M-Instruct's tokenizer, as `umi backbone import` saves it
MANIFEST = "sample.json"  # how the sample was made, and the tokenizer's special tokens

# Dense bf16 peak (TFLOP/s, no sparsity) by device name; the first substring found in torch's device name wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("GH200", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)

MODEL_SHAPES = {
    # SmolLM2-135M (artifacts/backbone/config.json): 134.5M parameters with the tied embedding
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5),
    # the CPU run of the test suite: same tokenizer and vocabulary, two narrow layers
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, rope_theta=100000.0, rms_norm_eps=1e-5),
}  # fmt: skip

# The check's one chat turn: a client-side tool, what the planner and caller are taught to write for it.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city"}},
            "required": ["city"],
        },
    },
}
CHAT_QUESTION = "What is the weather in Paris?"
PLANNER_TEXT = "I should call get_weather for Paris.\n Next: caller."
CALLER_TEXT = 'Action: get_weather\nAction Input: {"city": "Paris"}'
CHECKS = ("train", "loss", "generate", "serve")

# What the device machine lacks or has in other versions than requirements.lock: `--wheel-list` gives these with
# their dependencies at the installed (locked) versions, torch and numpy left out (the machine's own CUDA builds).
CARRIED = ("transformers", "accelerate", "peft", "pydantic", "pydantic-settings", "fastapi", "starlette",
           "jsonschema", "httpx", "pyyaml")  # fmt: skip
NOT_CARRIED = ("torch", "numpy")


# --- small helpers ------------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_gz(path: Path, data: bytes) -> None:
    """gzip without a timestamp: the same input gives the same bytes (a reproducible committed sample)."""
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
        f.write(data)


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value, f"table: {key}"
    return None, f"{device_name!r} is not in the table: pass --peak-tflops"


def cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class CheckFailed(Exception):
    """A check that failed after measuring something: `result` is kept in the JSON beside the error."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


class Report:
    """The run's figures: every check's result, `skipped` reasons, failures; written to --json after each check."""

    def __init__(self, path: Path | None, argv: list[str]):
        self.path = path
        self.data: dict = {
            "script": "benchmarks/gpu_check.py",
            "argv": argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checks": {},
            "skipped": {},
            "failed": [],
        }

    def skip(self, what: str, reason: str) -> None:
        self.data["skipped"][what] = reason
        log(f"skipped {what}: {reason}")

    def write(self) -> None:
        self.data["ok"] = not self.data["failed"]
        if self.path is not None:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")
            tmp.replace(self.path)

    def run(self, name: str, fn, *args, **kwargs):
        """Run one check: its result under checks[name] with its status and seconds; an exception is a failure."""
        log(f"{name} ...")
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
            entry = {"status": "ok", **(result or {})}
        except Exception as e:  # noqa: BLE001 -- any failure is reported, the remaining checks still run
            traceback.print_exc()
            partial = e.result if isinstance(e, CheckFailed) else {}
            entry = {"status": "failed", "error": f"{type(e).__name__}: {e}", **partial}
            self.data["failed"].append(name)
            result = None
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.data["checks"][name] = entry
        log(f"{name}: {entry['status']} ({entry['seconds']} s)")
        self.write()
        return result


# --- environment --------------------------------------------------------------------------------------------------
SERVICE_MODULES = ("fastapi", "starlette.testclient", "pydantic_settings", "jsonschema")
CORE_MODULES = ("umi.train.engine", "umi.train.stages", "umi.train.packing", "umi.inference.transformers_backend")


def missing_modules(names) -> dict[str, str]:
    import importlib

    missing = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 -- ImportError, or a package broken against this torch
            missing[name] = f"{type(e).__name__}: {e}"
    return missing


def environment() -> dict:
    import importlib.metadata as md

    import torch

    versions = {}
    for dist in ("torch", "transformers", "tokenizers", "accelerate", "peft", "pydantic", "fastapi", "starlette"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    env = {"python": platform.python_version(), "machine": platform.machine(), "versions": versions}
    env["cuda"] = torch.cuda.is_available()
    if env["cuda"]:
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=torch.cuda.get_device_name(0),
            device_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda_version=torch.version.cuda,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        env["device_name"] = "cpu"
        env["cpu_threads"] = torch.get_num_threads()
    return env


def check_imports(args) -> int:
    """What `gpu_check.sh run` asks before the real run: exit 0 when training and generation import (the wheels
    installed fit this machine's torch) and, with CUDA, one packed and one per-step bf16 step of a two-layer model
    runs there; the service's packages are only reported."""
    env = environment()
    print(json.dumps(env, indent=2))
    missing = missing_modules(CORE_MODULES)
    for name, why in missing.items():
        print(f"cannot import {name}: {why}")
    for name, why in missing_modules(SERVICE_MODULES).items():
        print(f"(the serve check will be skipped) cannot import {name}: {why}")
    if missing:
        return 1
    if env["cuda"]:
        try:
            print(f"CUDA smoke test (losses): {smoke(args, 'cuda')}")
        except Exception:  # noqa: BLE001 -- reported; the caller tries the next set of packages
            traceback.print_exc()
            return 1
    return 0


def smoke(args, device: str) -> dict:
    """Per-step and packed completion_loss, forward and backward in bf16 autocast, of a tiny model on the device."""
    import torch

    from umi.train.engine import completion_loss
    from umi.train.packing import PackedCollator, packed_row, use_tree_attention
    from umi.train.tokenize import CompletionCollator

    workdir = Path(tempfile.mkdtemp(prefix="umi-gpu-check-smoke-"))
    try:
        tokenizer = load_tokenizer(args.data, workdir)
        examples, _, _ = tree_examples(read_jsonl_gz(args.data / TRAIN_SAMPLE)[:3], tokenizer, 4096)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    model = make_model("tiny", tokenizer, 0).to(device)
    use_tree_attention(model)
    pad = tokenizer.pad_token_id
    batches = {
        "per_step": CompletionCollator(pad)(
            [{"input_ids": e.encoded.input_ids, "labels": e.encoded.labels} for e in examples]
        ),
        "packed": PackedCollator(pad)([packed_row(examples, 4096)]),
    }
    out = {}
    for name, batch in batches.items():
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items() if k != "real_tokens"}
        with torch.autocast(device, dtype=torch.bfloat16):
            loss, _ = completion_loss(model, batch)
        loss.backward()
        out[name] = round(loss.item(), 4)
    return out


# --- sample and model ---------------------------------------------------------------------------------------------
def load_tokenizer(data_dir: Path, workdir: Path):
    """SmolLM2's tokenizer from the committed sample (the file `umi backbone import` wrote, gzipped). Built as a
    PreTrainedTokenizerFast from its tokenizer.json, which reads the same in every transformers version."""
    from transformers import PreTrainedTokenizerFast

    special = json.loads((data_dir / MANIFEST).read_text())["tokenizer"]["special_tokens"]
    folder = workdir / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(data_dir / TOKENIZER_FILE, "rb") as src, (folder / "tokenizer.json").open("wb") as out:
        shutil.copyfileobj(src, out)
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **special)


def make_model(shape: str, tokenizer, seed: int):
    """A Llama of `shape` (MODEL_SHAPES) over the tokenizer's vocabulary, its weights drawn from `seed`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        use_cache=False,
        **MODEL_SHAPES[shape],
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def tree_examples(records: list[dict], tokenizer, max_length: int) -> tuple[list, list[str], int]:
    """The records as tree-packing examples (each also its per-step encoding), one token cache per trajectory as
    encode_role_dataset_packed keeps; (examples, their trajectory ids, how many were left out as too long)."""
    from umi.inference.tokens import TooLong
    from umi.train.packing import tree_example

    out, trajectories, too_long, caches = [], [], 0, {}
    for r in records:
        cache = caches.setdefault(r["trajectory_id"], {})
        try:
            out.append(tree_example(tokenizer, r["prompt"], r["target"], r["history_span"], max_length, r["id"], cache))
            trajectories.append(r["trajectory_id"])
        except TooLong:
            too_long += 1
    return out, trajectories, too_long


def train_config(args, packing: bool):
    """The profile as the check trains with it: the global stage, a fixed number of steps, no checkpoints saved."""
    from umi.train.config import load_config

    overrides = {"deepspeed": None, "packing": packing, "save_steps": 10**9, "logging_steps": 1}
    for key in ("max_length", "per_device_batch_size", "global_batch_size", "precision", "gradient_checkpointing"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    config = load_config(args.profile, **overrides).for_stage("global")
    settings = config.stage_settings("global").model_copy(
        update={"max_steps": args.steps, "max_tokens": None, "max_examples": None, "eval_examples": 0}
    )
    return config, settings


# --- 1. train -----------------------------------------------------------------------------------------------------
def train_arm(packing: bool, examples: list, tokenizer, args, workdir: Path, peak: float | None):
    """One arm of the training check: the global stage's engine for args.steps optimiser steps; (figures, model)."""
    import torch
    from accelerate.utils import extract_model_from_parallel
    from transformers import TrainerCallback
    from transformers.trainer_utils import SaveStrategy

    from umi.train.engine import (
        CompletionTrainer,
        has_gpu,
        training_arguments,
        training_precision,
        use_gradient_checkpointing,
    )
    from umi.train.packing import PackedCollator, packed_row, use_tree_attention
    from umi.train.stages import CountingCollator
    from umi.train.tokenize import CompletionCollator

    config, settings = train_config(args, packing)
    name = "packed" if packing else "per_step"
    # as train_stage: the arguments before the model
    training_args = training_arguments(config, settings, workdir / f"checkpoints-{name}")
    training_args.save_strategy = SaveStrategy.NO  # the Trainer saves a last checkpoint otherwise: 1.6 GB, unused
    model = make_model(args.model, tokenizer, args.seed)
    if packing:
        use_tree_attention(model)
        b = config.per_device_batch_size
        rows = [packed_row(examples[i : i + b], config.pack_budget()) for i in range(0, len(examples), b)]
    else:
        rows = [
            {"input_ids": ex.encoded.input_ids, "labels": ex.encoded.labels, "length": ex.length} for ex in examples
        ]
    collate = PackedCollator if packing else CompletionCollator
    counter = CountingCollator(collate(tokenizer.pad_token_id, pad_to_multiple_of=8 if has_gpu() else None))

    class StepClock(TrainerCallback):
        """(seconds, target tokens, tokens) at the end of every optimiser step; the Trainer collates a step's
        micro-batches before running them, so the counts at a step's end are those of the steps so far."""

        def __init__(self):
            self.marks: list[tuple[float, int, int]] = []

        def on_step_end(self, *_, **__):
            cuda_sync()
            self.marks.append((time.perf_counter(), counter.target_tokens, counter.tokens))

    clock = StepClock()
    trainer = CompletionTrainer(
        model=model,
        args=training_args,
        data_collator=counter,
        train_dataset=rows,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    output = trainer.train()
    # accelerate wrapped model.forward in bf16 autocast for the Trainer (mixed precision): unwrapped, the model runs
    # in the precision each later check asks for (the loss check's fp32 comparison would otherwise be bf16's)
    model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
    marks = clock.marks
    if len(marks) <= args.warmup_steps:
        raise RuntimeError(f"{len(marks)} steps ran, not more than the {args.warmup_steps} warm-up steps")
    # timed: from the end of the last warm-up step to the end of the last step
    (t0, target0, tokens0), (t1, target1, tokens1) = marks[args.warmup_steps - 1], marks[-1]
    seconds = t1 - t0
    params = sum(p.numel() for p in model.parameters())
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {
        "steps": len(marks),
        "timed_steps": len(marks) - args.warmup_steps,
        "timed_seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / (len(marks) - args.warmup_steps), 4),
        "target_tokens": target1 - target0,
        "tokens": tokens1 - tokens0,
        "target_tokens_per_second": round((target1 - target0) / seconds, 1),
        "tokens_per_second": round((tokens1 - tokens0) / seconds, 1),
        "model_tflops_per_second": round(6 * params * (tokens1 - tokens0) / seconds / 1e12, 3),
        "mfu": round(6 * params * (tokens1 - tokens0) / seconds / 1e12 / peak, 4) if peak else None,
        "train_loss_first_last": [round(losses[0], 4), round(losses[-1], 4)] if losses else None,
        "train_loss_mean": round(output.training_loss, 4),
        "precision": training_precision(config),  # umi.train.precision: bf16-autocast on a bf16 GPU
        "activation_checkpointing": use_gradient_checkpointing(config),
        "attention": model.config._attn_implementation,
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "parameters": params,
    }
    log(
        f"{name}: {result['target_tokens_per_second']} target tok/s, {result['tokens_per_second']} tok/s, "
        f"{result['seconds_per_step']} s/step" + (f", MFU {result['mfu']:.1%}" if result["mfu"] else "")
    )
    del trainer
    return result, model


def check_train(state: dict, args, workdir: Path, report: Report) -> dict:
    import torch

    examples, tokenizer, config = state["examples"], state["tokenizer"], state["config"]
    peak, peak_source = (
        (None, "no CUDA device")
        if not torch.cuda.is_available()
        else peak_tflops(torch.cuda.get_device_name(0), args.peak_tflops)
    )
    if peak is None:
        report.skip("train.mfu", f"no bf16 peak to compare against ({peak_source})")
    arms, errors = {}, {}
    for packing in (False, True):  # each arm runs whatever befell the other; the last model trained goes on
        name = "packed" if packing else "per_step"
        try:
            arms[name], model = train_arm(packing, examples, tokenizer, args, workdir, peak)
            state.pop("model", None)
            free_cuda()
            state["model"] = model
        except Exception as e:  # noqa: BLE001 -- reported with the other arm's figures
            traceback.print_exc()
            errors[name] = f"{type(e).__name__}: {e}"
            free_cuda()
    if any(arm["precision"] == "fp32" for arm in arms.values()):
        report.skip("train.bf16", "no CUDA device with bf16: the engine's precision `auto` trains in fp32")
    result = {
        "profile": args.profile,
        "examples_per_epoch": len(examples),
        "per_device_batch_size": config.per_device_batch_size,
        "global_batch_size": config.global_batch_size,
        "max_length": config.max_length,
        "pack_length": config.pack_budget(),
        "warmup_steps": args.warmup_steps,
        "peak_bf16_tflops": peak,
        "peak_source": peak_source,
        "flops_counted": "6 x parameters x tokens run (no attention products, no recomputation)",
        **{name: arms.get(name, {"error": errors.get(name)}) for name in ("per_step", "packed")},
    }
    if errors:
        raise CheckFailed("; ".join(f"{k}: {v}" for k, v in errors.items()), result)
    speed = result["packed"]["target_tokens_per_second"] / result["per_step"]["target_tokens_per_second"]
    result["packed_over_per_step"] = round(speed, 3)
    # both arms' timed steps cover the same examples only when they are whole epochs (the samplers order differently)
    steps_per_epoch = len(examples) // config.global_batch_size
    result["timed_whole_epochs"] = (args.steps - args.warmup_steps) % steps_per_epoch == 0 and (
        args.warmup_steps % steps_per_epoch == 0
    )
    return result


# --- 2. loss agreement --------------------------------------------------------------------------------------------
TOLERANCES = {  # |packed - per-step| / |per-step| of the loss; cosine of the two gradients
    "fp32": {"loss_rel": 1e-4, "grad_cosine": 0.9999},
    "bf16": {"loss_rel": 2e-2, "grad_cosine": 0.99},
}


def check_loss(state: dict, args, report: Report) -> dict:
    """Per-step and packed loss and gradients of one optimiser step's examples (the step of the Trainer: micro-batches
    of per_device_batch_size, the loss normalised by the step's target tokens), on the trained packed model."""
    import torch

    from umi.train.engine import completion_loss
    from umi.train.packing import PackedCollator, packed_row
    from umi.train.tokenize import CompletionCollator

    model, config, examples = state["model"], state["config"], state["examples"]
    pad = state["tokenizer"].pad_token_id
    step = examples[: config.global_batch_size]
    b = config.per_device_batch_size
    micro = [step[i : i + b] for i in range(0, len(step), b)]
    per_step = [
        CompletionCollator(pad)([{"input_ids": e.encoded.input_ids, "labels": e.encoded.labels} for e in m])
        for m in micro
    ]
    packed = [PackedCollator(pad)([packed_row(m, config.pack_budget())]) for m in micro]
    n_targets = sum(ex.target_tokens for ex in step)
    device = next(model.parameters()).device
    model.train()

    def run(batches, dtype):
        model.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items() if k != "real_tokens"}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                loss, _ = completion_loss(model, batch, n_targets)
            loss.backward()
            total += float(loss.detach())
        grads = torch.cat([p.grad.detach().double().flatten() for p in model.parameters() if p.grad is not None])
        return total, grads

    out = {
        "examples": len(step),
        "target_tokens": n_targets,
        "per_step_tokens": sum(ex.length for ex in step),
        "packed_tokens": sum(len(ids) for b in packed for ids in b["input_ids"]),
        "tolerances": TOLERANCES,
    }
    dtypes = ["fp32"]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtypes.append("bf16")
    else:
        report.skip("loss.bf16", "no CUDA device with bf16: bf16 autocast here would be the CPU kernels, not the GPU's")
    problems = []
    for dtype in dtypes:
        loss_a, grad_a = run(per_step, dtype)
        loss_b, grad_b = run(packed, dtype)
        rel = abs(loss_b - loss_a) / max(abs(loss_a), 1e-12)
        cosine = float(torch.nn.functional.cosine_similarity(grad_a, grad_b, dim=0))
        norm_rel = float((grad_b.norm() - grad_a.norm()).abs() / grad_a.norm().clamp(min=1e-12))
        out[dtype] = {
            "per_step_loss": round(loss_a, 6),
            "packed_loss": round(loss_b, 6),
            "loss_rel_diff": rel,
            "grad_cosine": cosine,
            "grad_norm_rel_diff": norm_rel,
        }
        log(f"loss {dtype}: per-step {loss_a:.5f} packed {loss_b:.5f} (rel {rel:.2e}), grad cosine {cosine:.6f}")
        tol = TOLERANCES[dtype]
        if not (rel <= tol["loss_rel"] and cosine >= tol["grad_cosine"]):
            problems.append(f"{dtype}: loss rel diff {rel:.2e} (max {tol['loss_rel']}), cosine {cosine:.6f}")
    model.zero_grad(set_to_none=True)
    if problems:
        raise CheckFailed("packed and per-step disagree: " + "; ".join(problems), out)
    return out


# --- 3. generate --------------------------------------------------------------------------------------------------
def save_model(model, tokenizer, folder: Path) -> Path:
    model.config.use_cache = True
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model.config.use_cache = False
    return folder


def check_generate(state: dict, args, workdir: Path) -> dict:
    """64 BFCL test planner prompts, args.gen_new_tokens tokens each (EOS ignored: a fixed amount of decoding), at
    batch 1 and batch args.gen_batch, through the inference loader's backend."""
    from umi.inference.loading import load_backend
    from umi.inference.protocol import GenerationRequest

    folder = save_model(state["model"], state["tokenizer"], workdir / "trained")
    backend = load_backend(folder)
    prompts = state["prompts"][: args.gen_prompts]
    requests = [
        GenerationRequest(
            prompt=r["prompt"],
            history_span=tuple(r["history_span"]),
            max_new_tokens=args.gen_new_tokens,
            ignore_eos=True,
            record_id=r["id"],
        )
        for r in prompts
    ]
    backend.generate_batch(requests[:2], batch_size=2)  # warm-up: kernels, allocator
    out = {
        "device": str(backend.model.device),
        "dtype": str(backend.model.dtype).removeprefix("torch."),
        "prompts": len(requests),
        "new_tokens_each": args.gen_new_tokens,
        "prompt_tokens_mean": None,
    }
    errors = []
    for batch in (1, args.gen_batch):  # each batch size runs whatever befell the other
        try:
            cuda_sync()
            start = time.perf_counter()
            done = backend.generate_batch(requests, batch_size=batch)
            cuda_sync()
            seconds = time.perf_counter() - start
        except Exception as e:  # noqa: BLE001 -- reported with the other batch size's figures
            traceback.print_exc()
            errors.append(f"batch {batch}: {type(e).__name__}: {e}")
            out[f"batch_{batch}"] = {"error": errors[-1]}
            free_cuda()
            continue
        new = sum(g.new_tokens for g in done)
        if new != len(requests) * args.gen_new_tokens:
            errors.append(f"batch {batch}: {new} new tokens, expected {len(requests) * args.gen_new_tokens}")
        out["prompt_tokens_mean"] = round(sum(g.prompt_tokens for g in done) / len(done), 1)
        out[f"batch_{batch}"] = {
            "seconds": round(seconds, 3),
            "new_tokens": new,
            "tokens_per_second": round(new / seconds, 1),
        }
        log(f"generate batch {batch}: {new / seconds:.1f} new tokens/s ({seconds:.1f} s)")
    del backend
    free_cuda()
    if errors:
        raise CheckFailed("; ".join(errors), out)
    out["batch_speedup"] = round(
        out[f"batch_{args.gen_batch}"]["tokens_per_second"] / out["batch_1"]["tokens_per_second"], 2
    )
    return out


# --- 4. serve -----------------------------------------------------------------------------------------------------
def chat_turn(app) -> dict:
    """POST the check's one chat turn to `app` in-process; the response's JSON (an HTTP error raises)."""
    from starlette.testclient import TestClient

    body = {
        "model": app.state.settings.model_name,
        "messages": [{"role": "user", "content": CHAT_QUESTION}],
        "tools": [WEATHER_TOOL],
    }
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json=body)
    if response.status_code != 200:
        raise AssertionError(f"HTTP {response.status_code}: {response.text[:500]}")
    return response.json()


def tool_call_of(response: dict) -> tuple[str, dict] | None:
    choice = response["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    if choice.get("finish_reason") != "tool_calls" or not calls:
        return None
    return calls[0]["function"]["name"], json.loads(calls[0]["function"]["arguments"])


TEACH_LOSS = 0.005  # mean per-token loss: every target token near certain, a margin bf16 decoding cannot flip


def teach(model, tokenizer, pairs: list[tuple[str, str, tuple[int, int]]], args) -> dict:
    """Fine-tune `model` on (prompt, target, history_span) pairs with completion_loss until every target token is
    near certain, so that greedy decoding in bf16 writes the targets."""
    import torch

    from umi.train.engine import completion_loss
    from umi.train.tokenize import CompletionCollator, encode_example

    device = next(model.parameters()).device
    encoded = [encode_example(tokenizer, p, t, span, 4096) for p, t, span in pairs]
    batch = CompletionCollator(tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    )
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.teach_lr, weight_decay=0.0)
    model.train()
    loss = None
    for step in range(1, args.teach_steps + 1):
        loss, _ = completion_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if loss.item() < TEACH_LOSS:
            break
    # not reaching TEACH_LOSS fails nothing by itself: the served turn is the check
    return {"teach_steps": step, "teach_loss": round(loss.item(), 5), "teach_lr": args.teach_lr}


def check_serve(state: dict, args, workdir: Path) -> dict:
    from tests.support.scripted import ScriptedBackend
    from umi.serve.app import create_app
    from umi.serve.engine import AgentEngine, build_engine
    from umi.serve.settings import ServeSettings
    from umi.vocabulary import AGENT_ROLES

    folder = workdir / "served"  # where the taught model goes; the settings want it to exist from the start
    folder.mkdir(parents=True, exist_ok=True)
    settings = ServeSettings(planner_dir=folder, caller_dir=folder, summarizer_dir=folder, toolkits="")
    # the turn's prompts, as the service renders them, through the same app over a scripted backend
    scripted = ScriptedBackend([("planner", PLANNER_TEXT), ("caller", CALLER_TEXT)])
    recorded = chat_turn(create_app(settings, AgentEngine({r: scripted for r in AGENT_ROLES}, settings)))
    if tool_call_of(recorded) is None:
        raise AssertionError(f"the scripted turn gave no tool call: {recorded}")
    pairs = [
        (req.prompt, text, req.history_span) for (_, req), text in zip(scripted.requests, (PLANNER_TEXT, CALLER_TEXT))
    ]
    taught = teach(state["model"], state["tokenizer"], pairs, args)
    save_model(state["model"], state["tokenizer"], folder)
    engine = build_engine(settings, settings.model_dirs, None, {r: {"path": str(folder)} for r in AGENT_ROLES})
    start = time.perf_counter()
    response = chat_turn(create_app(settings, engine))
    seconds = time.perf_counter() - start
    served = engine.backends["planner"].model  # SharedBackend -> TransformersBackend -> the model
    call = tool_call_of(response)
    out = {
        **taught,
        "device": str(served.device),
        "dtype": str(served.dtype).removeprefix("torch."),
        "turn_seconds": round(seconds, 3),
        "finish_reason": response["choices"][0].get("finish_reason"),
        "tool_call": {"name": call[0], "arguments": call[1]} if call else None,
        "usage": response.get("usage"),
    }
    if call != ("get_weather", {"city": "Paris"}):
        out["response"] = response
        raise CheckFailed("the served turn is not the get_weather call for Paris it was taught", out)
    return out


# --- the sample ---------------------------------------------------------------------------------------------------
def write_sample(args) -> int:
    """benchmarks/data/gpu_check/ from the reorganised role datasets and an imported backbone's tokenizer: whole
    trajectories of global/train.jsonl (drawn as an epoch mixes them, benchmarks/train_throughput.py), a seeded
    draw of planner/test.jsonl prompts, SmolLM2's tokenizer.json; all gzipped without timestamps."""
    from train_throughput import sample_trajectories

    datasets, backbone, out = args.datasets, args.backbone, args.data
    out.mkdir(parents=True, exist_ok=True)
    train_path = datasets / "global" / "train.jsonl"
    test_path = datasets / "planner" / "test.jsonl"
    train = [json.loads(line) for line in train_path.open(encoding="utf-8") if line.strip()]
    sample = sample_trajectories(train, args.sample_examples, args.seed)
    prompts = [json.loads(line) for line in test_path.open(encoding="utf-8") if line.strip()]
    prompts = random.Random(args.seed).sample(prompts, args.sample_prompts)
    keep = ("id", "trajectory_id", "role", "prompt", "target", "history_span")
    for name, records in ((TRAIN_SAMPLE, sample), (PROMPT_SAMPLE, prompts)):
        text = "".join(json.dumps({k: r[k] for k in keep if k in r}, ensure_ascii=False) + "\n" for r in records)
        write_gz(out / name, text.encode("utf-8"))
    write_gz(out / TOKENIZER_FILE, (backbone / "tokenizer.json").read_bytes())
    tok_config = json.loads((backbone / "tokenizer_config.json").read_text())
    special = {k: tok_config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if tok_config.get(k)}
    manifest = {
        # the role datasets of `dvc repro` (BFCL, embedded defaults) and the backbone of `umi backbone import`
        "made_by": "python benchmarks/gpu_check.py --write-sample --datasets artifacts/datasets --backbone "
        f"artifacts/backbone --seed {args.seed} --sample-examples {args.sample_examples} "
        f"--sample-prompts {args.sample_prompts}",
        "train": {
            "file": TRAIN_SAMPLE,
            "source": "global/train.jsonl",
            "source_sha256": sha256_file(train_path),
            "examples": len(sample),
            "trajectories": len({r["trajectory_id"] for r in sample}),
            "drawn": "whole trajectories, each with probability proportional to its examples (an epoch's mix)",
        },
        "prompts": {
            "file": PROMPT_SAMPLE,
            "source": "planner/test.jsonl",
            "source_sha256": sha256_file(test_path),
            "examples": len(prompts),
        },
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "source": str(json.loads((backbone / "umi_backbone.json").read_text()).get("source")),
            "special_tokens": special,
        },
        "seed": args.seed,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for path in sorted(out.iterdir()):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size:,} bytes")
    return 0


def carried_distributions() -> dict[str, str]:
    """CARRIED and everything they need, at the versions installed here (requirements.lock's), for CPython 3.12 on
    x86-64 Linux (the device machine), torch and numpy left out: {distribution: version}."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip
    skip = {canonicalize_name(n) for n in NOT_CARRIED}
    seen: dict[str, str] = {}
    todo = [canonicalize_name(n) for n in CARRIED]
    while todo:
        name = todo.pop()
        if name in seen or name in skip:
            continue
        dist = md.distribution(name)
        seen[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(canonicalize_name(req.name))
    return dict(sorted(seen.items()))


def wheel_list() -> int:
    """`pip download --no-deps -r` input for gpu_check.sh wheels."""
    for name, version in carried_distributions().items():
        print(f"{name}=={version}")
    return 0


# --- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (after every check)")
    parser.add_argument("--model", choices=sorted(MODEL_SHAPES), default=None,
                        help="model shape (default: smollm2-135m with CUDA, tiny without)")  # fmt: skip
    parser.add_argument("--profile", default="paper", help="training profile the global stage trains with")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per arm (default 20 CUDA, 4 CPU)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed first steps (default 5 CUDA, 2 CPU)")
    parser.add_argument("--examples", type=int, default=None, help="sample examples to train on (default: all)")
    parser.add_argument("--max-length", type=int, default=None, help="override the profile's max_length")
    parser.add_argument("--per-device-batch-size", type=int, default=None, help="override the profile's")
    parser.add_argument("--global-batch-size", type=int, default=None, help="override the profile's")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16-autocast"),
        default=None,
        help="override the profile's (the model is built in float32: bf16 weights are not this check's)",
    )
    parser.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default=None,
                        help="override the profile's (auto: on with CUDA)")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--gen-prompts", type=int, default=64, help="BFCL test planner prompts to generate for")
    parser.add_argument("--gen-new-tokens", type=int, default=32, help="tokens decoded per prompt (EOS ignored)")
    parser.add_argument("--gen-batch", type=int, default=32, help="the batched generation's batch size")
    parser.add_argument("--teach-steps", type=int, default=400, help="most steps teaching the chat turn")
    parser.add_argument("--teach-lr", type=float, default=None, help="its learning rate (default 3e-4, tiny 1e-2)")
    parser.add_argument("--skip", nargs="*", choices=CHECKS, default=[], help="checks not to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-threads", type=int, default=None,
                        help="torch threads without CUDA (1 on a shared machine: idle threads spin)")  # fmt: skip
    parser.add_argument("--data", type=Path, default=DATA, help="the sample's folder")
    parser.add_argument("--check-imports", action="store_true", help="only report versions and importability")
    parser.add_argument("--wheel-list", action="store_true", help="print the wheels the device machine needs")
    parser.add_argument("--write-sample", action="store_true", help="(re)make the committed sample, then exit")
    parser.add_argument("--datasets", type=Path, default=ROOT / "artifacts" / "datasets", help="--write-sample's")
    parser.add_argument("--backbone", type=Path, default=ROOT / "artifacts" / "backbone", help="--write-sample's")
    parser.add_argument("--sample-examples", type=int, default=240, help="--write-sample: train examples (at least)")
    parser.add_argument("--sample-prompts", type=int, default=64, help="--write-sample: test prompts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.wheel_list:
        return wheel_list()
    if args.write_sample:
        return write_sample(args)
    if args.check_imports:
        return check_imports(args)

    # tool workers of the service (umi.serve.sandbox) are new processes: they find umi as this one does
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    import torch

    cuda = torch.cuda.is_available()
    if args.cpu_threads and not cuda:
        torch.set_num_threads(args.cpu_threads)
    args.model = args.model or ("smollm2-135m" if cuda else "tiny")
    args.steps = args.steps or (20 if cuda else 4)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (5 if cuda else 2)
    if args.warmup_steps < 1:
        raise SystemExit("--warmup-steps must be at least 1: the first step carries the start-up costs")
    args.teach_lr = args.teach_lr or (1e-2 if args.model == "tiny" else 3e-4)
    report = Report(args.json, sys.argv[1:] if argv is None else argv)
    report.data["environment"] = environment()
    if not cuda:
        report.skip("cuda", "no CUDA device: the CPU figures of a check that cannot rot, not a GPU's")
    log(f"device: {report.data['environment']['device_name']}, model {args.model}, {args.steps} steps per arm")
    workdir = Path(tempfile.mkdtemp(prefix="umi-gpu-check-"))
    try:
        run_checks(args, report, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.write()
    summarise(report.data)
    return 0 if report.data["ok"] else 1


def setup(state: dict, args, workdir: Path, report: Report) -> dict:
    """The tokenizer, the sample's examples (whole optimiser steps of them) and prompts, into `state`."""
    state["tokenizer"] = tokenizer = load_tokenizer(args.data, workdir)
    records = read_jsonl_gz(args.data / TRAIN_SAMPLE)
    state["prompts"] = read_jsonl_gz(args.data / PROMPT_SAMPLE)
    state["config"] = config = train_config(args, packing=True)[0]
    examples, trajectories, too_long = tree_examples(records, tokenizer, config.max_length)
    if args.examples:
        examples = examples[: args.examples]
    # whole optimiser steps: every epoch of either arm trains on exactly these examples
    whole = len(examples) // config.global_batch_size * config.global_batch_size
    if not whole:
        raise ValueError(f"{len(examples)} examples: fewer than one optimiser step of {config.global_batch_size}")
    state["examples"] = examples[:whole]
    report.data["model"] = {"shape": args.model, **MODEL_SHAPES[args.model], "vocab_size": len(tokenizer)}
    return {
        "sample": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
        "train_examples": whole,
        "train_trajectories": len(set(trajectories[:whole])),
        "too_long": too_long,
        "train_tokens_unpacked": sum(ex.length for ex in state["examples"]),
        "fallbacks": sum(1 for ex in state["examples"] if ex.fallback),
        "prompts": len(state["prompts"]),
    }


def run_checks(args, report: Report, workdir: Path) -> None:
    state: dict = {}
    if report.run("setup", setup, state, args, workdir, report) is None:
        return
    for name in args.skip:
        report.skip(name, "--skip")
    if "train" not in args.skip:
        report.run("train", check_train, state, args, workdir, report)
    else:  # the other checks on a freshly initialised model (quicker, e.g. to try the service alone)
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        state["model"] = make_model(args.model, state["tokenizer"], args.seed).to(device)
    for name, fn, extra in (
        ("loss", check_loss, (args, report)),
        ("generate", check_generate, (args, workdir)),
        ("serve", check_serve, (args, workdir)),
    ):
        if name in args.skip:
            continue
        if "model" not in state:
            report.skip(name, "no trained model: the train check failed")
        elif name == "serve" and (missing := missing_modules(SERVICE_MODULES)):
            report.skip(name, "the service's packages are not importable: " + "; ".join(missing.values()))
        else:
            report.run(name, fn, state, *extra)


def summarise(data: dict) -> None:
    """The figures in a few lines, at the end of the log (a failed check's figures too, where it has some)."""
    checks = data["checks"]
    print("\n== gpu check: " + ("all checks ok" if data["ok"] else f"FAILED: {', '.join(data['failed'])}"))
    print(f"device: {data['environment']['device_name']}")
    for name, check in checks.items():
        if check.get("status") == "failed":
            print(f"{name} FAILED: {check.get('error')}")
    train = checks.get("train", {})
    for arm in ("per_step", "packed"):
        r = train.get(arm) or {}
        if "target_tokens_per_second" in r:
            mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
            print(
                f"train {arm:<8}: {r['target_tokens_per_second']:>10.1f} target tok/s {r['tokens_per_second']:>10.1f}"
                f" tok/s  {r['seconds_per_step']:.3f} s/step{mfu}  ({r['precision']}, ckpt "
                f"{r['activation_checkpointing']}, {r['attention']}, {r['max_memory_gib']} GiB)"
            )
    if "packed_over_per_step" in train:
        print(f"packed / per-step (target tok/s): {train['packed_over_per_step']:.2f}x")
    loss = checks.get("loss", {})
    for dtype in ("fp32", "bf16"):
        if dtype in loss:
            r = loss[dtype]
            print(f"loss {dtype}: rel diff {r['loss_rel_diff']:.2e}, grad cosine {r['grad_cosine']:.6f}")
    gen = checks.get("generate", {})
    rates = [f"{k.replace('_', ' ')} {v['tokens_per_second']:.1f} tok/s" for k, v in gen.items() if k.startswith("batch_")
             and isinstance(v, dict) and "tokens_per_second" in v]  # fmt: skip
    if rates:
        print("generate: " + ", ".join(rates) + f" ({gen.get('dtype')} on {gen.get('device')})")
    serve = checks.get("serve", {})
    if "turn_seconds" in serve:
        print(f"serve: {serve['tool_call']} in {serve['turn_seconds']} s on {serve['device']} ({serve['dtype']})")
    for what, why in data["skipped"].items():
        print(f"skipped {what}: {why}")


if __name__ == "__main__":
    raise SystemExit(main())
