"""Training throughput: our engine against the reference recipe, same examples, model and machine, one run.

    .venv/bin/python benchmarks/train_throughput.py [--model DIR] [--max-length 4096] [--examples 4] [--fixtures]

reference recipe: every example padded to max_length, random batches, logits and loss over every position
                  (the α-UMi reference training scripts do this with max length 4096), activation checkpointing.
our engine:       umi.train -- length-grouped micro-batches padded only to their own longest example (micro-batches
                  of one by default: no padding at all), gradient accumulation to the same batch, and the LM head
                  applied only where a target token is predicted (CompletionTrainer).
Both train one epoch over the same encoded examples (same token sequences, same labels) from the same weights,
with the same batch size and optimiser; the number that matters is target (supervised) tokens per second.

Shared-prefix section (after the reference comparison; its last line is `shared-prefix speed-up: N.NNx`): per role,
the same whole trajectories (drawn with probability proportional to their examples, i.e. an epoch's mix) trained
for one pass with the same optimiser steps (--prefix-batch examples each, AdamW) by today's per-step engine
(micro-batches of one example, never padded) and by tree packing (umi.train.packing: each step's examples in
sequences of at most --pack-length tokens, tree attention: only the blocks its tree mask lets it see; --attention
dense: SDPA over the dense [L, L] mask, for comparison). --prefix-max-length is large enough that no per-step example loses
history (the count is printed), so both sides see the same tokens; the losses of the two are printed side by side
as a check. The speed-up is the mean of the roles' target-token/s ratios weighted by each role's share of the
train split (its characters, proportional to its tokens in an epoch). `tok x` is per-step tokens / packed tokens:
for compute-bound training the ceiling of the speed-up (attention shares a little more). --layers N keeps only the
first N decoder layers: cheaper, but it overstates the speed-up (each micro-batch's fixed costs, such as the dense
gradient of the tied embedding / LM head and its accumulation into every weight's gradient, which packing also
saves, weigh far more against 4 layers than against 30).

Precision section (`--precision`, run alone): the engine (umi.train.stages.train_stage with the `bench` profile's
packing) trains --precision-steps optimiser steps of the global role from the same weights and seed in each of
--precisions (fp32, bf16-autocast, bf16: umi.train.precision), then scores the same --dev-examples dev examples
with each result; it prints target tokens/s, the dev-loss gap of each bf16 mode to fp32 with its paired interval
(clustered by trajectory), and last `bf16 training speed-up: N.NNx` (the fastest bf16 mode over fp32).

Data: artifacts/datasets/<role>/train.jsonl (or --datasets) when the reorganised datasets exist, otherwise (or with
--fixtures) the α-UMi fixtures' reference_train_<role>.json (real ToolBench prompts, longer than BFCL's). The sample
is --examples examples at evenly spaced length quantiles of a seeded random pool, so a few examples still follow
the data's length distribution. Model: artifacts/backbone when imported (SmolLM2-135M), else a tiny random Llama.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fixtures import FIXTURES_DIR  # noqa: E402

FIXTURES = FIXTURES_DIR / "alpha-umi"
FIXTURE_NAME = {"global": "backbone", "planner": "planner", "caller": "caller", "summarizer": "summarizer"}
HISTORY_OPENERS = ("The conversation history is:\n", "Make a conclusion based on the conversation history:\n")


def fixture_records(role: str) -> list[dict]:
    """The reference's reorganised examples as role-dataset records (history span located in the prompt)."""
    path = FIXTURES / f"reference_train_{FIXTURE_NAME[role]}.json"
    records = []
    for i, ex in enumerate(json.loads(path.read_text())):
        prompt = ex["input"]
        start = 0
        for opener in HISTORY_OPENERS:
            at = prompt.find(opener)
            if at >= 0:
                start = at + len(opener)
                break
        last_turn_end = prompt.rfind("</s>")
        end = last_turn_end + len("</s>") if last_turn_end >= start else start
        records.append(
            {"id": f"fixture-{role}-{i}", "prompt": prompt, "target": ex["target"], "history_span": [start, end]}
        )
    return records


def load_records(role: str, datasets_dir: Path, fixtures: bool = False) -> tuple[list[dict], str]:
    reorganised = datasets_dir / role / "train.jsonl"
    if reorganised.exists() and not fixtures:
        with reorganised.open() as f:
            return [json.loads(line) for line in f if line.strip()], str(reorganised)
    return fixture_records(role), str(FIXTURES / f"reference_train_{FIXTURE_NAME[role]}.json")


def trajectory_of(record: dict) -> str:
    return record.get("trajectory_id") or record["id"].rsplit("#", 1)[0]


def sample_trajectories(records: list[dict], n_examples: int, seed: int) -> list[dict]:
    """Whole trajectories until >= n_examples examples, drawn through a seeded random order of the examples (a
    trajectory's chance is proportional to its number of examples: the mix an epoch trains on)."""
    by_trajectory: dict[str, list[dict]] = {}
    for r in records:
        by_trajectory.setdefault(trajectory_of(r), []).append(r)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    chosen: list[str] = []
    count = 0
    for i in order:
        t = trajectory_of(records[i])
        if t in chosen:
            continue
        chosen.append(t)
        count += len(by_trajectory[t])
        if count >= n_examples:
            break
    return [r for t in chosen for r in by_trajectory[t]]


def load_model(model_dir: Path, layers: int | None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if layers is not None and layers < len(model.model.layers):
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    model.config.use_cache = False
    return model.train()


def time_engines(model_dir: Path, examples: list, tokenizer, args) -> dict:
    """One pass over `examples` in steps of args.prefix_batch examples, per-step engine vs tree packing, each
    with its own copy of the model and optimiser; timed from collation to the optimiser step."""
    import torch

    from umi.train.engine import completion_loss
    from umi.train.packing import PackedCollator, pack, use_tree_attention
    from umi.train.tokenize import CompletionCollator

    steps = [examples[i : i + args.prefix_batch] for i in range(0, len(examples), args.prefix_batch)]
    per_step_collate = CompletionCollator(tokenizer.pad_token_id)
    packed_collate = PackedCollator(tokenizer.pad_token_id)
    kinds = ("per-step", "packed")
    models, optimizers = {}, {}
    for kind in kinds:
        torch.manual_seed(args.seed)
        models[kind] = load_model(model_dir, args.layers)
        optimizers[kind] = torch.optim.AdamW(models[kind].parameters(), lr=1e-5)
    if args.attention == "tree":
        use_tree_attention(models["packed"])  # as the engine does with packing on
    out = {k: {"seconds": 0.0, "tokens": 0, "steps": len(steps), "losses": []} for k in kinds}
    # The engines take turns step by step, so both see the same load on a shared machine.
    for step in steps:
        n_targets = sum(ex.target_tokens for ex in step)
        for kind in kinds:
            start = time.perf_counter()
            if kind == "per-step":
                batches = [
                    per_step_collate([{"input_ids": ex.encoded.input_ids, "labels": ex.encoded.labels}]) for ex in step
                ]
            else:
                batches = [
                    packed_collate([{k: [v] for k, v in seq.to_row().items()}]) for seq in pack(step, args.pack_length)
                ]
            total = 0.0
            for batch in batches:
                batch.pop("real_tokens", None)
                if args.attention == "dense":
                    batch.pop("tree_layout", None)  # SDPA over the dense [L, L] tree mask
                out[kind]["tokens"] += int(batch["input_ids"].numel())
                loss, _ = completion_loss(models[kind], batch, n_targets)
                loss.backward()
                total += float(loss.detach())
            optimizers[kind].step()
            optimizers[kind].zero_grad()
            out[kind]["seconds"] += time.perf_counter() - start
            out[kind]["losses"].append(total)
    for r in out.values():
        r["mean_step_loss"] = sum(r.pop("losses")) / len(steps)
    return out


def shared_prefix(model_dir: Path, tokenizer, args) -> dict:
    from umi.inference.tokens import TooLong
    from umi.train.packing import tree_example

    roles, weights = {}, {}
    for role in args.roles:
        records, source = load_records(role, args.datasets, args.fixtures)
        weights[role] = sum(len(r["prompt"]) + len(r["target"]) for r in records)
        sample = sample_trajectories(records, args.prefix_examples, args.seed)
        examples, too_long, cache_of = [], 0, {}
        for r in sample:
            cache = cache_of.setdefault(trajectory_of(r), {})
            try:
                examples.append(
                    tree_example(
                        tokenizer, r["prompt"], r["target"], r["history_span"], args.prefix_max_length, r["id"], cache
                    )
                )
            except TooLong:
                too_long += 1
        timing = time_engines(model_dir, examples, tokenizer, args)
        target = sum(ex.target_tokens for ex in examples)
        speed = {k: target / v["seconds"] for k, v in timing.items()}
        print(
            f"{role}: {len(examples)} examples, per-step {timing['per-step']['seconds']:.1f} s, packed "
            f"{timing['packed']['seconds']:.1f} s",
            flush=True,
        )  # progress; the table comes at the end
        roles[role] = {
            "source": source,
            "trajectories": len({trajectory_of(r) for r in sample}),
            "examples": len(examples),
            "too_long": too_long,
            "history_cut": sum(1 for ex in examples if ex.encoded.dropped_turns),
            "fallbacks": sum(1 for ex in examples if ex.fallback),
            "target_tokens": target,
            **timing,
            "target_tokens_per_second": speed,
            "speedup": speed["packed"] / speed["per-step"],
        }
    total = sum(weights.values())
    mean = sum(weights[r] / total * roles[r]["speedup"] for r in roles)
    return {"roles": roles, "weights": {r: weights[r] / total for r in roles}, "speedup": mean}


def print_shared_prefix(result: dict, args) -> None:
    print(
        f"shared prefix: steps of {args.prefix_batch} examples, pack length {args.pack_length}, "
        f"max length {args.prefix_max_length}, {args.attention} attention"
        + (f", first {args.layers} layers" if args.layers else "")
    )
    print(
        f"{'role':<11} {'traj':>4} {'n':>4} {'cut':>3} {'fb':>3} {'target':>7} {'per-step tok':>12} {'packed tok':>10}"
        f" {'tok x':>5} {'per-step s':>10} {'packed s':>9} {'per-step t/s':>12} {'packed t/s':>10} {'loss p-s/pk':>13}"
        f" {'x':>6}"
    )
    for role, r in result["roles"].items():
        ps, pk = r["per-step"], r["packed"]
        print(
            f"{role:<11} {r['trajectories']:>4} {r['examples']:>4} {r['history_cut']:>3} {r['fallbacks']:>3}"
            f" {r['target_tokens']:>7} {ps['tokens']:>12} {pk['tokens']:>10} {ps['tokens'] / pk['tokens']:>5.2f}"
            f" {ps['seconds']:>10.1f}"
            f" {pk['seconds']:>9.1f} {r['target_tokens_per_second']['per-step']:>12.1f}"
            f" {r['target_tokens_per_second']['packed']:>10.1f}"
            f" {ps['mean_step_loss']:>6.3f}/{pk['mean_step_loss']:<6.3f} {r['speedup']:>5.2f}x"
        )
    print("weights (share of the train split): " + ", ".join(f"{k} {v:.2f}" for k, v in result["weights"].items()))
    print(f"shared-prefix speed-up: {result['speedup']:.2f}x")


class PadToMaxCollator:
    """The reference recipe's batches: every example padded to max_length."""

    def __init__(self, pad_token_id: int, max_length: int):
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, features):
        import torch

        from umi.train.tokenize import IGNORE_INDEX

        n = self.max_length
        ids = [list(f["input_ids"]) + [self.pad_token_id] * (n - len(f["input_ids"])) for f in features]
        labels = [list(f["labels"]) + [IGNORE_INDEX] * (n - len(f["labels"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (n - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def run_engine(kind: str, model_dir: Path, dataset, tokenizer, args, workdir: Path, checkpointing: bool) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from umi.train.engine import CompletionTrainer
    from umi.train.tokenize import CompletionCollator

    torch.manual_seed(args.seed)
    model = load_model(model_dir, args.layers)
    # Same optimiser step (batch_size examples) for both. Ours runs it as micro-batches of args.micro_batch examples
    # with gradient accumulation and token-level loss normalisation over the whole step (the Trainer's
    # num_items_in_batch), so the update is the same; micro-batches of 1 are never padded, which also lets SDPA use
    # its causal (flash) kernel instead of a materialised mask.
    micro = args.micro_batch if kind == "ours" else args.batch_size
    if args.batch_size % micro:
        raise SystemExit("--batch-size must be a multiple of --micro-batch")
    training_args = TrainingArguments(
        output_dir=str(workdir / kind),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=args.batch_size // micro,
        num_train_epochs=1,
        learning_rate=1e-5,
        lr_scheduler_type="cosine",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        train_sampling_strategy="group_by_length" if kind == "ours" else "random",
        length_column_name="length",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        activation_checkpointing=checkpointing,
        seed=args.seed,
        disable_tqdm=True,
    )
    if kind == "ours":
        collator = CompletionCollator(
            tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None
        )
        trainer = CompletionTrainer(model=model, args=training_args, data_collator=collator, train_dataset=dataset)
    else:
        collator = PadToMaxCollator(tokenizer.pad_token_id, args.max_length)
        trainer = Trainer(model=model, args=training_args, data_collator=collator, train_dataset=dataset)
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    steps = out.global_step
    padded = len(dataset) * args.max_length if kind == "reference" else None
    return {
        "seconds": seconds,
        "steps": steps,
        "seconds_per_step": seconds / max(steps, 1),
        "loss": out.training_loss,
        "padded_tokens": padded,
    }


def precision_section(model_dir: Path, args) -> dict:
    """The engine itself (umi.train.stages.train_stage, the `bench` profile's packing and batch) trained on the same
    examples from the same weights and seed for --precision-steps optimiser steps in float32 and in each bf16 mode
    (umi.train.precision), one after the other; then each result's loss on the same dev examples, per example, so the
    gap gets a paired interval (clustered by trajectory). Speed: target tokens/s over the whole stage."""
    import torch

    from umi.eval.stats import Clusters, interval, paired
    from umi.train.config import load_config
    from umi.train.engine import dev_example_losses
    from umi.train.stages import train_stage

    workdir = Path(tempfile.mkdtemp(prefix="umi-precision-bench-"))
    if args.layers is not None:  # the cut model, saved once: every mode starts from the same file
        load_model(model_dir, args.layers).save_pretrained(workdir / "init")
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(workdir / "init")
        model_dir = workdir / "init"
    results = {}
    for mode in args.precisions:
        config = load_config(
            "bench",
            precision=mode,
            max_length=args.max_length,
            per_device_batch_size=args.prefix_batch,
            global_batch_size=args.prefix_batch,
            pack_length=args.pack_length,
            save_steps=10**6,
        )
        config.stages["global"].max_steps = args.precision_steps
        config.stages["global"].eval_examples = 0
        torch.manual_seed(args.seed)
        result = train_stage("global", config, args.datasets, workdir / mode, model_dir, tracking=False)
        losses = dev_example_losses(result.checkpoint, "global", args.datasets, args.max_length, args.dev_examples)
        results[mode] = {
            "seconds": result.metrics["train_runtime"],
            "target_tokens_per_second": result.metrics["target_tokens_per_second"],
            "tokens_per_second": result.metrics["tokens_per_second"],
            "train_loss": result.metrics.get("train_loss"),
            "dev": Clusters.from_items(losses),
        }
    reference = results.get("fp32")
    print(
        f"precision: {args.precision_steps} steps of {args.prefix_batch} global examples (packed, max length "
        f"{args.max_length}), same seed and weights; dev loss on the same {args.dev_examples} dev examples"
        f"{f', model cut to {args.layers} layers' if args.layers else ''}; CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"{'mode':<15}{'seconds':>9}{'target tok/s':>14}{'tok/s':>9}{'train loss':>12}  dev loss [95% CI]")
    for mode, r in results.items():
        ci = interval(r["dev"])
        print(
            f"{mode:<15}{r['seconds']:>9.1f}{r['target_tokens_per_second']:>14.1f}{r['tokens_per_second']:>9.1f}"
            f"{r['train_loss']:>12.4f}  {ci.value / 100:.4f} [{ci.ci_low / 100:.4f}, {ci.ci_high / 100:.4f}]"
        )
    summary: dict = {mode: {k: v for k, v in r.items() if k != "dev"} for mode, r in results.items()}
    bf16 = [m for m in results if m != "fp32"]
    if reference is None or not bf16:
        return summary
    for mode in bf16:
        gap = paired(results[mode]["dev"], reference["dev"])
        summary[mode]["dev_loss_gap"] = gap.to_dict()
        print(
            f"dev-loss gap ({mode} - fp32): {gap.difference / 100:+.4f} [{gap.ci_low / 100:+.4f}, "
            f"{gap.ci_high / 100:+.4f}], p = {gap.p_value:.3f}, n = {gap.n} examples / {gap.clusters} trajectories"
        )
    fastest = max(bf16, key=lambda m: results[m]["target_tokens_per_second"])
    speedup = results[fastest]["target_tokens_per_second"] / reference["target_tokens_per_second"]
    summary["speedup"], summary["fastest"] = speedup, fastest
    print(f"bf16 training speed-up: {speedup:.2f}x")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: artifacts/backbone or tiny)")
    parser.add_argument("--role", default="global", choices=list(FIXTURE_NAME))
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--datasets", type=Path, default=ROOT / "artifacts" / "datasets", help="role datasets dir")
    parser.add_argument(
        "--fixtures",
        action="store_true",
        help="use the ToolBench fixtures even when artifacts/datasets exists (longer prompts)",
    )
    parser.add_argument("--pool", type=int, default=2000, help="examples encoded to draw the sample from")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=1, help="our engine's micro-batch (see run_engine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--roles",
        nargs="+",
        default=list(FIXTURE_NAME),
        choices=list(FIXTURE_NAME),
        help="roles of the shared-prefix section",
    )
    parser.add_argument("--prefix-examples", type=int, default=16, help="examples per role (whole trajectories)")
    parser.add_argument("--prefix-batch", type=int, default=16, help="examples per optimiser step")
    parser.add_argument("--prefix-max-length", type=int, default=4096, help="per-step budget (no history cut)")
    parser.add_argument("--pack-length", type=int, default=4096, help="tokens of one packed sequence")
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N decoder layers")
    parser.add_argument(
        "--attention",
        choices=("tree", "dense"),
        default="tree",
        help="packed attention: tree attention (the engine's) or SDPA over the dense tree mask",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the pad-to-max reference comparison")
    parser.add_argument(
        "--precision",
        action="store_true",
        help="run only the precision section: float32 against bf16 training (last line `bf16 training speed-up`)",
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16-autocast", "bf16"])
    parser.add_argument("--precision-steps", type=int, default=8, help="optimiser steps per precision")
    parser.add_argument("--dev-examples", type=int, default=64, help="dev examples scored after each precision")
    args = parser.parse_args(argv)

    import datasets
    import torch
    from transformers import AutoTokenizer

    from tests.support.tiny import make_tiny_backbone
    from umi.inference.tokens import TooLong
    from umi.train.tokenize import encode_example

    workdir = Path(tempfile.mkdtemp(prefix="umi-train-bench-"))
    model_dir = args.model
    if model_dir is None:
        model_dir = ROOT / "artifacts" / "backbone"
        if not (model_dir / "config.json").exists():
            model_dir = make_tiny_backbone(workdir / "tiny", hidden_size=128, layers=4)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    summary: dict = {"model": str(model_dir)}
    if args.precision:
        summary["precision"] = precision_section(Path(model_dir), args)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    if not args.no_reference:
        records, source = load_records(args.role, args.datasets, args.fixtures)
        random.Random(args.seed).shuffle(records)
        records = records[: args.pool]
        encoded, too_long = [], 0
        for rec in records:
            try:
                enc = encode_example(
                    tokenizer, rec["prompt"], rec["target"], rec["history_span"], args.max_length, rec["id"]
                )
            except TooLong:
                too_long += 1
                continue
            encoded.append({"input_ids": enc.input_ids, "labels": enc.labels, "length": len(enc.input_ids)})
        # A small sample that still has the pool's length distribution: the examples at evenly spaced length quantiles.
        encoded.sort(key=lambda r: r["length"])
        n = min(args.examples, len(encoded))
        rows = [encoded[int((i + 0.5) * len(encoded) / n)] for i in range(n)]
        random.Random(args.seed).shuffle(rows)
        pool_mean = sum(r["length"] for r in encoded) / len(encoded)
        dataset = datasets.Dataset.from_list(rows)
        lengths = sorted(dataset["length"])
        target_tokens = sum(sum(1 for x in r["labels"] if x != -100) for r in rows)
        real_tokens = sum(lengths)

        # Activation checkpointing: the reference recipe always has it (and needs it: a batch padded to 4096 tokens
        # does not fit in memory without). Ours follows the engine's policy (on only where a GPU is present) and is also
        # measured with it on, for a like-for-like comparison.
        gpu = torch.cuda.is_available()
        runs = {"ours": ("ours", gpu), "ours+ckpt": ("ours", True), "reference": ("reference", True)}
        if gpu:
            del runs["ours+ckpt"]  # identical to "ours" there
        results = {}
        for name, (kind, checkpointing) in runs.items():
            results[name] = run_engine(kind, Path(model_dir), dataset, tokenizer, args, workdir, checkpointing)
            results[name]["checkpointing"] = checkpointing
            results[name]["target_tokens_per_second"] = target_tokens / results[name]["seconds"]
            results[name]["real_tokens_per_second"] = real_tokens / results[name]["seconds"]
        reference_speed = results["reference"]["target_tokens_per_second"]
        ratio = results["ours"]["target_tokens_per_second"] / reference_speed

        print(
            f"data: {source} ({args.role}): {len(rows)} examples at the length quantiles of {len(encoded)} "
            f"(mean {pool_mean:.0f} tokens; {too_long} too long for {args.max_length} left out)"
        )
        print(
            f"model: {model_dir}   batch {args.batch_size} (ours: micro-batches of {args.micro_batch})   "
            f"max length {args.max_length}   device: {'cuda' if gpu else 'cpu'}"
        )
        print(
            f"example lengths: min {lengths[0]}  median {lengths[len(lengths) // 2]}  mean {real_tokens / len(rows):.0f}"
            f"  max {lengths[-1]}   target tokens {target_tokens}"
        )
        print(
            f"{'engine':<10} {'ckpt':>5} {'seconds':>9} {'s/step':>8} {'target tok/s':>13} {'real tok/s':>11} {'loss':>7}"
        )
        for name, r in results.items():
            print(
                f"{name:<10} {'on' if r['checkpointing'] else 'off':>5} {r['seconds']:>9.1f} {r['seconds_per_step']:>8.2f}"
                f" {r['target_tokens_per_second']:>13.1f} {r['real_tokens_per_second']:>11.1f} {r['loss']:>7.3f}"
            )
        print(f"speed-up (target tokens/s, ours / reference): {ratio:.2f}x  (goal >= 4x)")
        if "ours+ckpt" in results:
            same = results["ours+ckpt"]["target_tokens_per_second"] / reference_speed
            print(f"speed-up with activation checkpointing on in both: {same:.2f}x")
        summary.update(
            {
                "ratio": ratio,
                "examples": len(rows),
                "max_length": args.max_length,
                "data": source,
                "target_tokens": target_tokens,
                "real_tokens": real_tokens,
                **results,
            }
        )
    prefix = shared_prefix(Path(model_dir), tokenizer, args)
    summary["shared_prefix"] = prefix
    print_shared_prefix(prefix, args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
