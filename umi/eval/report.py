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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umi.eval.stats import holm, p_text, significant
from umi.vocabulary import (
    BFCL_DEV,
    BFCL_TEST,
    CONSTANT_ANSWER,
    LIVE_DEV,
    LIVE_TEST,
    LIVE_TEST_SETS,
    NO_CALL,
    RULE_ALWAYS_CALLER,
    RULE_LAST_TURN,
    TOOLBENCH_OOD,
)

__all__ = [
    "METRIC_COLUMNS",
    "LIVE_COLUMNS",
    "Verdict",
    "verdicts",
    "add_verdicts",
    "table_markdown",
    "write_chart",
    "log_to_mlflow",
    "metric_key",
]

METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("plan_acc", "Plan ACC"),
    ("act_em", "Act. EM"),
    ("hallu", "Hallu."),
    ("arg_f1", "Arg. F1"),
    ("rouge_l", "R-L"),
)
# the headline live metric first: bfcl_eval's multi-turn checker; our gold-state check beside it
LIVE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("bfcl_checker_pass_rate", "live BFCL checker"),
    ("pass_rate", "live state"),
)
BFCL_GRADE_COLUMNS: tuple[tuple[str, str], ...] = (("act_em_bfcl", "Act. EM (BFCL)"), ("arg_f1_bfcl", "Arg. F1 (BFCL)"))
PAIRED_STATIC: tuple[tuple[str, str], ...] = (
    ("plan_acc", "Plan ACC"),
    ("act_em", "Act. EM"),
    ("arg_f1", "Arg. F1"),
    ("mean_static", "mean of the three"),
    ("hallu", "Hallu."),
    ("rouge_l", "R-L"),
)
TEST_SET_TITLES = {
    BFCL_TEST: "BFCL test",
    TOOLBENCH_OOD: "ToolBench OOD",
    BFCL_DEV: "BFCL dev (selection)",
    LIVE_TEST: "live (BFCL multi-turn test)",
    LIVE_DEV: "live (BFCL multi-turn dev, selection)",
}


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def _static_sets(agents: Mapping[str, dict]) -> list[str]:
    names: list[str] = []
    for result in agents.values():
        for name in result.get("static") or {}:
            if name not in names:
                names.append(name)
    return names


def _has_live(agents: Mapping[str, dict]) -> bool:
    return any(r.get("live") for r in agents.values())


def table_markdown(
    agents: Mapping[str, dict], test_sets: Mapping[str, dict] | None = None, cache: Mapping[str, Any] | None = None
) -> str:
    """The Table-1-shaped markdown: rows = agents, columns = the five metrics per test set, then live pass rates.
    cache: the generation cache's counts (umi.eval.generation_cache.CacheStats), said where it answered anything."""
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
    notes = ["", 'All numbers in %. Hallu. is lower-better; "–": undefined (no step of that kind) or not run.']
    for s in sets:
        counts = [((r.get("static") or {}).get(s) or {}) for r in agents.values()]
        # the gold steps (an agent's own `steps` are those it was prompted on)
        steps = max((c.get("prompts", {}).get("steps", c.get("steps") or 0) for c in counts), default=None)
        info = (test_sets or {}).get(s, {})
        line = f"- {TEST_SET_TITLES.get(s, s)}: {info.get('trajectories', '?')} trajectories"
        if info.get("available") is not None:
            line += f" of {info['available']}"
        line += f", {steps if steps is not None else '?'} gold steps"
        if info.get("rejected"):
            ids = ", ".join(f"{r['id']} ({r['reason']})" for r in info["rejected"])
            line += f"; rejected by the importer: {ids}"
        notes.append(line)
    if live:
        info = (test_sets or {}).get(LIVE_TEST, {})
        entries = next(
            (r["live"]["entries"] + r["live"].get("not_prompted", 0) for r in agents.values() if r.get("live")), "?"
        )
        line = f"- live: {entries} BFCL multi_turn_base test entries"
        if info.get("available") is not None:
            line += f" of {info['available']}"
        notes.append(
            line + "; BFCL checker = bfcl_eval's multi-turn checker on the executed calls (the headline); "
            "state = every turn ends in the gold tool state"
        )
    switched_off = [n for n, i in (test_sets or {}).items() if i.get("switched_off")]
    if switched_off:
        notes.append(f"- switched off by name: {', '.join(switched_off)}")
    if cache and cache.get("hits"):
        line = f"- generation cache: {cache['hits']} generations answered from it, {cache.get('misses', 0)} computed"
        if cache.get("twin_hits"):
            checks = ", ".join(
                f"{t['matched']} identical of {t['matched'] + t['differed']} ({t.get('tokens', '?')} tokens)"
                for t in cache["twins"].values()
            )
            line += (
                f"; {cache['twin_hits']} of the answers were made by twin weights (other bytes of the same training "
                f"recipe that wrote the same as these on their first generations: {checks})"
            )
        notes.append(line)
    sections = [
        _training_section(agents),
        _prompts_section(agents),
        _intervals_section(agents),
        _paired_section(agents),
        _call_sources_section(agents),
        _categories_section(agents),
        _significance_section(agents),
    ]
    return "\n".join(lines + notes) + "\n" + "".join(s for s in sections if s)


def _training_section(agents: Mapping[str, dict]) -> str:
    """What each agent's weights cost to train (umi.eval.agents.training_budget): compare agents at equal compute."""
    rows = [(n, r["training"]) for n, r in agents.items() if r.get("training") is not None]
    if not rows:
        return ""
    out = ["", "## Training compute", "", "| agent | training tokens | optimiser steps | stages |", "|---|---|---|---|"]
    out += [
        f"| {n} | {t['tokens']:,} | {t['optimizer_steps']} | {', '.join(t['stages']) or '– (untrained)'} |"
        for n, t in rows
    ]
    return "\n".join(out) + "\n"


def _prompts_section(agents: Mapping[str, dict]) -> str:
    """Per agent and test set: prompts that fit only with history dropped (cut), prompts that did not fit at all, and
    the steps (entries, live) that were therefore never put to the agent: left out, not scored as wrong."""
    rows = []
    for name, result in agents.items():
        for s, entry in (result.get("static") or {}).items():
            prompts = (entry or {}).get("prompts")
            if prompts:
                rows.append(
                    f"| {name} | {TEST_SET_TITLES.get(s, s)} | {prompts['cut']} | {prompts['not_fitting']} | "
                    f"{prompts['steps_not_prompted']} of {prompts['steps']} steps |"
                )
        misfits = (result.get("budget") or {}).get("live_gold_path_misfits") or {}
        for key in LIVE_TEST_SETS:
            live = result.get(key) or {}
            if misfits.get(key):
                rows.append(
                    f"| {name} | {TEST_SET_TITLES.get(key, key)}: gold path | – | – | {len(misfits[key])} entries "
                    f"whose gold calls cannot be prompted at this budget ({', '.join(misfits[key])}) |"
                )
            if "not_prompted" in live:
                total = live["entries"] + live["not_prompted"]
                ids = ", ".join(live.get("not_prompted_entries") or [])
                rows.append(
                    f"| {name} | {TEST_SET_TITLES.get(key, key)} | – | – | {live['not_prompted']} of {total} "
                    f"entries{f' ({ids})' if ids else ''} |"
                )
    if not rows:
        return ""
    out = [
        "",
        "## Prompt budget",
        "",
        "Cut: prompts that fit the budget only with history turns dropped from the left, as training does. Not "
        "fitting: prompts that do not fit even with no history. A step (live: an entry) with a prompt that did not "
        "fit was never put to the agent: it is **not prompted**, left out of that agent's numbers and of every "
        "paired comparison with it (each says how many items it left out), never scored as wrong.",
        "",
        "| agent | test set | prompts cut | prompts not fitting | not prompted |",
        "|---|---|---|---|---|",
        *rows,
    ]
    return "\n".join(out) + "\n"


def _call_sources_section(agents: Mapping[str, dict]) -> str:
    """Where α-UMi's calls come from: the caller after a planner that decided `caller`, or after one that wrote no
    decision (the step goes on as `Next: caller`, as the live agent does): its exact actions and hallucinations."""
    rows = []
    for name, result in agents.items():
        for s, entry in (result.get("static") or {}).items():
            sources = (entry or {}).get("call_sources")
            if not sources or not any(v["calls"] for v in sources.values()):
                continue
            total = {k: sum(v[k] for v in sources.values()) for k in ("calls", "exact_actions", "hallucinations")}
            for source, v in sources.items():
                rows.append(
                    f"| {name} | {TEST_SET_TITLES.get(s, s)} | {source} | {v['calls']} of {total['calls']} | "
                    f"{v['exact_actions']} of {total['exact_actions']} | "
                    f"{v['hallucinations']} of {total['hallucinations']} |"
                )
    if not rows:
        return ""
    out = [
        "",
        "## Where the α-UMi calls come from",
        "",
        "Steps where the caller ran, by why it ran: the planner decided `caller`, or the planner wrote no decision "
        "and the step went on as `Next: caller` (the agent's real behaviour: the live loop does the same). Exact "
        "actions (Act. EM hits) and hallucinations (Hallu. steps) of each kind, over the prompted steps.",
        "",
        "| agent | test set | caller ran because | calls | exact actions | hallucinations |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    return "\n".join(out) + "\n"


def _ci(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.1f}"
    return f"{entry['value']:.1f} [{entry['ci_low']:.1f}, {entry['ci_high']:.1f}]"


def _live_sets(agents: Mapping[str, dict]) -> list[str]:
    return [k for k in LIVE_TEST_SETS if any(r.get(k) for r in agents.values())]


def _intervals_section(agents: Mapping[str, dict]) -> str:
    """Per test set: every metric with its 95% interval and the n behind it."""
    out = [
        "",
        "## Intervals",
        "",
        "95% percentile intervals of a bootstrap that resamples whole twin groups (trajectories, or entries, that "
        "share a question or a gold answer: one cluster; a trajectory without a twin is its own); n = prompted steps "
        "/ trajectories (and the groups resampled, where fewer) for static, prompted entries for live. Baselines: the "
        "plan rules, the no-call agent and the constant answer (umi.eval.baselines).",
        "",
    ]
    any_rows = False
    for s in _static_sets(agents):
        columns = list(METRIC_COLUMNS) + [
            c
            for c in BFCL_GRADE_COLUMNS
            if any(((r.get("static") or {}).get(s) or {}).get("intervals", {}).get(c[0]) for r in agents.values())
        ]
        out += [
            f"### {TEST_SET_TITLES.get(s, s)}",
            "",
            "| agent | n | " + " | ".join(label for _, label in columns) + " |",
            "|" + "---|" * (len(columns) + 2),
        ]
        for name, result in agents.items():
            entry = ((result.get("static") or {}).get(s)) or {}
            if "intervals" not in entry:
                continue
            any_rows = True
            n = entry.get("n", {})
            groups = n.get("clusters")
            grouped = f" ({groups} groups)" if groups is not None and groups != n.get("trajectories") else ""
            out.append(
                f"| {name} | {n.get('items', '?')} / {n.get('trajectories', '?')}{grouped} | "
                + " | ".join(_ci(entry["intervals"].get(k)) for k, _ in columns)
                + " |"
            )
        out.append("")
    for key in _live_sets(agents):
        metrics = (("bfcl_checker_pass_rate", "BFCL checker"), ("pass_rate", "state"), ("turn_pass_rate", "turns"))
        out += [
            f"### {TEST_SET_TITLES[key]}",
            "",
            "| agent | entries | " + " | ".join(label for _, label in metrics) + " |",
            "|" + "---|" * (len(metrics) + 2),
        ]
        for name, result in agents.items():
            entry = result.get(key) or {}
            if "intervals" not in entry:
                continue
            any_rows = True
            out.append(
                f"| {name} | {entry.get('entries', '?')} | "
                + " | ".join(_ci(entry["intervals"].get(k)) for k, _ in metrics)
                + " |"
            )
        out.append("")
    return "\n".join(out) if any_rows else ""


def _diff(entry: Mapping[str, Any] | None, p_key: str = "p_value") -> str:
    if not entry or entry.get("difference") is None:
        return "–"
    ci = "" if entry.get("ci_low") is None else f" [{entry['ci_low']:+.1f}, {entry['ci_high']:+.1f}]"
    p = "" if entry.get(p_key) is None else f", {p_text(entry[p_key])}"
    return f"{entry['difference']:+.1f}{ci}{p}"


def _left_out(cmp: Mapping[str, Any]) -> str:
    entry = next((e for e in cmp.values() if isinstance(e, Mapping) and "n" in e), None)
    if entry is None:
        return "–"
    return f"{entry['n']} ({entry.get('left_out', 0)} left out)"


def _paired_rows(agents: Mapping[str, dict]):
    """(section key, section title, agent, reference, paired entries, metric columns) for every comparison."""
    for s in _static_sets(agents):
        for name, result in agents.items():
            for ref, cmp in (((result.get("static") or {}).get(s) or {}).get("paired") or {}).items():
                yield s, TEST_SET_TITLES.get(s, s), name, ref, cmp, PAIRED_STATIC
    for key in _live_sets(agents):
        for name, result in agents.items():
            for ref, cmp in ((result.get(key) or {}).get("paired") or {}).items():
                yield key, TEST_SET_TITLES[key], name, ref, cmp, LIVE_COLUMNS


def _paired_section(agents: Mapping[str, dict]) -> str:
    rows = list(_paired_rows(agents))
    if not rows:
        return ""
    out = [
        "",
        "## Paired comparisons",
        "",
        "Agent minus reference on the items both were prompted on, in points: difference [95% bootstrap interval], "
        "two-sided p of a sign-flip permutation test over twin groups (unadjusted: the verdicts below adjust for "
        "their number). n: the items compared, and those left out because one of the two was not prompted there.",
        "",
    ]
    current = None
    for key, title, name, ref, cmp, columns in rows:
        if key != current:
            current = key
            out += [
                "",
                f"### {title}",
                "",
                "| agent | vs | n | " + " | ".join(label for _, label in columns) + " |",
                "|" + "---|" * (len(columns) + 3),
            ]
        out.append(f"| {name} | {ref} | {_left_out(cmp)} | " + " | ".join(_diff(cmp.get(k)) for k, _ in columns) + " |")
    return "\n".join(out) + "\n"


def _categories_section(agents: Mapping[str, dict]) -> str:
    out = []
    for s in _static_sets(agents):
        cats: list[str] = []
        for r in agents.values():
            for c in ((r.get("static") or {}).get(s) or {}).get("categories") or {}:
                if c not in cats:
                    cats.append(c)
        if len(cats) < 2:
            continue
        out += [
            "",
            f"### {TEST_SET_TITLES.get(s, s)} by category (Plan ACC / Act. EM / Arg. F1, n = steps)",
            "",
            "| agent | " + " | ".join(cats) + " |",
            "|" + "---|" * (len(cats) + 1),
        ]
        for name, r in agents.items():
            per = ((r.get("static") or {}).get(s) or {}).get("categories") or {}
            if not per:
                continue
            cells = []
            for c in cats:
                iv = (per.get(c) or {}).get("intervals", {})
                vals = [iv.get(m, {}).get("value") for m in ("plan_acc", "act_em", "arg_f1")]
                n = (per.get(c) or {}).get("n", {}).get("items", 0)
                cells.append(" / ".join("–" if v is None else f"{v:.0f}" for v in vals) + f" (n={n})")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return ("\n## Per category\n" + "\n".join(out) + "\n") if out else ""


LOWER_IS_BETTER = ("hallu",)


def _verdict_metrics(ref: str, cmp: Mapping[str, Any], static: bool) -> list[str]:
    """The metrics a comparison is read on. Live: the checker. Static: the mean of the three; against a plan rule
    Plan ACC (it predicts nothing else); against the constant answer R-L (all it writes); against the no-call agent
    the mean and Hallu. (the no-call agent's Hallu. is 0 by construction: a Hallu. reads against it)."""
    if not static:
        return ["bfcl_checker_pass_rate"]
    if ref in (RULE_LAST_TURN, RULE_ALWAYS_CALLER):
        return ["plan_acc"]
    if ref == CONSTANT_ANSWER:
        return ["rouge_l"]
    headline = ["mean_static" if "mean_static" in cmp else "plan_acc"]
    return headline + (["hallu"] if ref == NO_CALL else [])


@dataclass(frozen=True)
class Verdict:
    """One line of "What the intervals support": agent vs reference on one metric, its entry, and its p-value
    Holm-adjusted over every verdict of the report (`p_holm`; `family`: how many)."""

    key: str
    title: str
    agent: str
    reference: str
    metric: str
    label: str
    entry: Mapping[str, Any]
    p_holm: float
    family: int

    def outcome(self) -> str | None:
        """ "better" / "worse" for the agent (Hallu.: fewer hallucinations is better), on the adjusted p; else None."""
        said = significant({**self.entry, "p_value": self.p_holm})
        if said is not None and self.metric in LOWER_IS_BETTER:
            return {"better": "worse", "worse": "better"}[said]
        return said


def verdicts(agents: Mapping[str, dict]) -> list[Verdict]:
    """Every verdict of the report, one family: each comparison's headline metrics (`_verdict_metrics`), with its
    p-value Holm-adjusted over all of them."""
    rows = []
    for key, title, name, ref, cmp, columns in _paired_rows(agents):
        for metric in _verdict_metrics(ref, cmp, columns is PAIRED_STATIC):
            entry = cmp.get(metric) or {}
            if entry.get("difference") is None or entry.get("p_value") is None:
                continue
            rows.append((key, title, name, ref, metric, dict(columns).get(metric, metric), entry))
    adjusted = holm([r[6]["p_value"] for r in rows])
    return [Verdict(*r, p_holm=p, family=len(rows)) for r, p in zip(rows, adjusted)]


def add_verdicts(agents: Mapping[str, dict]) -> dict[str, Any]:
    """Write each verdict's Holm-adjusted p (`p_holm`) into its paired entry; returns the family's description."""
    found = verdicts(agents)
    for v in found:
        v.entry["p_holm"] = round(v.p_holm, 6)  # type: ignore[index]
    return {
        "method": "holm",
        "size": len(found),
        "members": "every agent-vs-reference verdict of the report (What the intervals support)",
    }


def _significance_section(agents: Mapping[str, dict]) -> str:
    """What the intervals support, in words: each comparison is significant or it is not, after Holm's adjustment
    over the report's verdicts."""
    found = verdicts(agents)
    if not found:
        return ""
    lines = []
    for v in found:
        worded = {
            "better": "better (significant: interval excludes 0 and Holm-adjusted p < 0.05)",
            "worse": "worse (significant: interval excludes 0 and Holm-adjusted p < 0.05)",
        }.get(v.outcome() or "", "**not significantly different** (the interval contains 0, or adjusted p >= 0.05)")
        lines.append(
            f"- {v.title}: {v.agent} vs {v.reference}, {v.label}: {_diff(v.entry)}, Holm-adjusted "
            f"{p_text(v.p_holm)}: {worded}"
        )
    head = (
        f"One family: the {found[0].family} verdicts below, each agent against each reference on its headline "
        "metric(s), Holm-adjusted together (umi.eval.stats.holm). Hallu. is lower-better: fewer hallucinations "
        "than the reference is `better`."
    )
    return "\n## What the intervals support\n\n" + head + "\n\n" + "\n".join(lines) + "\n"


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
            intervals = metrics.get("intervals") or {}
            errors = np.array(
                [
                    [
                        max(h - ((intervals.get(key) or {}).get("ci_low") or h), 0.0)
                        for (key, _), h in zip(columns, heights)
                    ],
                    [
                        max(((intervals.get(key) or {}).get("ci_high") or h) - h, 0.0)
                        for (key, _), h in zip(columns, heights)
                    ],
                ]
            )
            bars = ax.bar(
                x + (k - (len(names) - 1) / 2) * width,
                heights,
                width,
                label=name,
                yerr=errors if intervals else None,
                capsize=2,
                error_kw={"elinewidth": 0.8},
            )
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
    fig.suptitle(title + " (error bars: 95% bootstrap intervals)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(*parts: str) -> str:
    """An MLflow metric name from parts (characters MLflow refuses become `_`)."""
    return ".".join(_KEY_CHARS.sub("_", p) for p in parts)


def _numbers(prefix: tuple[str, ...], section: Mapping[str, Any], out: dict[str, float]) -> None:
    """Scalars of a summary, its intervals (`.ci_low` / `.ci_high`) and paired comparisons
    (`.vs.<reference>.<metric>.difference|ci_low|ci_high|p_value`)."""
    for key, value in section.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[metric_key(*prefix, key)] = float(value)
    for metric, iv in (section.get("intervals") or {}).items():
        for bound in ("ci_low", "ci_high"):
            if isinstance(iv.get(bound), (int, float)):
                out[metric_key(*prefix, metric, bound)] = float(iv[bound])
    for ref, cmp in (section.get("paired") or {}).items():
        for metric, entry in cmp.items():
            for field in ("difference", "ci_low", "ci_high", "p_value", "p_holm"):
                if isinstance(entry.get(field), (int, float)):
                    out[metric_key(*prefix, "vs", ref, metric, field)] = float(entry[field])


def _metrics(agents: Mapping[str, dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, result in agents.items():
        for test_set, metrics in (result.get("static") or {}).items():
            _numbers((name, test_set), metrics, out)
        for key in LIVE_TEST_SETS:
            _numbers((name, key), result.get(key) or {}, out)
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
