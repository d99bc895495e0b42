"""A pipeline run's results for people: the evaluation's numbers as flat MLflow metrics, and the run's Markdown
summary (evaluation table, stages, registered versions, promotion, Bento) with links to the MLflow runs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def evaluation_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's numbers as flat MLflow metric names: <agent>.<test set>.<metric>, <agent>.live.<metric>."""
    from umi.eval.report import metric_key

    out: dict[str, float] = {}
    for name, result in (report.get("agents") or {}).items():
        sections = [(t, m) for t, m in (result.get("static") or {}).items()] + [("live", result.get("live") or {})]
        for section, metrics in sections:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[metric_key(name, section, key)] = float(value)
    return out


def log_evaluation(parent, report: Mapping[str, Any]) -> None:
    """The evaluation's numbers (evaluation_metrics), table and chart on a pipeline's parent run (umi.registry.tracking)."""
    parent.log_metrics(evaluation_metrics(report))
    parent.log_artifact(report["files"]["table"], "evaluation")
    parent.log_artifact(report["files"]["chart"], "evaluation")


def summary_markdown(
    *,
    title: str,
    run_id: str,
    experiment: str,
    stages: Mapping[str, Mapping[str, Any]],
    report: Mapping[str, Any] | None,
    versions: Mapping[str, str],
    decision: Mapping[str, Any],
    bento: Mapping[str, Any] | None = None,
    extra: Sequence[str] = (),
) -> str:
    """The run's summary: the stages and the evaluation with links to their MLflow runs, the registered versions,
    the promotion decision and the Bento built after it (`bento`: {"tag"} or {"error"}; None: none built)."""
    from umi.registry.tracking import run_link, tracking_for_ui

    lines = [
        f"## {title}",
        "",
        *extra,
        "",
        f"MLflow: pipeline run {run_link(run_id)} (experiment `{experiment}`); "
        f"open the UI with `mlflow ui --backend-store-uri {tracking_for_ui()}`.",
        "",
    ]
    if stages:
        lines += [
            "### Training",
            "",
            "| stage | train loss | cached | MLflow run | checkpoint |",
            "|---|---|---|---|---|",
        ]
        for name, r in stages.items():
            loss = r.get("metrics", {}).get("train_loss")
            lines.append(
                f"| {name} | {'-' if loss is None else f'{loss:.4f}'} | "
                f"{'yes' if r.get('cached') or r.get('skipped') else 'no'} | {run_link(r.get('run_id'))} | "
                f"`{r.get('checkpoint')}` |"
            )
        lines.append("")
    if report is not None:
        cached = " (cached: these checkpoints, data and settings were evaluated before)" if report.get("cached") else ""
        lines += [
            "### Evaluation",
            "",
            report.get("table", "").strip(),
            "",
            f"Evaluation run {run_link(report.get('run_id'))}{cached}; report `{report['files']['table']}`, "
            f"chart `{report['files']['chart']}`.",
            "",
        ]
        if report.get("skipped"):
            lines += [f"Not evaluated: {json.dumps(report['skipped'])}", ""]
    if versions:
        lines += ["### Registered models", "", "| model | version |", "|---|---|"]
        lines += [f"| umi-{role} | {v} |" for role, v in versions.items()] + [""]
    verdict = "promoted to champion" if decision.get("promote") else "not promoted"
    lines += ["### Promotion", "", f"**{verdict}**: {decision.get('reason', '-')}", ""]
    if bento:
        built = f"built `{bento['tag']}`" if bento.get("tag") else f"**not built**: {bento.get('error')}"
        lines += ["### Agent Bento", "", f"{built} (the champions after this promotion)", ""]
    return "\n".join(lines)
