"""The evaluation report: a markdown table shaped like the paper's Table 1, a bar chart, and the MLflow run.

Table: one row per agent; per static test set the five metrics (Plan ACC, Act. EM, Hallu., Arg. F1, R-L, in %;
Hallu. lower is better; "–" where a metric is undefined: no step of its kind, or the test set was not run), then the
live pass rates (ours and bfcl_eval's checker). Chart: one panel per test set (metrics x agents) and one for the
live pass rates. MLflow: metrics as `<agent>.<test set>.<metric>` and `<agent>.live.<metric>`, settings as params,
the report files and per-step details as artifacts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["METRIC_COLUMNS", "LIVE_COLUMNS", "table_markdown", "write_chart", "log_to_mlflow", "metric_key"]

METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("plan_acc", "Plan ACC"),
    ("act_em", "Act. EM"),
    ("hallu", "Hallu."),
    ("arg_f1", "Arg. F1"),
    ("rouge_l", "R-L"),
)
LIVE_COLUMNS: tuple[tuple[str, str], ...] = (("pass_rate", "live pass"), ("bfcl_checker_pass_rate", "BFCL checker"))
TEST_SET_TITLES = {"bfcl-test": "BFCL test", "toolbench-ood": "ToolBench OOD"}


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def _static_sets(agents: Mapping[str, dict]) -> list[str]:
    names: list[str] = []
    for result in agents.values():
        for name in (result.get("static") or {}):
            if name not in names:
                names.append(name)
    return names


def _has_live(agents: Mapping[str, dict]) -> bool:
    return any(r.get("live") for r in agents.values())


def table_markdown(agents: Mapping[str, dict], test_sets: Mapping[str, dict] | None = None) -> str:
    """The Table-1-shaped markdown: rows = agents, columns = the five metrics per test set, then live pass rates."""
    sets = _static_sets(agents)
    live = _has_live(agents)
    header = ["agent"]
    for s in sets:
        title = TEST_SET_TITLES.get(s, s)
        header += [f"{title} {label}" for _, label in METRIC_COLUMNS]
    if live:
        header += [label for _, label in LIVE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in agents.items():
        row = [name]
        for s in sets:
            metrics = (result.get("static") or {}).get(s) or {}
            row += [_fmt(metrics.get(key)) for key, _ in METRIC_COLUMNS]
        if live:
            metrics = result.get("live") or {}
            row += [_fmt(metrics.get(key)) for key, _ in LIVE_COLUMNS]
        lines.append("| " + " | ".join(row) + " |")
    notes = ["", "All numbers in %. Hallu. is lower-better; \"–\": undefined (no step of that kind) or not run."]
    for s in sets:
        counts = {name: (r.get("static") or {}).get(s, {}).get("steps") for name, r in agents.items()}
        steps = next((c for c in counts.values() if c is not None), None)
        info = (test_sets or {}).get(s, {})
        line = f"- {TEST_SET_TITLES.get(s, s)}: {info.get('trajectories', '?')} trajectories"
        if info.get("available") is not None:
            line += f" of {info['available']}"
        line += f", {steps if steps is not None else '?'} scored steps"
        if info.get("rejected"):
            ids = ", ".join(f"{r['id']} ({r['reason']})" for r in info["rejected"])
            line += f"; rejected by the importer: {ids}"
        notes.append(line)
    if live:
        info = (test_sets or {}).get("live", {})
        entries = next((r["live"]["entries"] for r in agents.values() if r.get("live")), "?")
        line = f"- live: {entries} BFCL multi_turn_base test entries"
        if info.get("available") is not None:
            line += f" of {info['available']}"
        notes.append(line + "; pass = every turn ends in the gold tool state; BFCL checker = bfcl_eval's "
                     "multi-turn checker on the same executed calls")  # fmt: skip
    return "\n".join(lines + notes) + "\n"


def write_chart(agents: Mapping[str, dict], path: str | Path, title: str = "umi evaluation") -> Path:
    """Grouped bars: one panel per static test set (the five metrics, one bar per agent), one for live pass rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    sets = _static_sets(agents)
    panels: list[tuple[str, list[tuple[str, str]], str]] = [(s, list(METRIC_COLUMNS), "static") for s in sets]
    if _has_live(agents):
        panels.append(("live", list(LIVE_COLUMNS), "live"))
    if not panels:
        panels = [("(nothing evaluated)", [], "none")]
    names = list(agents)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    width = 0.8 / max(len(names), 1)
    for ax, (panel, columns, kind) in zip(axes[0], panels):
        x = np.arange(len(columns))
        for k, name in enumerate(names):
            result = agents[name]
            metrics = ((result.get("static") or {}).get(panel) if kind == "static" else result.get("live")) or {}
            values = [metrics.get(key) for key, _ in columns]
            heights = [v if v is not None else 0.0 for v in values]
            bars = ax.bar(x + (k - (len(names) - 1) / 2) * width, heights, width, label=name)
            for bar, v in zip(bars, values):
                if v is None:
                    bar.set_hatch("//")
                    bar.set_alpha(0.3)
        labels = [f"{label}\n(lower better)" if key == "hallu" else label for key, label in columns]
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.set_title(TEST_SET_TITLES.get(panel, panel))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(*parts: str) -> str:
    """An MLflow metric name from parts (characters MLflow refuses become `_`)."""
    return ".".join(_KEY_CHARS.sub("_", p) for p in parts)


def _metrics(agents: Mapping[str, dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, result in agents.items():
        for test_set, metrics in (result.get("static") or {}).items():
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[metric_key(name, test_set, key)] = float(value)
        for key, value in (result.get("live") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[metric_key(name, "live", key)] = float(value)
    return out


def log_to_mlflow(
    report: dict[str, Any],
    files: list[Path],
    details_dir: Path | None,
    *,
    experiment: str = "umi-eval",
    parent_run_id: str | None = None,
    run_name: str = "evaluation",
) -> str:
    """One run in `experiment` (a child of `parent_run_id`, or of the active run when there is one): params, metrics,
    the report files, and `details_dir` under `details/`. Returns the run id. Uses the client API, so it neither needs
    nor disturbs an active run, and the parent may be finished or in another experiment."""
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    if parent_run_id is None and mlflow.active_run() is not None:
        parent_run_id = mlflow.active_run().info.run_id
    tags = {"umi.kind": "evaluation"}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        params = {"agents": ", ".join(report["agents"])}
        for key, value in (report.get("settings") or {}).items():
            params[f"settings.{key}"] = str(value)
        for name, spec in (report.get("specs") or {}).items():
            for role, path in spec.items():
                if role not in ("name",):
                    params[f"agent.{name}.{role}"] = str(path)
        for name, info in (report.get("test_sets") or {}).items():
            for key in ("source", "trajectories", "available"):
                if key in info:
                    params[f"test_set.{name}.{key}"] = str(info[key])
            if info.get("rejected"):
                params[f"test_set.{name}.rejected"] = ", ".join(r["id"] for r in info["rejected"])[:5000]
        ts = int(time.time() * 1000)
        metrics = [Metric(k, v, ts, 0) for k, v in _metrics(report["agents"]).items()]
        param_list = [Param(metric_key(k), v[:6000]) for k, v in params.items()]
        for start in range(0, max(len(metrics), len(param_list)), 100):  # log_batch takes at most 100 params a call
            client.log_batch(run_id, metrics=metrics[start : start + 100], params=param_list[start : start + 100])
        for f in files:
            client.log_artifact(run_id, str(f))
        if details_dir is not None and details_dir.is_dir() and any(details_dir.iterdir()):
            client.log_artifacts(run_id, str(details_dir), artifact_path="details")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
