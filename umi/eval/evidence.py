"""From per-step and per-entry records to what the report may claim: `n`, intervals, per-category numbers and paired
comparisons (umi.eval.stats does the statistics).

Static records (umi.eval.static, umi.eval.baselines) belong to a trajectory (a record id is
`<trajectory id>#<step>`), live records (umi.eval.live) to an entry, with the turn pass rate over the entry's turns.
Clusters are twin groups: trajectories of one split group (umi.schema.Trajectory.split_key: BFCL entries sharing a
question or a gold answer) are not independent, so `clusters` maps a trajectory id to its group and the bootstrap
resamples groups; a trajectory without a twin is its own cluster.

Not prompted is not wrong: an item whose prompt did not fit the budget (a static step with `prompted: false`, a live
entry whose rollout ran out of context) is not scored. `summary` covers the prompted items and counts the others;
`compare` runs on the items both agents were prompted on and says how many it left out (`left_out`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from umi.eval.stats import Clusters, interval, paired

__all__ = [
    "STATIC_METRICS",
    "LIVE_METRICS",
    "HEADLINE_STATIC",
    "static_items",
    "live_items",
    "summary",
    "by_category",
    "compare",
]

# report metric -> the key of a record's "score" holding the step's 0/1 (or 0-1) value; None there: not covered
STATIC_METRICS: dict[str, str] = {
    "plan_acc": "plan_correct",
    "act_em": "action_correct",
    "hallu": "hallucinated",
    "arg_f1": "arg_f1",
    "rouge_l": "rouge_l",
    "act_em_bfcl": "action_correct_bfcl",
    "arg_f1_bfcl": "arg_f1_bfcl",
    "ast_acc_bfcl": "ast_correct_bfcl",
}
LIVE_METRICS: tuple[str, ...] = ("bfcl_checker_pass_rate", "pass_rate", "turn_pass_rate")
# the promotion rule's static headline: the mean of these (umi.registry.rule)
HEADLINE_STATIC: tuple[str, ...] = ("plan_acc", "act_em", "arg_f1")
MEAN_STATIC = "mean_static"


def _value(v: Any) -> float | None:
    if v is None:
        return None
    return float(v)


_KEYS = ("id", "cluster", "trajectory", "category", "prompted")  # an item's fields that are not metrics


def static_items(
    records: Sequence[Mapping],
    categories: Mapping[str, str] | None = None,
    clusters: Mapping[str, str] | None = None,
) -> list[dict]:
    """One item per step: `id` (the step), `trajectory`, `cluster` (the trajectory's twin group, `clusters`; else the
    trajectory), `category`, `prompted`, and a 0-1 value (or None) per metric (none when not prompted)."""
    items = []
    for r in records:
        trajectory = str(r.get("trajectory_id") or str(r["id"]).rsplit("#", 1)[0])
        score = r.get("score") or {}
        item = {
            "id": str(r["id"]),
            "trajectory": trajectory,
            "cluster": (clusters or {}).get(trajectory, trajectory),
            "category": r.get("category") or (categories or {}).get(trajectory, "all"),
            "prompted": bool(r.get("prompted", True)),
        }
        for metric, key in STATIC_METRICS.items():
            if key in score:
                item[metric] = _value(score[key])
        items.append(item)
    return items


def live_items(records: Sequence[Mapping], clusters: Mapping[str, str] | None = None) -> list[dict]:
    """Items per entry: one for the entry's pass and checker verdict, one per turn for the turn pass rate; `cluster`
    the entry's twin group (`clusters`, by trajectory id; else the entry). An entry whose rollout ran out of context
    is not prompted (the record's `prompted`, umi.eval.live.rollout_entry)."""
    items = []
    for r in records:
        entry = str(r.get("entry_id", r.get("id")))
        cluster = (clusters or {}).get(str(r.get("trajectory_id")), entry)
        base = {"id": entry, "trajectory": entry, "cluster": cluster, "prompted": bool(r.get("prompted", True))}
        checker = r.get("bfcl_checker")
        items.append(
            {
                **base,
                "category": "multi_turn",
                "pass_rate": float(bool(r["passed"])),
                "bfcl_checker_pass_rate": float(bool(checker["valid"])) if isinstance(checker, Mapping) else None,
            }
        )
        turns, passed = int(r.get("turns", 0)), int(r.get("turns_passed", 0))
        items += [{**base, "turn_pass_rate": 1.0 if t < passed else 0.0} for t in range(turns)]
    return items


def _metrics_of(items: Sequence[Mapping]) -> list[str]:
    names: list[str] = []
    for it in items:
        for k in it:
            if k not in _KEYS and k not in names:
                names.append(k)
    return names


def _prompted(items: Sequence[Mapping]) -> list[Mapping]:
    return [it for it in items if it.get("prompted", True)]


def _ids(items: Sequence[Mapping]) -> set[str]:
    return {str(it.get("id", it["cluster"])) for it in items}


def _clusters(items: Sequence[Mapping], metric: str) -> Clusters:
    return Clusters.from_items([(it["cluster"], it.get(metric)) for it in items if metric in it])


def summary(items: Sequence[Mapping], cluster_name: str) -> dict[str, Any]:
    """{"n": {"items", <cluster_name>, "clusters", "not_prompted"}, "intervals": {metric: {value, ci_low, ci_high, n,
    clusters}}}: over the prompted items; `clusters` counts the twin groups the bootstrap resamples."""
    prompted = _prompted(items)
    intervals = {m: interval(_clusters(prompted, m)).to_dict() for m in _metrics_of(items)}
    n_items = sum(1 for it in prompted if "plan_acc" in it or "pass_rate" in it)
    return {
        "n": {
            "items": n_items,
            cluster_name: len({it.get("trajectory", it["cluster"]) for it in prompted}),
            "clusters": len({it["cluster"] for it in prompted}),
            "not_prompted": len(_ids(items) - _ids(prompted)),
        },
        "intervals": intervals,
    }


def by_category(items: Sequence[Mapping], cluster_name: str) -> dict[str, dict[str, Any]]:
    """Per category: each metric's value and interval, and its n."""
    cats: dict[str, list[Mapping]] = {}
    for it in items:
        cats.setdefault(str(it.get("category", "all")), []).append(it)
    return {c: summary(group, cluster_name) for c, group in sorted(cats.items())}


def compare(items_a: Sequence[Mapping], items_b: Sequence[Mapping], *, static: bool) -> dict[str, dict]:
    """A - B per metric both have, on the items both agents were prompted on (each entry's `left_out`: the items of
    either that are not), and (static) the mean of HEADLINE_STATIC."""
    both = _ids(_prompted(items_a)) & _ids(_prompted(items_b))
    left_out = len(_ids(items_a) | _ids(items_b)) - len(both)
    items_a = [it for it in items_a if str(it.get("id", it["cluster"])) in both]
    items_b = [it for it in items_b if str(it.get("id", it["cluster"])) in both]
    out: dict[str, dict] = {}
    common = set(_metrics_of(items_a)) & set(_metrics_of(items_b))
    for metric in [m for m in _metrics_of(items_a) if m in common]:
        try:
            out[metric] = paired(_clusters(items_a, metric), _clusters(items_b, metric)).to_dict()
        except ValueError as e:  # not the same items: nothing to compare
            out[metric] = {"error": str(e)}
    if static and all(m in common for m in HEADLINE_STATIC):
        a = [_clusters(items_a, m) for m in HEADLINE_STATIC]
        b = [_clusters(items_b, m) for m in HEADLINE_STATIC]
        try:
            out[MEAN_STATIC] = paired(a, b).to_dict()
        except ValueError as e:
            out[MEAN_STATIC] = {"error": str(e)}
    for entry in out.values():
        entry["left_out"] = left_out
    return out
