"""The `champion` / `previous-champion` aliases, moved for several roles all-or-nothing.

MLflow moves one alias per call and has no transactions, so a move of several roles is made one by a record:

1. a **pending record** is written first: an MLflow run in the experiment `umi-promotions`, status RUNNING, whose
   tag `umi.plan` lists every alias move (role, alias, version before, version after);
2. the champions the caller decided on are compared with the registry's (compare-and-set): if any changed, nothing
   moves (PromotionConflict);
3. the aliases move; on any failure the moved ones are put back, in reverse order;
4. the record is closed: FINISHED (all moved) or FAILED (all put back, the error in `umi.outcome`).

Why a run and not tags on the registered models: one run covers all roles in one write (four models' tags would be
four writes, the very thing that can stop halfway), runs can be searched by status (a leftover pending record is one
query away), and the runs of `umi-promotions` are a history of every promotion and rollback in the MLflow UI.

A record still RUNNING whose writer is gone (its process dead, or older than `STALE_AFTER_S`) is **reconciled** by
the next move: every alias it moved is put back (where it still points where the record moved it), and the record is
closed FAILED. A live pending record of another process is a concurrent move: this one refuses (PromotionConflict)
rather than interleave with it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from umi.registry import store
from umi.registry.tags import (
    TAG_FINGERPRINT,
    TAG_KIND,
    TAG_OUTCOME,
    TAG_OWNER,
    TAG_PLAN,
    TAG_PROMOTION_ID,
    TAG_PROMOTION_REASON,
)
from umi.vocabulary import CHAMPION

log = logging.getLogger(__name__)

PREVIOUS_CHAMPION = "previous-champion"  # the alias on the version that was champion before (what rollback restores)
PROMOTIONS_EXPERIMENT = "umi-promotions"
STALE_AFTER_S = 600  # a move takes seconds; a record pending for 10 minutes has lost its writer

_ACTIVE: set[str] = set()  # the records this process is writing right now (its own are never reconciled midway)


class PromotionConflict(RuntimeError):
    """The champions are not those the move was decided on, or another move is in progress: nothing moved."""


@dataclass(frozen=True)
class AliasMove:
    role: str
    alias: str
    before: str | None  # None: the alias did not exist
    after: str | None  # None: the alias is removed


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _point(role: str, alias: str, version: str | None) -> None:
    if version is None:
        store.delete_alias(role, alias)
    else:
        store.set_alias(role, version, alias)


def _alias_now(role: str, alias: str) -> str | None:
    v = store.alias_version(role, alias)
    return str(v.version) if v is not None else None


def current_champions(roles: Iterable[str]) -> dict[str, str | None]:
    return {role: _alias_now(role, CHAMPION) for role in roles}


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _writer_gone(run) -> bool:
    if run.info.run_id in _ACTIVE:
        return False
    age_s = time.time() - run.info.start_time / 1000
    if age_s > STALE_AFTER_S:
        return True
    host, _, pid = run.data.tags.get(TAG_OWNER, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's record: only its age tells
    if int(pid) == os.getpid():
        return True  # ours, yet not active: a move of this process that failed and could not put things back
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _pending_records(experiment_id: str) -> list:
    return _client().search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", order_by=["attributes.start_time ASC"]
    )


def _plan(run) -> list[AliasMove]:
    return [AliasMove(**m) for m in json.loads(run.data.tags.get(TAG_PLAN, "[]"))]


def _put_back(moves: Iterable[AliasMove]) -> list[str]:
    """Undo `moves` (last first) where the alias still points where the move left it; returns what was left alone."""
    left: list[str] = []
    for m in reversed(list(moves)):
        now = _alias_now(m.role, m.alias)
        if now == m.after:
            _point(m.role, m.alias, m.before)
        elif now != m.before:
            left.append(f"{m.role} {m.alias} is {now} (moved since to neither {m.before} nor {m.after})")
    return left


def reconcile() -> list[str]:
    """Put back what abandoned pending records moved and close them FAILED; returns their ids."""
    experiment_id = store.ensure_experiment(PROMOTIONS_EXPERIMENT)
    done = []
    for run in _pending_records(experiment_id):
        if not _writer_gone(run):
            continue
        left = _put_back(_plan(run))
        outcome = "reconciled: the writer stopped midway; every alias it moved was put back"
        if left:
            outcome += "; left alone: " + "; ".join(left)
        client = _client()
        client.set_tag(run.info.run_id, TAG_OUTCOME, outcome[:5000])
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("promotion record %s %s", run.info.run_id, outcome)
        done.append(run.data.tags.get(TAG_PROMOTION_ID, run.info.run_id))
    return done


def move_aliases(
    moves: list[AliasMove],
    *,
    kind: str,
    reason: str,
    move_id: str | None = None,
    expected_champions: Mapping[str, str | int | None] | None = None,
    version_tags: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
) -> str:
    """Apply `moves` all-or-nothing (see the module docstring); returns the move's id.

    expected_champions: {role: version or None} the decision was made on; every move's `before` is checked too, so
    a plan computed from an earlier read never overwrites a change made since. version_tags: {(role, version):
    tags} set on versions before any alias moves (they stay after a failure: tags on a version that is not champion
    do not change what is served). Raises PromotionConflict before moving anything, or the failure after putting
    back what had moved.
    """
    client = _client()
    reconcile()
    move_id = move_id or uuid.uuid4().hex[:12]
    experiment_id = store.ensure_experiment(PROMOTIONS_EXPERIMENT)
    run = client.create_run(
        experiment_id,
        run_name=f"{kind}-{move_id}",
        tags={
            TAG_KIND: kind,
            TAG_PROMOTION_ID: move_id,
            TAG_PROMOTION_REASON: reason[:5000],
            TAG_OWNER: _owner(),
            TAG_PLAN: json.dumps([asdict(m) for m in moves]),
        },
    )
    run_id = run.info.run_id
    _ACTIVE.add(run_id)

    def close(status: str, outcome: str) -> None:
        client.set_tag(run_id, TAG_OUTCOME, outcome[:5000])
        client.set_terminated(run_id, status=status)

    try:
        others = [r for r in _pending_records(experiment_id) if r.info.run_id != run_id]
        if others:
            close("FAILED", "refused: another move is in progress")
            raise PromotionConflict(f"another promotion is in progress (record {others[0].info.run_id}); retry later")
        roles = sorted({m.role for m in moves} | set(expected_champions or {}))
        now = current_champions(roles)
        # what the plan was computed from, then what the decision was made on (which wins where they differ)
        wanted = {m.role: m.before for m in moves if m.alias == CHAMPION}
        wanted.update({r: (None if v is None else str(v)) for r, v in (expected_champions or {}).items()})
        changed = {r: (v, now[r]) for r, v in wanted.items() if now[r] != v}
        if changed:
            detail = ", ".join(f"{r}: decided on {a or 'none'}, now {b or 'none'}" for r, (a, b) in changed.items())
            close("FAILED", f"refused: the champions changed ({detail})")
            raise PromotionConflict(f"the champions changed since the decision ({detail}): nothing moved")
        for (role, version), tags in (version_tags or {}).items():
            for key, value in tags.items():
                client.set_model_version_tag(store.MODEL_NAMES[role], version, key, value)
        done: list[AliasMove] = []
        try:
            for m in moves:
                done.append(m)  # before the call: a call that fails may still have moved the alias
                _point(m.role, m.alias, m.after)
        except BaseException as error:
            try:
                left = _put_back(done)
            except Exception:  # the registry is failing still: the record stays pending, the next move reconciles
                log.exception("promotion %s failed and could not be put back; the next move reconciles it", move_id)
                raise error from None
            close(
                "FAILED",
                f"failed and put back: {type(error).__name__}: {error}"
                + (f"; left alone: {'; '.join(left)}" if left else ""),
            )
            raise
        close("FINISHED", "done")
    finally:
        _ACTIVE.discard(run_id)
    return move_id


def download_champions(roles: Iterable[str], dst_root: str | Path) -> dict[str, dict | None]:
    """{role: {"path", "version", "fingerprint"} of its champion downloaded under dst_root/<role>, or None}. A move
    a dead process left halfway is put back first (reconcile): never a mixed champion set."""
    reconcile()
    out: dict[str, dict | None] = {}
    for role in roles:
        version = store.champion_version(role)
        if version is None:
            out[role] = None
            continue
        path = store.download_role(role, Path(dst_root) / role, str(version.version))
        out[role] = {
            "path": str(path),
            "version": str(version.version),
            "fingerprint": version.tags.get(TAG_FINGERPRINT),
        }
    return out
