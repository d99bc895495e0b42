"""The promotion rule: when a newly trained agent replaces the champion. Pure: it reads evaluations and moves
nothing (umi.registry.promote applies it).

The rule (`decide`) reads the candidate's evaluation on the **dev split** (umi.eval: `bfcl-dev` static, `live_dev`
rollouts; the test split only reports, so repeated retrains never select on it), where every agent is compared,
paired on the same items, with the champion, the single LLM and the baselines (umi.eval.evidence):

1. The headline metric is bfcl_eval's multi-turn checker pass rate on the dev entries when the live evaluation ran
   there, else the mean of static Plan ACC, Act. EM and Arg. F1 on `bfcl-dev`.
2. A champion exists: the candidate is promoted only when the lower bound of the 95% interval of its paired
   difference with the champion on the headline is above zero and its permutation p-value is below 0.05 (with a
   handful of clusters the interval alone is too narrow), and no other metric says it got worse (interval below
   zero with p < 0.05; for Hallu., lower is better: above zero), on the live dev entries and on the static `bfcl-dev`
   steps alike, whichever is the headline: a live gain does not buy a static regression.
3. No champion yet: the candidate must beat, that way, the single LLM (with no metric significantly worse) and every
   baseline: the no-call agent on the live headline; the plan rules, when the headline is static, on Plan ACC (a
   rule predicts a plan and nothing else, so Plan ACC is all it is scored on).
4. A comparison the rule needs is missing (no dev evaluation, no single LLM in it, a paired section without the
   headline): **no promotion**. A missing number never counts as a win. A comparison that errored (umi.eval.evidence
   writes `{"error": ...}` where two agents' items could not be paired) blocks promotion with its reason: it is a
   comparison not made, never a metric "not worse".

The evidence (for each reference: n, difference, interval, p-value) is returned in `Decision.evidence` and recorded on
the candidate versions and the MLflow run by the flows (umi.registry.promote.judge).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from umi.vocabulary import BFCL_DEV, CHAMPION, LIVE_DEV, NO_CALL, RULE_ALWAYS_CALLER, RULE_LAST_TURN, SINGLE_LLM

# what the headline must beat: the plan rules on the static headline (they predict plans only), the no-call agent on
# the live one (the constant answer is R-L's floor, which the headline does not include)
STATIC_BASELINES = (RULE_LAST_TURN, RULE_ALWAYS_CALLER)
LIVE_BASELINES = (NO_CALL,)


@dataclass(frozen=True)
class PromotionRule:
    static_test_set: str = BFCL_DEV
    live_test_set: str = LIVE_DEV
    live_metric: str = "bfcl_checker_pass_rate"
    static_headline: str = "mean_static"  # umi.eval.evidence: the mean of Plan ACC, Act. EM and Arg. F1
    plan_rule_metric: str = "plan_acc"  # what the static baselines (plan rules) are compared on
    champion: str = CHAMPION
    single_llm: str = SINGLE_LLM
    lower_is_better: tuple[str, ...] = ("hallu",)
    alpha: float = 0.05  # and the permutation p-value below this (umi.eval.stats.significant)


DEFAULT_RULE = PromotionRule()


@dataclass
class Decision:
    promote: bool
    reason: str
    headline: str | None = None  # "<test set>.<metric>"
    evidence: dict[str, dict] = field(default_factory=dict)  # reference -> paired entry on the headline (+ n)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def headline(evaluation: Mapping[str, Any] | None, rule: PromotionRule = DEFAULT_RULE) -> tuple[str, str, dict] | None:
    """(test set, metric, its section) the rule decides on: live on dev when it ran there with the checker, else
    static on dev; None when neither is there."""
    evaluation = evaluation or {}
    live = evaluation.get(rule.live_test_set)
    if isinstance(live, Mapping) and live.get("entries") and _finite(live.get(rule.live_metric)):
        return rule.live_test_set, rule.live_metric, dict(live)
    static = (evaluation.get("static") or {}).get(rule.static_test_set)
    if isinstance(static, Mapping) and static.get("steps"):
        return rule.static_test_set, rule.static_headline, dict(static)
    return None


def _errors(paired: Mapping[str, Any]) -> list[str]:
    """`metric: reason` of every comparison that errored (umi.eval.evidence.compare's `{"error": ...}`)."""
    return [
        f"{metric}: {entry['error']}"
        for metric, entry in paired.items()
        if isinstance(entry, Mapping) and entry.get("error") is not None
    ]


def _dev_sections(evaluation: Mapping[str, Any] | None, rule: PromotionRule) -> list[tuple[str, Mapping[str, Any]]]:
    """(test set, section) of every dev evaluation there is: the live entries and the static steps, each checked for
    regressions whatever the headline."""
    evaluation = evaluation or {}
    out = []
    live = evaluation.get(rule.live_test_set)
    if isinstance(live, Mapping):
        out.append((rule.live_test_set, live))
    static = (evaluation.get("static") or {}).get(rule.static_test_set)
    if isinstance(static, Mapping):
        out.append((rule.static_test_set, static))
    return out


def _worse(paired: Mapping[str, Any], rule: PromotionRule) -> list[str]:
    """Metrics whose interval says the candidate got worse."""
    out = []
    for metric, entry in paired.items():
        if not isinstance(entry, Mapping):
            continue
        low, high = entry.get("ci_low"), entry.get("ci_high")
        if not (_finite(entry.get("p_value")) and entry["p_value"] < rule.alpha):
            continue
        if metric in rule.lower_is_better:
            if _finite(low) and low > 0:
                out.append(metric)
        elif _finite(high) and high < 0:
            out.append(metric)
    return out


def _fmt(entry: Mapping[str, Any]) -> str:
    return (
        f"{entry['difference']:+.2f} [{entry['ci_low']:+.2f}, {entry['ci_high']:+.2f}], "
        f"p={entry['p_value']:.3g}, n={entry.get('n')}"
    )


def decide(
    candidate: Mapping[str, Any] | None,
    champion: Mapping[str, Any] | None = None,
    *,
    has_champion: bool,
    rule: PromotionRule = DEFAULT_RULE,
) -> Decision:
    """Apply the rule of this module's docstring to the candidate's evaluation (its `paired` sections hold the
    comparisons with the champion, the single LLM and the baselines). `champion`: the champion's own evaluation,
    kept for the record (the paired sections already hold what the rule needs); `has_champion`: whether a champion
    exists at all."""
    found = headline(candidate, rule)
    if found is None:
        return Decision(
            False,
            f"candidate has no evaluation on the dev split ({rule.static_test_set} / "
            f"{rule.live_test_set}): promotion decides on dev only",
        )
    test_set, metric, section = found
    name = f"{test_set}.{metric}"
    paired = section.get("paired") or {}
    if has_champion:
        must_beat, no_worse = [rule.champion], [rule.champion]
    else:
        baselines = LIVE_BASELINES if test_set == rule.live_test_set else STATIC_BASELINES
        must_beat, no_worse = [rule.single_llm, *baselines], [rule.single_llm]
    evidence: dict[str, dict] = {}

    def metric_of(ref: str) -> str:
        return rule.plan_rule_metric if ref in STATIC_BASELINES else metric

    for ref in must_beat:
        entry = (paired.get(ref) or {}).get(metric_of(ref))
        if not isinstance(entry, Mapping) or not all(
            _finite(entry.get(k)) for k in ("difference", "ci_low", "ci_high", "p_value")
        ):
            return Decision(
                False, f"no paired comparison with {ref} on {test_set}.{metric_of(ref)}: cannot decide", name, evidence
            )
        evidence[ref] = {k: entry.get(k) for k in ("difference", "ci_low", "ci_high", "p_value", "n", "clusters")}
        evidence[ref]["metric"] = metric_of(ref)
    for ref in must_beat:
        entry = evidence[ref]
        if not (entry["ci_low"] > 0 and entry["p_value"] < rule.alpha):
            return Decision(
                False,
                f"not better than {ref} on {test_set}.{entry['metric']} beyond noise: {_fmt(entry)} (needs the "
                f"interval's lower bound above 0 and p < {rule.alpha:g})",
                name,
                evidence,
            )
    sections = _dev_sections(candidate, rule)
    for ref in dict.fromkeys([*must_beat, *no_worse]):
        errored = [f"{ts}.{e}" for ts, sec in sections for e in _errors((sec.get("paired") or {}).get(ref) or {})]
        if errored:
            return Decision(
                False,
                f"the comparison with {ref} errored ({'; '.join(errored)}): a comparison not made cannot say "
                "the candidate is not worse",
                name,
                evidence,
            )
    for ref in no_worse:
        worse = [
            m if ts == test_set else f"{ts}.{m}"
            for ts, sec in sections
            for m in _worse((sec.get("paired") or {}).get(ref) or {}, rule)
        ]
        if worse:
            return Decision(
                False, f"better than {ref} on {name}, but significantly worse on {', '.join(worse)}", name, evidence
            )
    what = "the champion" if has_champion else "the single LLM and the baselines"
    return Decision(
        True,
        f"beats {what} on {name}: " + "; ".join(f"vs {r} ({e['metric']}) {_fmt(e)}" for r, e in evidence.items()),
        name,
        evidence,
    )


def evidence_tag(decision: Decision) -> str:
    """The decision as a compact JSON tag value (MLflow caps tag values; 5000 characters kept)."""
    data = {"promote": decision.promote, "headline": decision.headline, "evidence": decision.evidence}
    return json.dumps(data, separators=(",", ":"), default=str)[:5000]
