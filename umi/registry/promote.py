"""Promotion and rollback: the `champion` alias moved by the promotion rule (umi.registry.rule) or by hand, and back.

The pipeline promotes the four GLPFT models together (planner, caller and summarizer make the agent; the global
model is the one they were fine-tuned from, and the start of a later `retrain_role`); `retrain_role` promotes its
one role. Promoting keeps the history: the alias `previous-champion` points at the version that was champion, and the
new champion's tags record `umi.promoted_from` (that version), `umi.promoted_at`, `umi.promotion_id` and
`umi.promotion_reason`. `rollback` moves `champion` back along `umi.promoted_from`, for the roles of the latest
promotion (all four after a pipeline, one after a retrain) or the roles named. Every move of several roles is
all-or-nothing (umi.registry.aliases).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from umi.registry import store
from umi.registry.aliases import PREVIOUS_CHAMPION, AliasMove, move_aliases, reconcile
from umi.registry.rule import DEFAULT_RULE, Decision, PromotionRule, decide, evidence_tag
from umi.registry.tags import (
    TAG_PROMOTED_AT,
    TAG_PROMOTED_FROM,
    TAG_PROMOTION_DECISION,
    TAG_PROMOTION_EVIDENCE,
    TAG_PROMOTION_ID,
    TAG_PROMOTION_REASON,
    TAG_ROLLED_BACK_AT,
)
from umi.vocabulary import CHAMPION, ROLES, checkpoint_fingerprint


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def record_decision(versions: Mapping[str, str | int], decision: Decision) -> None:
    """Write the decision and its evidence on the candidate versions (promoted or not)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for role, version in versions.items():
        name = store.MODEL_NAMES[role]
        client.set_model_version_tag(name, str(version), TAG_PROMOTION_EVIDENCE, evidence_tag(decision))
        client.set_model_version_tag(name, str(version), TAG_PROMOTION_DECISION, decision.reason[:5000])


def promote(
    versions: Mapping[str, str | int],
    *,
    reason: str = "manual",
    expected_champions: Mapping[str, str | int | None] | None = None,
) -> dict[str, tuple[str | None, str]]:
    """Move `champion` of each role to the given version, all roles or none (umi.registry.aliases), keeping history (see
    the module docstring). Returns {role: (previous champion version or None, new version)}. Roles already on that
    version are left as they are.

    expected_champions: {role: version or None}, the champions the decision was made on; when the registry's differ,
    nothing moves (umi.registry.aliases.PromotionConflict)."""
    for role, version in versions.items():
        store.get_version(role, version)  # every version exists before anything moves
    reconcile()
    promotion_id, when = uuid.uuid4().hex[:12], _now()
    moves: list[AliasMove] = []
    tags: dict[tuple[str, str], dict[str, str]] = {}
    moved: dict[str, tuple[str | None, str]] = {}
    for role, version in versions.items():
        version = str(version)
        current = store.champion_version(role)
        if current is not None and str(current.version) == version:
            continue
        previous = str(current.version) if current is not None else None
        tags[(role, version)] = {
            TAG_PROMOTED_FROM: previous or "",
            TAG_PROMOTED_AT: when,
            TAG_PROMOTION_ID: promotion_id,
            TAG_PROMOTION_REASON: reason[:5000],
        }
        moves.append(AliasMove(role, CHAMPION, previous, version))
        if previous is not None:
            before = store.alias_version(role, PREVIOUS_CHAMPION)
            moves.append(AliasMove(role, PREVIOUS_CHAMPION, str(before.version) if before else None, previous))
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
    for role in ROLES:
        champion = store.champion_version(role)
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
    (umi.registry.aliases), and only from the champions read here (compare-and-set)."""
    reconcile()
    roles = list(roles) if roles is not None else latest_promotion_roles()
    if not roles:
        raise LookupError("no promoted champion to roll back")
    plan: dict[str, tuple[str, str]] = {}
    for role in roles:
        champion = store.champion_version(role)
        if champion is None:
            raise LookupError(f"{store.MODEL_NAMES[role]} has no champion to roll back")
        previous = champion.tags.get(TAG_PROMOTED_FROM)
        if not previous:
            raise LookupError(
                f"{store.MODEL_NAMES[role]} version {champion.version} was the first champion: nothing to roll back to"
            )
        store.get_version(role, previous)
        plan[role] = (str(champion.version), previous)
    when = _now()
    moves: list[AliasMove] = []
    for role, (demoted, restored) in plan.items():
        moves.append(AliasMove(role, CHAMPION, demoted, restored))
        before = store.get_version(role, restored).tags.get(TAG_PROMOTED_FROM) or None
        previous_now = store.alias_version(role, PREVIOUS_CHAMPION)
        moves.append(AliasMove(role, PREVIOUS_CHAMPION, str(previous_now.version) if previous_now else None, before))
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
    unknown = [r for r in versions if r not in store.MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; one of {list(ROLES)}")
    reconcile()  # a promotion left halfway by a dead process is put back before the champions are read
    current = {role: store.champion_version(role) for role in versions}
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
    if all(c["fingerprint"] == checkpoint_fingerprint(candidate[r]) for r, c in champions.items()):
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
    are no longer the champions, nothing moves and umi.registry.aliases.PromotionConflict is raised). enabled False: the
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
