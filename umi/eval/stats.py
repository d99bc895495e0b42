"""Uncertainty of the evaluation's numbers: cluster-bootstrap intervals and paired comparisons.

Steps of one trajectory are not independent (they share a task, a history and often the same mistake), so every
interval resamples whole *clusters*: trajectories for the static metrics, entries for the live ones. A metric is a
ratio of sums over its clusters (Plan ACC = correct steps / steps; Arg. F1 = sum of step F1s / scored call steps),
so a cluster is a pair (numerator, denominator) per metric and a resample is the ratio of the resampled sums; a
resample in which a metric has no step at all (e.g. R-L when no finish step was drawn) is left out of that metric's
interval.

- `interval`: the 95% percentile interval of the bootstrap distribution (`DEFAULT_RESAMPLES` resamples, fixed seed,
  so a report is reproducible).
- `paired`: the difference of two agents on the same clusters (A - B), its bootstrap interval (both agents resampled
  with the same indices), and a two-sided p-value from a sign-flip permutation test at the cluster level (under
  "no difference" each cluster's A-B difference is as likely to have the other sign): exact when there are at most
  `EXACT_UP_TO` clusters with a difference, Monte Carlo with the (1 + hits) / (1 + resamples) estimate beyond.
- `paired` of several metrics: the same for their mean (the promotion rule's static headline).
- `significant`: "better" / "worse" only when the interval excludes 0 and the p-value is below 0.05: with a handful
  of clusters the percentile interval alone is far too narrow.
- `holm`: Holm's step-down adjustment of a family of p-values (a report's verdicts are one family: umi.eval.report).
- `p_text`: a p-value as printed: below 0.001 (the Monte Carlo floor is 1 / (1 + resamples)) as "p < 0.001".

Metric values are percentages (0-100), as in the report.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "DEFAULT_RESAMPLES",
    "LEVEL",
    "Clusters",
    "Interval",
    "Paired",
    "interval",
    "paired",
    "normal_halfwidth",
    "significant",
    "clusters_by_metric",
    "holm",
    "p_text",
]

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95
ALPHA = 0.05  # a difference is significant only when its interval excludes 0 and p < ALPHA (see `significant`)
EXACT_UP_TO = 14  # 2**14 sign patterns: exact permutation p-value up to this many non-zero clusters
_SEED = 20261201


@dataclass(frozen=True)
class Clusters:
    """Per-cluster sums of one metric: `numerators[k]` / `denominators[k]` of cluster `ids[k]` (scale: 0-1 values;
    the report's percentages are 100 x the ratio)."""

    ids: tuple[str, ...]
    numerators: tuple[float, ...]
    denominators: tuple[float, ...]

    @classmethod
    def from_items(cls, items: Sequence[tuple[str, float | None]]) -> "Clusters":
        """From (cluster id, item value) pairs; items with value None do not count towards this metric."""
        sums: dict[str, list[float]] = {}
        for cluster, value in items:
            entry = sums.setdefault(cluster, [0.0, 0.0])
            if value is not None:
                entry[0] += float(value)
                entry[1] += 1.0
        ids = tuple(sums)
        return cls(ids, tuple(sums[i][0] for i in ids), tuple(sums[i][1] for i in ids))

    @property
    def n_clusters(self) -> int:
        return sum(d > 0 for d in self.denominators)

    @property
    def n_items(self) -> int:
        return int(sum(self.denominators))

    def value(self) -> float | None:
        den = sum(self.denominators)
        return 100.0 * sum(self.numerators) / den if den else None


@dataclass(frozen=True)
class Interval:
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int  # items (steps, entries) the metric averages over
    clusters: int  # clusters that hold at least one of them

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Paired:
    """A - B on the same clusters: `difference` in percentage points, its interval, the p-value of "no difference"."""

    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n: int
    clusters: int
    exact: bool  # the p-value enumerates every sign pattern

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @property
    def significant_gain(self) -> bool:
        return significant(self.to_dict()) == "better"

    @property
    def significant_loss(self) -> bool:
        return significant(self.to_dict()) == "worse"


def significant(entry: Mapping | None, alpha: float = ALPHA) -> str | None:
    """ "better" / "worse" when a paired entry's interval excludes 0 on that side AND its permutation p-value is below
    `alpha`; else None. Both, because with few clusters the percentile interval is too narrow (2 trajectories that
    agree give a zero-width interval) while the exact permutation test cannot go below 2 / 2**clusters."""
    if not entry or entry.get("ci_low") is None or entry.get("p_value") is None:
        return None
    if entry["p_value"] >= alpha:
        return None
    if entry["ci_low"] > 0:
        return "better"
    if entry["ci_high"] < 0:
        return "worse"
    return None


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _ratios(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """100 x sum(num[idx]) / sum(den[idx]) per resample (rows of idx); NaN where the denominator is 0.
    num, den: (clusters, metrics) -> (resamples, metrics)."""
    n_sum, d_sum = num[idx].sum(axis=1), den[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d_sum > 0, 100.0 * n_sum / np.where(d_sum > 0, d_sum, 1.0), np.nan)


def _arrays(metrics: Sequence[Clusters], ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    num = np.zeros((len(ids), len(metrics)))
    den = np.zeros((len(ids), len(metrics)))
    for m, clusters in enumerate(metrics):
        where = {c: k for k, c in enumerate(clusters.ids)}
        for k, c in enumerate(ids):
            if c in where:
                num[k, m] = clusters.numerators[where[c]]
                den[k, m] = clusters.denominators[where[c]]
    return num, den


def interval(clusters: Clusters, *, resamples: int = DEFAULT_RESAMPLES, seed: int = _SEED) -> Interval:
    """The metric and its 95% cluster-bootstrap percentile interval."""
    value = clusters.value()
    if value is None or not clusters.ids:
        return Interval(value, None, None, clusters.n_items, clusters.n_clusters)
    num, den = _arrays([clusters], clusters.ids)
    low, high = _percentiles(_ratios(num, den, _indices(len(clusters.ids), resamples, seed))[:, 0])
    return Interval(value, low, high, clusters.n_items, clusters.n_clusters)


def _sign_flip_p(diffs: np.ndarray, observed: float, resamples: int, seed: int) -> tuple[float, bool]:
    """Two-sided p-value of `observed` = weighted sum of per-cluster differences `diffs` (clusters, metrics) under
    random sign flips of whole clusters; the statistic is the mean over metrics of each metric's sum."""
    nonzero = diffs[np.any(np.abs(diffs) > 1e-12, axis=1)]
    k = len(nonzero)
    if k == 0:
        return 1.0, True
    per_cluster = nonzero.sum(axis=1)  # the statistic is linear in the clusters' signs
    tol = 1e-9 * max(1.0, abs(observed))
    if k <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=k)))
        stats = signs @ per_cluster
        return float(np.mean(np.abs(stats) >= abs(observed) - tol)), True
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(resamples, k))
    hits = int(np.sum(np.abs(signs @ per_cluster) >= abs(observed) - tol))
    return (1 + hits) / (1 + resamples), False


def paired(
    a: Sequence[Clusters] | Clusters,
    b: Sequence[Clusters] | Clusters,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = _SEED,
) -> Paired:
    """A - B (percentage points) over the clusters both have; several metrics: the difference of their means
    (each metric a ratio over its own items). Per metric the denominators of A and B must agree cluster by cluster
    (the same gold items), else ValueError."""
    a_list = [a] if isinstance(a, Clusters) else list(a)
    b_list = [b] if isinstance(b, Clusters) else list(b)
    if len(a_list) != len(b_list) or not a_list:
        raise ValueError("paired() needs the same metrics for both agents")
    ids = [c for c in a_list[0].ids if c in set(b_list[0].ids)]
    if not ids:
        return Paired(None, None, None, None, 0, 0, True)
    num_a, den_a = _arrays(a_list, ids)
    num_b, den_b = _arrays(b_list, ids)
    if not np.allclose(den_a, den_b):
        raise ValueError("paired() compares the same items: the agents' per-cluster item counts differ")
    den_total = den_a.sum(axis=0)
    usable = den_total > 0
    if not usable.all():
        return Paired(None, None, None, None, int(den_a.sum()), len(ids), True)
    # statistic: mean over metrics of 100 * (sum A - sum B) / sum den
    weights = 100.0 / den_total / len(a_list)
    diffs = (num_a - num_b) * weights
    observed = float(diffs.sum())
    idx = _indices(len(ids), resamples, seed)
    boot = (_ratios(num_a, den_a, idx) - _ratios(num_b, den_b, idx)).mean(axis=1)
    low, high = _percentiles(boot)
    p_value, exact = _sign_flip_p(diffs, observed, resamples, seed + 1)
    n_items = int(den_a[:, 0].sum()) if len(a_list) == 1 else int(den_a.max(axis=1).sum())
    return Paired(observed, low, high, p_value, n_items, len(ids), exact)


def normal_halfwidth(p: float, n: int) -> float:
    """Half-width in points of the normal-approximation 95% interval of a proportion (for sizing samples)."""
    return 196.0 * math.sqrt(p * (1 - p) / n) if n else math.inf


def clusters_by_metric(items: Sequence[Mapping], cluster_key: str, metrics: Sequence[str]) -> dict[str, Clusters]:
    """One Clusters per metric from item dicts that carry `cluster_key` and a 0-1 value (or None) per metric."""
    return {m: Clusters.from_items([(str(it[cluster_key]), it.get(m)) for it in items]) for m in metrics}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given: the k-th smallest of m is multiplied by (m - k + 1), made
    non-decreasing in that order, capped at 1. Rejecting where the adjusted p < alpha controls the family-wise error
    rate at alpha, whatever the dependence between the tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


def p_text(p: float) -> str:
    """ "p = 0.012", or "p < 0.001" below that (where a Monte Carlo p-value sits at its floor, 1 / 2,001 with the
    default resamples, it says only that no resample was as extreme)."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
