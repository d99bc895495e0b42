"""Short runs that choose the epoch run's recipe on dev (issue 29, item 3): one stage of the `bench` profile trained
on a fraction of an epoch with each candidate setting, the same dev examples scored after each.

    .venv/bin/python docs/results/recipe/sweep.py lr --stage global --fraction 0.0625 --values 5e-5 1e-4 3e-4
    .venv/bin/python docs/results/recipe/sweep.py lora --stage global --fraction 0.0625 --values 3e-4 1e-3

`lr`: full fine-tuning at each learning rate. `lora`: LoRA (--lora-r, alpha 2r, every linear layer, merged at the
end) at each learning rate; its train seconds are the speed side of the choice. `decision`: the planner at the
profile's learning rate with each decision_weight (--stage planner --init <a global model>). Planner runs are also
scored by dev decision accuracy (umi.train.engine.dev_decision_choices: the gold decision ranked first given the
gold rationale).

Each run is an ordinary stage (umi.train.stages.train_stage) in artifacts/recipe/<sweep>/<value>/<stage>: stopped, the
same command continues it (finished runs are skipped). Local stages start from the global model named by --init
(default: the backbone). Results: docs/results/recipe/<sweep>-<stage>.json and a Markdown table printed at the end
(dev loss: mean per-example completion loss over the stage's eval_examples dev examples, the same seeded sample in
every run; its 95% interval from a bootstrap over those examples, and the paired difference to the best run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
INIT = "untrained"  # the record's row for the model the runs start from (the backbone, or --init)


def _p(value: float) -> str:
    """A resampled p-value: below the resampling floor it is only known to be small."""
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "setting",
        choices=["lr", "lora", "decision"],
        help="what the runs differ in: lr / lora: the learning rate; decision: the planner's decision_weight",
    )
    parser.add_argument("--stage", default="global")
    parser.add_argument("--fraction", type=float, default=1 / 16, help="of an epoch")
    parser.add_argument("--values", nargs="+", type=float, required=True)
    parser.add_argument("--profile", default="bench")
    parser.add_argument("--datasets", type=Path, default=ROOT / "artifacts" / "datasets")
    parser.add_argument("--init", type=Path, default=ROOT / "artifacts" / "backbone")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "recipe")
    parser.add_argument("--lora-r", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from umi.data.versions import dataset_versions
    from umi.eval.stats import Clusters, interval, paired
    from umi.train.config import LoraSettings, dataset_role, load_config
    from umi.train.engine import dev_decision_choices, dev_example_losses
    from umi.train.stages import train_stage

    name = f"{args.setting}-{args.stage}-{args.fraction:g}"
    version = dataset_versions(args.datasets).get(dataset_role(args.stage))
    record = HERE / f"{name}.json"
    # runs recorded earlier stay in the record (a later call may add values); the starting model is its baseline row
    results = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    config = load_config(args.profile)
    n = config.stage_settings(args.stage).eval_examples

    def scores(model) -> dict:
        out = {"dev_losses": dev_example_losses(model, dataset_role(args.stage), args.datasets, config.max_length, n)}
        if args.stage == "planner":
            out["dev_decisions"] = dev_decision_choices(model, args.datasets, config.max_length, n)
        return out

    if INIT not in results:
        results[INIT] = {"value": None, "model": str(args.init.relative_to(ROOT)), **scores(args.init)}
        record.write_text(json.dumps(results, indent=1) + "\n")
    for value in args.values:
        if f"{value:g}" in results:
            continue
        config = load_config(args.profile)
        settings = config.stages["global" if args.stage == "global-matched" else args.stage]
        settings.epochs = args.fraction
        if args.setting == "decision":
            settings.decision_weight = value
        else:
            settings.learning_rate = value
        if args.setting == "lora":
            config.lora = LoraSettings(r=args.lora_r, alpha=2 * args.lora_r)
        out = args.out / name / f"{value:g}" / args.stage
        result = train_stage(args.stage, config, args.datasets, out, args.init, data_version=version, tracking=False)
        results[f"{value:g}"] = {
            "value": value,
            "train_runtime_s": result.metrics.get("train_runtime"),
            "steps": result.metrics.get("global_step"),
            "examples": result.metrics.get("data_examples"),
            "train_loss": result.metrics.get("train_loss"),
            **scores(result.checkpoint),
        }
        record.write_text(json.dumps(results, indent=1) + "\n")

    # the stats module works in percentage units (100 x a ratio of sums): a loss of 0.81 is 81 there
    clusters = {k: Clusters.from_items(r["dev_losses"]) for k, r in results.items()}
    best = min(clusters, key=lambda k: clusters[k].value())
    ci = interval(clusters[best])
    print(
        f"\n{args.setting} sweep, {args.stage}, {args.fraction:g} epoch: dev loss on n = {ci.n} dev examples "
        f"({ci.clusters} trajectories, the bootstrap's clusters)"
    )
    print(f"| {args.setting} | steps | train s | dev loss [95% CI] | minus best [95% CI], p |")
    print("|---|---|---|---|---|")
    for key, r in results.items():
        ci = interval(clusters[key])
        diff = "-"
        if key != best:
            d = paired(clusters[key], clusters[best])
            diff = f"{d.difference / 100:+.3f} [{d.ci_low / 100:+.3f}, {d.ci_high / 100:+.3f}], {_p(d.p_value)}"
        steps, seconds = (f"{r[k]:.0f}" if r.get(k) is not None else "-" for k in ("steps", "train_runtime_s"))
        print(
            f"| {key} | {steps} | {seconds} | {ci.value / 100:.3f} "
            f"[{ci.ci_low / 100:.3f}, {ci.ci_high / 100:.3f}] | {diff} |"
        )
    decided = {k: Clusters.from_items(r["dev_decisions"]) for k, r in results.items() if r.get("dev_decisions")}
    if decided:
        top = max(decided, key=lambda k: decided[k].value())
        n_decided = interval(decided[top]).n
        print(f"\ndev decision accuracy (%): the gold decision ranked first given the gold rationale, n = {n_decided}")
        print(f"| {args.setting} | decision accuracy [95% CI] | minus best [95% CI], p |")
        print("|---|---|---|")
        for key, c in decided.items():
            ci = interval(c)
            diff = "-"
            if key != top:
                d = paired(c, decided[top])
                diff = f"{d.difference:+.1f} [{d.ci_low:+.1f}, {d.ci_high:+.1f}], {_p(d.p_value)}"
            print(f"| {key} | {ci.value:.1f} [{ci.ci_low:.1f}, {ci.ci_high:.1f}] | {diff} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
