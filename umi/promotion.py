"""When a newly trained agent replaces the champion, and how the `champion` alias moves (and moves back).

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
the candidate versions and the MLflow run by the flows.

The pipeline promotes the four GLPFT models together (planner, caller and summarizer make the agent; the global
model is the one they were fine-tuned from, and the start of a later `retrain_role`); `retrain_role` promotes its
one role. Promoting keeps the history: the alias `previous-champion` points at the version that was champion, and the
new champion's tags record `umi.promoted_from` (that version), `umi.promoted_at`, `umi.promotion_id` and
`umi.promotion_reason`. `rollback` moves `champion` back along `umi.promoted_from`, for the roles of the latest
promotion (all four after a pipeline, one after a retrain) or the roles named.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from umi import model_registry as registry
from umi.vocabulary import BFCL_DEV, CHAMPION, LIVE_DEV, NO_CALL, RULE_ALWAYS_CALLER, RULE_LAST_TURN, SINGLE_LLM

TAG_PROMOTED_FROM = "umi.promoted_from"
TAG_PROMOTED_AT = "umi.promoted_at"
TAG_PROMOTION_ID = "umi.promotion_id"
TAG_PROMOTION_REASON = "umi.promotion_reason"
TAG_PROMOTION_EVIDENCE = "umi.promotion_evidence"
TAG_ROLLED_BACK_AT = "umi.rolled_back_at"

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def record_decision(versions: Mapping[str, str | int], decision: Decision) -> None:
    """Write the decision and its evidence on the candidate versions (promoted or not)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for role, version in versions.items():
        name = registry.MODEL_NAMES[role]
        client.set_model_version_tag(name, str(version), TAG_PROMOTION_EVIDENCE, evidence_tag(decision))
        client.set_model_version_tag(name, str(version), "umi.promotion_decision", decision.reason[:5000])


def promote(
    versions: Mapping[str, str | int],
    *,
    reason: str = "manual",
    expected_champions: Mapping[str, str | int | None] | None = None,
) -> dict[str, tuple[str | None, str]]:
    """Move `champion` of each role to the given version, all roles or none (umi.champions), keeping history (see
    the module docstring). Returns {role: (previous champion version or None, new version)}. Roles already on that
    version are left as they are.

    expected_champions: {role: version or None}, the champions the decision was made on; when the registry's differ,
    nothing moves (umi.champions.PromotionConflict)."""
    from umi.champions import AliasMove, move_aliases, reconcile

    for role, version in versions.items():
        registry.get_version(role, version)  # every version exists before anything moves
    reconcile()
    promotion_id, when = uuid.uuid4().hex[:12], _now()
    moves: list[AliasMove] = []
    tags: dict[tuple[str, str], dict[str, str]] = {}
    moved: dict[str, tuple[str | None, str]] = {}
    for role, version in versions.items():
        version = str(version)
        current = registry.champion_version(role)
        if current is not None and str(current.version) == version:
            continue
        previous = str(current.version) if current is not None else None
        tags[(role, version)] = {
            TAG_PROMOTED_FROM: previous or "",
            TAG_PROMOTED_AT: when,
            TAG_PROMOTION_ID: promotion_id,
            TAG_PROMOTION_REASON: reason[:5000],
        }
        moves.append(AliasMove(role, registry.CHAMPION, previous, version))
        if previous is not None:
            before = registry.alias_version(role, registry.PREVIOUS_CHAMPION)
            moves.append(AliasMove(role, registry.PREVIOUS_CHAMPION, str(before.version) if before else None, previous))
        moved[role] = (previous, version)
    if moves:  # nothing to move, nothing to compare-and-set
        move_aliases(
            moves,
            kind="promote",
            reason=reason,
            move_id=promotion_id,
            expected_champions=expected_champions,
            version_tags=tags,
        )
    return moved


def latest_promotion_roles() -> list[str]:
    """The roles whose champion came with the most recent promotion (by time, then promotion id)."""
    stamps = {}
    for role in registry.ROLES:
        champion = registry.champion_version(role)
        if champion is not None and champion.tags.get(TAG_PROMOTED_AT):
            stamps[role] = (champion.tags[TAG_PROMOTED_AT], champion.tags.get(TAG_PROMOTION_ID, ""))
    if not stamps:
        return []
    latest = max(stamps.values())
    return [role for role, stamp in stamps.items() if stamp == latest]


def rollback(roles: Iterable[str] | None = None) -> dict[str, tuple[str, str]]:
    """Move `champion` back to the version it was promoted from, for `roles` (default: those of the latest
    promotion). Returns {role: (demoted version, restored version)}. Raises LookupError, before moving anything,
    when a role has no champion or its champion has nothing to go back to. All the roles move back or none
    (umi.champions), and only from the champions read here (compare-and-set)."""
    from umi.champions import AliasMove, move_aliases, reconcile

    reconcile()
    roles = list(roles) if roles is not None else latest_promotion_roles()
    if not roles:
        raise LookupError("no promoted champion to roll back")
    plan: dict[str, tuple[str, str]] = {}
    for role in roles:
        champion = registry.champion_version(role)
        if champion is None:
            raise LookupError(f"{registry.MODEL_NAMES[role]} has no champion to roll back")
        previous = champion.tags.get(TAG_PROMOTED_FROM)
        if not previous:
            raise LookupError(
                f"{registry.MODEL_NAMES[role]} version {champion.version} was the first champion: "
                "nothing to roll back to"
            )
        registry.get_version(role, previous)
        plan[role] = (str(champion.version), previous)
    when = _now()
    moves: list[AliasMove] = []
    for role, (demoted, restored) in plan.items():
        moves.append(AliasMove(role, registry.CHAMPION, demoted, restored))
        before = registry.get_version(role, restored).tags.get(TAG_PROMOTED_FROM) or None
        previous_now = registry.alias_version(role, registry.PREVIOUS_CHAMPION)
        moves.append(
            AliasMove(role, registry.PREVIOUS_CHAMPION, str(previous_now.version) if previous_now else None, before)
        )
    move_aliases(
        moves,
        kind="rollback",
        reason=f"rollback of {', '.join(plan)}",
        version_tags={(role, demoted): {TAG_ROLLED_BACK_AT: when} for role, (demoted, _) in plan.items()},
    )
    return plan


def promote_if_better(
    versions: Mapping[str, str | int],
    candidate: Mapping[str, Any] | None,
    champion: Mapping[str, Any] | None,
    *,
    rule: PromotionRule = DEFAULT_RULE,
    expected_champions: Mapping[str, str | int | None] | None = None,
) -> tuple[Decision, dict[str, tuple[str | None, str]]]:
    """decide() for the candidate versions against the current champions of the same roles, then promote() them
    when the rule says so. `has_champion` is whether any of these roles has a champion now.

    expected_champions: {role: version or None}, the champions `champion` (the evaluation) was measured on; they
    must still be the champions for anything to move (default: the champions read here)."""
    from umi.champions import reconcile

    unknown = [r for r in versions if r not in registry.MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; one of {list(registry.ROLES)}")
    reconcile()  # a promotion left halfway by a dead process is put back before the champions are read
    current = {role: registry.champion_version(role) for role in versions}
    if all(v is not None and str(v.version) == str(versions[r]) for r, v in current.items()):
        return Decision(False, "the candidate versions are already the champions"), {}
    decision = decide(candidate, champion, has_champion=any(v is not None for v in current.values()), rule=rule)
    record_decision(versions, decision)
    if expected_champions is None:
        expected_champions = {r: (str(v.version) if v is not None else None) for r, v in current.items()}
    moved = promote(versions, reason=decision.reason, expected_champions=expected_champions) if decision.promote else {}
    return decision, moved


def champion_to_compare(champions: Mapping[str, Mapping[str, Any] | None], candidate: Mapping[str, str]) -> dict | None:
    """{role: checkpoint} of the champion agent to evaluate beside the candidate ({role: checkpoint}); `champions`:
    {role: {"path", "fingerprint", ...} or None}, as downloaded. None when a role has no champion, or when the
    champions are the candidate's own checkpoints (the same fingerprints: the comparison would be with itself)."""
    if any(c is None for c in champions.values()):
        return None
    if all(c["fingerprint"] == registry.checkpoint_fingerprint(candidate[r]) for r, c in champions.items()):
        return None
    return {r: c["path"] for r, c in champions.items()}


def judge(
    versions: Mapping[str, str | int],
    evaluations: Mapping[str, Any],
    candidate: str,
    champions: Mapping[str, Mapping[str, Any] | None],
    *,
    enabled: bool = True,
    rule: PromotionRule = DEFAULT_RULE,
) -> dict[str, Any]:
    """The promotion judgement of a flow run, all of it, and the move when it says so.

    versions: the registered candidate versions; evaluations: the agents of the evaluation ({} when none ran),
    `candidate` the name of the candidate agent among them (the champion agent is `rule.champion`); champions:
    {role: {"version", ...} or None}, the champions that evaluation was measured against (compare-and-set: when they
    are no longer the champions, nothing moves and umi.champions.PromotionConflict is raised). enabled False: the
    rule's verdict is recorded as `rule_said` and nothing moves.

    Versions that are the champions already are left as they are; otherwise promote_if_better decides (no
    evaluation of the candidate on dev: no promotion). Returns Decision.to_dict() and "moved": {role: [from, to]}."""
    expected = {r: (str(c["version"]) if c else None) for r, c in champions.items()}
    if all(expected.get(r) == str(v) for r, v in versions.items()):
        return {**Decision(False, "the candidate versions are already the champions").to_dict(), "moved": {}}
    evaluation, champion = evaluations.get(candidate), evaluations.get(rule.champion)
    if not enabled:
        said = decide(evaluation, champion, has_champion=any(c is not None for c in champions.values()), rule=rule)
        return {
            **Decision(False, "promotion switched off", said.headline, said.evidence).to_dict(),
            "rule_said": said.reason,
            "moved": {},
        }
    decision, moved = promote_if_better(versions, evaluation, champion, rule=rule, expected_champions=expected)
    return {**decision.to_dict(), "moved": {r: list(m) for r, m in moved.items()}}
