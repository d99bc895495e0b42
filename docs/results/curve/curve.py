"""The learning curve (issue 29, item 4): α-UMi (GLPFT) and the compute-matched single LLM trained with the epoch
run's recipe (the `bench` profile) for a fraction of an epoch each, scored on the dev split only.

    .venv/bin/python docs/results/curve/curve.py train 0.0625 0.125   # umi train all --profile bench --epochs F
    .venv/bin/python docs/results/curve/curve.py eval 0.0625 0.125    # dev loss per role + static dev evaluation
    .venv/bin/python docs/results/curve/curve.py eval make-run        # make run's models (artifacts/runs), placed
    .venv/bin/python docs/results/curve/curve.py report               # table + chart of every point evaluated

A point F is the whole recipe at that budget: global for F epochs, each local stage for F epochs from it, and the
control (`global-matched`: the global data for as many tokens as the three locals together, from the same global
model). Trained in artifacts/curve/<F>/<stage> (stopped, `train` again continues: finished stages are skipped, the
interrupted one resumes from its checkpoint). Intermediate checkpoints of one long run are not used as points: under
a cosine schedule they are not what a run of that budget would give.

`eval` writes docs/results/curve/points/<F>/: `eval.json`/`eval.md` (umi eval --dev-only: Plan ACC, Act. EM and the
BFCL-graded variants on the first --limit trajectories of the BFCL dev split, the rule baselines, α-UMi paired against
the control) and `losses.json` (per-example dev loss of each role model on the same seeded dev examples the stages'
`eval_examples` draw). Generations go to a cache (artifacts/curve/generations.sqlite): a stopped `eval` resumes.
`report` reads every point there and writes curve.md and curve.png here, and logs both to MLflow (experiment
`umi-learning-curve`). Nothing here reads the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent

from umi.vocabulary import CONTROL_STAGE, STAGE_MANIFEST  # noqa: E402

POINTS = HERE / "points"
RUNS = ROOT / "artifacts" / "curve"
MAKE_RUN = "make-run"  # the point of make run's own models (artifacts/runs, the `cpu` profile)
ROLES = ("planner", "caller", "summarizer")
ALPHA, CONTROL = "alpha-umi", "single-matched"
METRICS = (("plan_acc", "Plan ACC"), ("act_em_bfcl", "Act. EM (BFCL)"))
DEFAULT_LIMIT = 40  # dev trajectories statically evaluated per point (the dev split holds 481 planner steps in all)


def _label(point: str) -> str:
    return point if point == MAKE_RUN else f"{float(point):g}"


def _run_dir(point: str) -> Path:
    return ROOT / "artifacts" / "runs" if point == MAKE_RUN else RUNS / _label(point)


def _umi() -> str:
    return str(Path(sys.executable).with_name("umi"))


def train(points: list[str], profile: str) -> None:
    for point in points:
        if point == MAKE_RUN:
            raise SystemExit("make run's models are trained by make run (or docs/results/full-eval/run.sh train)")
        cmd = [_umi(), "train", "all", "--profile", profile, "--epochs", _label(point), "--runs", str(_run_dir(point))]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)


def _epochs_seen(runs: Path) -> float | None:
    """What a run's global stage saw, in epochs of the whole global train split (make run trains a token budget: a
    seeded subset of the split, once)."""
    manifest = runs / "global" / "model" / STAGE_MANIFEST
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text(encoding="utf-8"))
    metrics, epochs = data.get("metrics") or {}, data["config"]["stages"]["global"]["epochs"]
    if not metrics.get("data_examples_source"):
        return None
    return epochs * metrics["data_examples"] / metrics["data_examples_source"]


def evaluate_point(point: str, limit: int, profile: str) -> None:
    from umi.agent.loop import build_agent
    from umi.eval.run import EvalRun, evaluate
    from umi.eval.settings import PROFILES
    from umi.inference.agent_specs import AgentSpec
    from umi.train.config import load_config
    from umi.train.engine import dev_example_losses

    runs = _run_dir(point)
    models = {stage: runs / stage / "model" for stage in ("global", *ROLES, CONTROL_STAGE)}
    missing = [str(p) for p in models.values() if not p.is_dir()]
    if missing:
        raise SystemExit(f"point {point}: not trained ({', '.join(missing)}): run `train` first")
    out = POINTS / _label(point)
    out.mkdir(parents=True, exist_ok=True)
    epochs = _epochs_seen(runs) if point == MAKE_RUN else float(point)
    fingerprints = {
        stage: json.loads((model / STAGE_MANIFEST).read_text(encoding="utf-8")).get("fingerprint")
        for stage, model in models.items()
    }
    about = {
        "point": _label(point),
        "epochs": epochs,
        "runs": str(runs.relative_to(ROOT)),
        "fingerprints": fingerprints,
    }
    (out / "point.json").write_text(json.dumps(about, indent=1) + "\n", encoding="utf-8")
    config = load_config("cpu" if point == MAKE_RUN else profile)
    losses_path = out / "losses.json"
    losses = json.loads(losses_path.read_text(encoding="utf-8")) if losses_path.is_file() else {}
    for name, model, role in (
        *((r, models[r], r) for r in ROLES),
        ("global", models["global"], "global"),
        (CONTROL, models[CONTROL_STAGE], "global"),
    ):
        if name not in losses:  # per example, on the stage's own dev sample: pairs across points
            n = config.stage_settings(role).eval_examples or 64
            losses[name] = dev_example_losses(model, role, ROOT / "artifacts" / "datasets", config.max_length, n)
            tmp = losses_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(losses, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, losses_path)
    agents = [
        AgentSpec.multi(ALPHA, models["planner"], models["caller"], models["summarizer"]),
        AgentSpec.single(CONTROL, models[CONTROL_STAGE]),
    ]
    run = EvalRun(
        out_dir=out,
        live=False,
        test=False,
        toolbench_ood=None,
        data_dir=ROOT / "data",
        params=ROOT / "params.yaml",
        settings=PROFILES["full"].with_(limit=limit, dtype="float32"),
        references=(CONTROL,),
        cache=RUNS / "generations.sqlite",
        tracking=False,
        build_agent=build_agent,
    )
    evaluate(agents, run)


def _points(points: Path) -> list[dict]:
    """Every evaluated point: its budget (fraction of an epoch, or make run's share of the bench epoch's tokens),
    the dev metrics of both agents and the per-role dev losses."""
    from umi.eval.stats import Clusters, interval

    rows = []
    for folder in sorted(points.iterdir() if points.is_dir() else []):
        report, losses, about = folder / "eval.json", folder / "losses.json", folder / "point.json"
        if not (report.is_file() and losses.is_file() and about.is_file()):
            continue
        data = json.loads(report.read_text(encoding="utf-8"))
        row = {"point": folder.name, "agents": {}, "losses": {}, "paired": {}}
        row["epochs"] = json.loads(about.read_text(encoding="utf-8"))["epochs"]
        for name in (ALPHA, CONTROL, "rule: last turn"):
            static = ((data["agents"].get(name) or {}).get("static") or {}).get("bfcl-dev")
            if static:
                row["agents"][name] = {m: static["intervals"].get(m) for m, _ in METRICS}
                row["n"] = static["n"]
                if name == ALPHA:
                    row["paired"] = {m: (static.get("paired") or {}).get(CONTROL, {}).get(m) for m, _ in METRICS}
        for name, items in json.loads(losses.read_text(encoding="utf-8")).items():
            ci = interval(Clusters.from_items([tuple(x) for x in items]))
            row["losses"][name] = {
                "value": ci.value / 100,
                "ci_low": ci.ci_low / 100,
                "ci_high": ci.ci_high / 100,
                "n": ci.n,
            }
        rows.append(row)
    return sorted(rows, key=lambda r: (r["epochs"] is None, r["epochs"] or 0))


def _ci(x: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if not x:
        return "–"
    return f"{x['value'] * scale:.{digits}f} [{x['ci_low'] * scale:.{digits}f}, {x['ci_high'] * scale:.{digits}f}]"


def _diff(d: dict | None) -> str:
    if not d:
        return "–"
    p = "p < 0.001" if d["p_value"] < 0.001 else f"p = {d['p_value']:.3f}"
    return f"{d['difference']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}], {p}"


def report(points: Path = POINTS, out: Path = HERE) -> None:
    """curve.md and curve.png in `out` from the points evaluated in `points`, both logged to MLflow
    (MLFLOW_TRACKING_URI, else the checkout's mlflow.db)."""
    rows = _points(points)
    if not rows:
        raise SystemExit("no evaluated point: run `eval` first")
    lines = [
        "| point | epochs | n (dev steps / trajectories) | α-UMi Plan ACC | control Plan ACC | last-turn rule | "
        "α-UMi − control Plan ACC | α-UMi Act. EM (BFCL) | control Act. EM (BFCL) | α-UMi − control Act. EM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, c, rule = (r["agents"].get(k, {}) for k in (ALPHA, CONTROL, "rule: last turn"))
        n = r.get("n") or {}
        epochs = "–" if r["epochs"] is None else f"{r['epochs']:.3g}"
        lines.append(
            f"| {r['point']} | {epochs} | {n.get('items', '–')} / {n.get('trajectories', '–')} | "
            f"{_ci(a.get('plan_acc'))} | {_ci(c.get('plan_acc'))} | {_ci(rule.get('plan_acc'))} | "
            f"{_diff(r['paired'].get('plan_acc'))} | {_ci(a.get('act_em_bfcl'))} | {_ci(c.get('act_em_bfcl'))} | "
            f"{_diff(r['paired'].get('act_em_bfcl'))} |"
        )
    names = ("global", *ROLES, CONTROL)
    lines += [
        "",
        "Dev loss (mean per-example completion loss [95% CI], n examples):",
        "",
        "| point | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [
            f"{_ci(r['losses'].get(k), digits=3)} (n={r['losses'][k]['n']})" if k in r["losses"] else "–" for k in names
        ]
        lines.append(f"| {r['point']} | " + " | ".join(cells) + " |")
    table = out / "curve.md"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    chart = out / "curve.png"
    _chart(rows, chart)
    print("\n".join(lines))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    import mlflow

    mlflow.set_experiment("umi-learning-curve")
    with mlflow.start_run(run_name="learning-curve"):
        for r in rows:
            if r["epochs"] is None:
                continue
            step = round(r["epochs"] * 10_000)  # MLflow steps are integers: ten-thousandths of an epoch
            for agent, values in r["agents"].items():
                for metric, v in values.items():
                    if v:
                        mlflow.log_metric(f"{agent}.{metric}".replace(" ", "_").replace(":", ""), v["value"], step=step)
            for name, v in r["losses"].items():
                mlflow.log_metric(f"dev_loss.{name}", v["value"], step=step)
        mlflow.log_artifact(str(table))
        mlflow.log_artifact(str(chart))
    print(f"\n{table}\n{chart}")


def _chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    placed = [r for r in rows if r["epochs"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (metric, title) in zip(axes[:2], METRICS):
        for name, style in ((ALPHA, "o-"), (CONTROL, "s--")):
            pts = [
                (r["epochs"], r["agents"][name][metric])
                for r in placed
                if r["point"] != MAKE_RUN and r["agents"].get(name, {}).get(metric)
            ]
            if pts:
                x = [p[0] for p in pts]
                y = [p[1]["value"] for p in pts]
                err = [[p[1]["value"] - p[1]["ci_low"] for p in pts], [p[1]["ci_high"] - p[1]["value"] for p in pts]]
                ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=name)
        for r in placed:
            if r["point"] == MAKE_RUN and r["agents"].get(ALPHA, {}).get(metric):
                ax.plot([r["epochs"]], [r["agents"][ALPHA][metric]["value"]], "r*", ms=12, label="make run (α-UMi)")
        rule = next(
            (
                r["agents"]["rule: last turn"].get(metric)
                for r in rows
                if r["agents"].get("rule: last turn", {}).get(metric)
            ),
            None,
        )
        if rule:
            ax.axhline(rule["value"], color="grey", ls=":", label="last-turn rule")
        ax.set(xscale="log", xlabel="epochs of the bench recipe (log)", ylabel=f"dev {title} (%)", title=title)
        ax.legend(fontsize=8)
    ax = axes[2]
    for name in ("global", *ROLES, CONTROL):
        pts = [(r["epochs"], r["losses"][name]) for r in placed if r["point"] != MAKE_RUN and name in r["losses"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1]["value"] for p in pts], "o-", label=name)
    ax.set(xscale="log", xlabel="epochs (log)", ylabel="dev loss", title="dev loss per role")
    ax.legend(fontsize=8)
    fig.suptitle("Learning curve on the BFCL dev split (95% intervals; bootstrap over trajectories)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "eval", "report"])
    parser.add_argument("points", nargs="*", help="fractions of an epoch (0.0625 ...) or make-run")
    parser.add_argument("--profile", default="bench")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="dev trajectories statically evaluated")
    args = parser.parse_args(argv)
    if args.action == "train":
        train(args.points, args.profile)
    elif args.action == "eval":
        for point in args.points:
            evaluate_point(point, args.limit, args.profile)
    else:
        report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
