"""When a newly trained agent replaces the champion, and how the `champion` alias moves (and moves back).

The rule (`decide`), on evaluations of the candidate and of the current champion run in the same evaluation (same
test data, same limits, same decoding):

1. A metric the rule needs is missing (no live evaluation, no static result on the BFCL test split, a metric that
   is undefined, e.g. Act. EM on a sample with no tool call): **no promotion**. A missing number never counts as a
   win.
2. No champion yet: the candidate is promoted (its metrics must still be present, rule 1).
3. Primary metric, the **live pass rate** on the BFCL multi-turn test entries (the share of entries whose final
   tool state matches the gold run's): higher -> promoted; lower -> not promoted.
4. Equal pass rates (common on a few dozen entries): the **mean of static Plan ACC, Act EM and Arg F1** on the BFCL
   test split decides: promoted only when it is higher by at least `static_margin` (1 percentage point by default),
   so noise in the third decimal does not flip the champion back and forth.

The pipeline promotes the four GLPFT models together (planner, caller and summarizer make the agent; the global
model is the one they were fine-tuned from, and the start of a later `retrain_role`); `retrain_role` promotes its
one role. Promoting keeps the history: the alias `previous-champion` points at the version that was champion, and the
new champion's tags record `umi.promoted_from` (that version), `umi.promoted_at`, `umi.promotion_id` and
`umi.promotion_reason`. `rollback` moves `champion` back along `umi.promoted_from`, for the roles of the latest
promotion (all four after a pipeline, one after a retrain) or the roles named.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from umi import model_registry as registry

TAG_PROMOTED_FROM = "umi.promoted_from"
TAG_PROMOTED_AT = "umi.promoted_at"
TAG_PROMOTION_ID = "umi.promotion_id"
TAG_PROMOTION_REASON = "umi.promotion_reason"
TAG_ROLLED_BACK_AT = "umi.rolled_back_at"

BFCL_TEST = "bfcl-test"  # the static test split the rule reads (umi.eval.testsets.BFCL_TEST)


@dataclass(frozen=True)
class PromotionRule:
    live_metric: str = "pass_rate"
    static_test_set: str = BFCL_TEST
    static_metrics: tuple[str, ...] = ("plan_acc", "act_em", "arg_f1")
    static_margin: float = 1.0  # in the metrics' unit: percentage points


DEFAULT_RULE = PromotionRule()


@dataclass
class Scores:
    """The numbers the rule compares for one agent; `missing` names what was not there."""

    live: float | None
    static_mean: float | None
    static: dict[str, float | None] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


@dataclass
class Decision:
    promote: bool
    reason: str
    candidate: Scores | None = None
    champion: Scores | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def scores(evaluation: Mapping[str, Any] | None, rule: PromotionRule = DEFAULT_RULE) -> Scores:
    """The rule's numbers from one agent's evaluation: `{"static": {test_set: {metric: value}}, "live": {...}}`."""
    evaluation = evaluation or {}
    missing: list[str] = []
    live_section = evaluation.get("live")
    live = _number(live_section.get(rule.live_metric)) if isinstance(live_section, Mapping) else None
    if live is None:
        missing.append(f"live {rule.live_metric}")
    static_section = (evaluation.get("static") or {}).get(rule.static_test_set)
    static: dict[str, float | None] = {}
    for metric in rule.static_metrics:
        static[metric] = _number(static_section.get(metric)) if isinstance(static_section, Mapping) else None
        if static[metric] is None:
            missing.append(f"static {metric} on {rule.static_test_set}")
    values = [v for v in static.values() if v is not None]
    static_mean = sum(values) / len(values) if len(values) == len(rule.static_metrics) else None
    return Scores(live=live, static_mean=static_mean, static=static, missing=missing)


def decide(
    candidate: Mapping[str, Any] | None,
    champion: Mapping[str, Any] | None,
    *,
    has_champion: bool,
    rule: PromotionRule = DEFAULT_RULE,
) -> Decision:
    """Apply the rule of this module's docstring. `champion`: the champion agent's evaluation from the same
    evaluation run (None when it could not be evaluated); `has_champion`: whether a champion exists at all."""
    cand = scores(candidate, rule)
    if cand.missing:
        return Decision(False, f"candidate lacks {', '.join(cand.missing)}", cand)
    if not has_champion:
        return Decision(True, "no champion yet", cand)
    champ = scores(champion, rule)
    if champ.missing:
        return Decision(False, f"champion's evaluation lacks {', '.join(champ.missing)}: cannot compare", cand, champ)
    assert cand.live is not None and champ.live is not None
    assert cand.static_mean is not None and champ.static_mean is not None
    if not math.isclose(cand.live, champ.live, abs_tol=1e-9):
        better = cand.live > champ.live
        verb = "higher" if better else "lower"
        return Decision(better, f"live {rule.live_metric} {verb}: {cand.live:.4g} vs {champ.live:.4g}", cand, champ)
    gain = cand.static_mean - champ.static_mean
    if gain >= rule.static_margin:
        return Decision(True, f"live {rule.live_metric} equal ({cand.live:.4g}); static mean higher by {gain:.3g} "
                              f"(>= {rule.static_margin:g}): {cand.static_mean:.4g} vs {champ.static_mean:.4g}",
                        cand, champ)  # fmt: skip
    return Decision(False, f"live {rule.live_metric} equal ({cand.live:.4g}); static mean {cand.static_mean:.4g} vs "
                           f"{champ.static_mean:.4g} (needs +{rule.static_margin:g})", cand, champ)  # fmt: skip


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


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
        tags[(role, version)] = {TAG_PROMOTED_FROM: previous or "", TAG_PROMOTED_AT: when,
                                 TAG_PROMOTION_ID: promotion_id, TAG_PROMOTION_REASON: reason[:5000]}  # fmt: skip
        moves.append(AliasMove(role, registry.CHAMPION, previous, version))
        if previous is not None:
            before = registry.alias_version(role, registry.PREVIOUS_CHAMPION)
            moves.append(AliasMove(role, registry.PREVIOUS_CHAMPION, str(before.version) if before else None, previous))
        moved[role] = (previous, version)
    if moves:  # nothing to move, nothing to compare-and-set
        move_aliases(moves, kind="promote", reason=reason, move_id=promotion_id,
                     expected_champions=expected_champions, version_tags=tags)  # fmt: skip
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
            raise LookupError(f"{registry.MODEL_NAMES[role]} version {champion.version} was the first champion: "
                              "nothing to roll back to")  # fmt: skip
        registry.get_version(role, previous)
        plan[role] = (str(champion.version), previous)
    when = _now()
    moves: list[AliasMove] = []
    for role, (demoted, restored) in plan.items():
        moves.append(AliasMove(role, registry.CHAMPION, demoted, restored))
        before = registry.get_version(role, restored).tags.get(TAG_PROMOTED_FROM) or None
        previous_now = registry.alias_version(role, registry.PREVIOUS_CHAMPION)
        moves.append(AliasMove(role, registry.PREVIOUS_CHAMPION,
                               str(previous_now.version) if previous_now else None, before))  # fmt: skip
    move_aliases(moves, kind="rollback", reason=f"rollback of {', '.join(plan)}",
                 version_tags={(role, demoted): {TAG_ROLLED_BACK_AT: when} for role, (demoted, _) in plan.items()})
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
        return Decision(False, "the candidate versions are already the champions", scores(candidate, rule)), {}
    decision = decide(candidate, champion, has_champion=any(v is not None for v in current.values()), rule=rule)
    if expected_champions is None:
        expected_champions = {r: (str(v.version) if v is not None else None) for r, v in current.items()}
    moved = promote(versions, reason=decision.reason, expected_champions=expected_champions) if decision.promote else {}
    return decision, moved
