"""The test sets: the held-out BFCL split, the ToolBench out-of-domain set, and the live BFCL multi-turn entries.

- `bfcl-test`: the BFCL trajectories in `data/` (source "bfcl") whose split is "test", decided exactly as the
  reorganisation decides it (umi.data.splits.split_of on the trajectory's split key, with params.yaml's
  `reorganize.split_fractions` when set), so no trajectory a model trained on is scored.
- `toolbench-ood`: the α-UMi reference's real ToolBench out-of-domain static test set (400 trajectories, see
  ../shared/fixtures/README.md), read with umi's α-UMi importer. Records the importer rejects are reported with their
  id and reason (record 273 is one: an observation with no call before it), never a crash. It is not part of the
  package: an evaluation reads it from a path it is given, by default the one the `UMI_FIXTURES` setting names
  (`configured_toolbench_ood`; `make run` sets it when the shared fixtures are there), never from a path of its own.
- live entries: the `multi_turn_base` trajectories of `bfcl-test`, with what a rollout needs (classes, initial
  config, the user turns and the gold calls per turn) from the importer's meta. The split holds out at least 35% of
  the multi-turn scenarios (umi.data.splits.MIN_TEST_SHARE: 71 of 200 with the shipped data), so the full live
  check has enough entries for an interval. A `limit` takes the cheapest entries a no-call agent cannot pass
  (`live_sample`), so a small sample is one an agent can pass within its step cap and a do-nothing agent cannot.

`select` takes a deterministic subset for a `--limit`: round-robin over BFCL categories (so a small subset still
covers each kind of task), evenly spaced over a file without categories.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umi.data.params import split_fractions
from umi.data.splits import Split, split_of
from umi.schema import RecordError, Trajectory
from umi.vocabulary import BFCL_DEV, BFCL_TEST, TOOLBENCH_OOD

__all__ = [
    "TestSet",
    "LiveEntry",
    "load_bfcl_test",
    "load_toolbench_ood",
    "configured_toolbench_ood",
    "load_train",
    "live_entries",
    "live_sample",
    "select",
]

BFCL_SETS: dict[str, str] = {"test": BFCL_TEST, "dev": BFCL_DEV}  # split -> test-set id
FIXTURES_ENV = "UMI_FIXTURES"  # the setting: the shared fixtures folder (../shared/fixtures, see the README)
TOOLBENCH_OOD_FILE = Path("alpha-umi") / "toolbench_out_of_domain_test.json"  # the ToolBench set, in that folder


def configured_toolbench_ood() -> Path:
    """The ToolBench out-of-domain test set the `UMI_FIXTURES` setting names, `$UMI_FIXTURES/alpha-umi/
    toolbench_out_of_domain_test.json` (whether or not the file is there); ValueError, saying how to name it or
    switch the set off, when the setting is not there."""
    folder = os.environ.get(FIXTURES_ENV)
    if not folder:
        raise ValueError(
            f"the ToolBench out-of-domain set is on, but {FIXTURES_ENV} does not name the shared fixtures folder "
            "(../shared/fixtures, see the README's 'Test fixtures'): set it, or switch the set off by name "
            "(--no-toolbench-ood)"
        )
    return Path(folder) / TOOLBENCH_OOD_FILE


@dataclass
class TestSet:
    """A static test set: its trajectories (after any limit), how many there were, and what could not be read."""

    __test__ = False  # not a pytest class

    name: str
    trajectories: list[Trajectory]
    source: str
    available: int  # trajectories before the limit
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason"}

    def info(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "trajectories": len(self.trajectories),
            "available": self.available,
            "rejected": self.rejected,
        }


@dataclass(frozen=True)
class LiveEntry:
    """One BFCL multi-turn entry to roll out: fresh toolkits are built from `involved_classes` and `initial_config`;
    `turns[t]` is the user's text of turn t and `gold_calls[t]` BFCL's gold call strings for it."""

    entry_id: str
    trajectory_id: str
    involved_classes: tuple[str, ...]
    initial_config: dict[str, Any]
    turns: tuple[str, ...]
    gold_calls: tuple[tuple[str, ...], ...]
    category: str = "multi_turn_base"
    group: str | None = None  # the trajectory's split group (twins): the bootstrap's cluster

    @property
    def steps_needed(self) -> tuple[int, ...]:
        """Planner turns each user turn needs at least: one per gold call, one to conclude."""
        return tuple(len(calls) + 1 for calls in self.gold_calls)

    def no_call_turns(self) -> tuple[bool, ...]:
        """Per turn: whether an agent that calls nothing passes our state check there (the gold calls so far left
        every instance as it started: the turn only reads)."""
        from umi.tools.bfcl import BFCLToolkit, state_differences

        toolkit = BFCLToolkit(self.involved_classes, self.initial_config)
        start = toolkit.snapshot()
        out = []
        for calls in self.gold_calls:
            for call in calls:
                name, arguments = toolkit.parse(call)
                toolkit.dispatch(name, arguments, validate=False)
            out.append(not state_differences(toolkit.snapshot(), start))
        return tuple(out)

    @classmethod
    def from_trajectory(cls, traj: Trajectory) -> "LiveEntry":
        meta = traj.meta
        missing = [k for k in ("involved_classes", "gold_calls", "turn_starts", "entry_id") if k not in meta]
        if missing:
            raise RecordError(traj.id, f"not an executed BFCL multi-turn trajectory (meta lacks {', '.join(missing)})")
        turns = tuple(traj.steps[i].content for i in meta["turn_starts"])
        if len(turns) != len(meta["gold_calls"]):
            raise RecordError(traj.id, f"{len(turns)} user turns but {len(meta['gold_calls'])} gold turns")
        return cls(
            entry_id=str(meta["entry_id"]),
            trajectory_id=traj.id,
            involved_classes=tuple(meta["involved_classes"]),
            initial_config=dict(meta.get("initial_config") or {}),
            turns=turns,
            gold_calls=tuple(tuple(turn) for turn in meta["gold_calls"]),
            category=str(meta.get("category") or "multi_turn_base"),
            group=traj.split_key,
        )


def _category(traj: Trajectory) -> str:
    return str(traj.meta.get("category") or traj.source)


def select(trajectories: Sequence[Trajectory], limit: int | None) -> list[Trajectory]:
    """A deterministic subset of at most `limit` trajectories (all of them when limit is None).

    With categories (BFCL): round-robin over the categories in the order they first appear, each in id order.
    Without: evenly spaced over the sequence (a file's first N records would all come from one corner of it)."""
    if limit is None or limit >= len(trajectories):
        return list(trajectories)
    if limit < 1:
        raise ValueError("limit must be >= 1 (or None for all)")
    groups: OrderedDict[str, list[Trajectory]] = OrderedDict()
    for t in trajectories:
        groups.setdefault(_category(t), []).append(t)
    if len(groups) == 1:
        n = len(trajectories)
        return [trajectories[(k * n) // limit] for k in range(limit)]
    queues = [sorted(g, key=lambda t: t.id) for g in groups.values()]
    out: list[Trajectory] = []
    depth = 0
    while len(out) < limit:
        for q in queues:
            if depth < len(q) and len(out) < limit:
                out.append(q[depth])
        depth += 1
    return out


def _bfcl_split(
    data_dir: str | Path, split: Split, params: str | Path | None, source: str | None = "bfcl"
) -> list[Trajectory]:
    """The trajectories of `source` (None: every source) under `data_dir` that fall in `split`."""
    from umi.data.reorganize import input_files
    from umi.schema import read_trajectories

    fractions = split_fractions(params)  # the shares the reorganisation split by
    out = []
    for f in input_files(data_dir):
        for traj in read_trajectories(f):
            if (source is None or traj.source == source) and split_of(traj.split_key, fractions) == split:
                out.append(traj)
    return out


def load_train(data_dir: str | Path = "data", params: str | Path | None = "params.yaml") -> list[Trajectory]:
    """Every train-split trajectory under `data_dir`, of any source: where the constant-answer baseline is chosen
    (umi.eval.baselines.best_constant), so that no test set decides it."""
    return _bfcl_split(data_dir, "train", params, source=None)


def load_bfcl_test(
    data_dir: str | Path = "data",
    limit: int | None = None,
    params: str | Path | None = "params.yaml",
    split: Split = "test",
) -> TestSet:
    """The BFCL test (or dev) split from the trajectories under `data_dir` (FileNotFoundError when there are none)."""
    trajectories = _bfcl_split(data_dir, split, params)
    if not trajectories:
        raise FileNotFoundError(
            f"no BFCL {split}-split trajectories under {data_dir} (run `umi data import bfcl` first)"
        )
    return TestSet(BFCL_SETS[split], select(trajectories, limit), str(data_dir), len(trajectories))


def load_toolbench_ood(path: str | Path, limit: int | None = None) -> TestSet:
    """The ToolBench out-of-domain test set (α-UMi stage-2 format); rejected records are listed, not fatal."""
    from umi.data.alpha_umi import import_alpha_umi
    from umi.eval.metrics import gold_steps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ToolBench out-of-domain test set at {path}")
    trajectories, rejected = [], []
    for rec in import_alpha_umi(path):
        if isinstance(rec, RecordError):
            rejected.append({"id": rec.record_id, "reason": rec.reason})
            continue
        try:
            gold_steps(rec)  # a decision without the step it announces cannot be scored
        except RecordError as e:
            rejected.append({"id": e.record_id, "reason": e.reason})
            continue
        trajectories.append(rec)
    return TestSet(TOOLBENCH_OOD, select(trajectories, limit), str(path), len(trajectories), rejected)


def live_entries(
    data_dir: str | Path = "data",
    limit: int | None = None,
    params: str | Path | None = "params.yaml",
    split: Split = "test",
) -> tuple[list[LiveEntry], int]:
    """The held-out multi_turn_base entries of `split` in entry-id order (with `limit`: `live_sample`'s choice) and
    how many there are in all."""
    trajectories = [t for t in _bfcl_split(data_dir, split, params) if t.meta.get("category") == "multi_turn_base"]
    trajectories.sort(key=lambda t: _entry_number(str(t.meta.get("entry_id", t.id))))
    entries = [LiveEntry.from_trajectory(t) for t in trajectories]
    return (entries if limit is None else live_sample(entries, limit)), len(entries)


def live_sample(entries: Sequence[LiveEntry], limit: int) -> list[LiveEntry]:
    """A deterministic sample of `limit` entries that can be passed and are worth passing: entries a no-call agent
    passes (every turn only reads) last, then the fewest planner turns needed in all (sum of `steps_needed`), then
    the fewest in the largest turn, then entry id; returned in entry-id order. The cheapest entries keep a cpu run
    affordable; every turn gets at least the steps its gold needs (umi.eval.live), so any of them can be passed."""
    if limit < 1:
        raise ValueError("limit must be >= 1 (or None for all)")

    def cost(e: LiveEntry) -> tuple:
        return (all(e.no_call_turns()), sum(e.steps_needed), max(e.steps_needed), _entry_number(e.entry_id))

    chosen = sorted(entries, key=cost)[:limit]
    return sorted(chosen, key=lambda e: _entry_number(e.entry_id))


def _entry_number(entry_id: str) -> tuple[str, int]:
    head, _, tail = entry_id.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (entry_id, -1)
