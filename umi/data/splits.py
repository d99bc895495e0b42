"""Deterministic train / dev / test splits by a hash of the split key.

The key is the trajectory's `group` or its id. Groups keep copies of one task together: a BFCL group is every entry
sharing a question or a gold answer with another (umi.data.bfcl.entry_groups, so a question and its twin in another
category land in one split), a ToolBench group every record of one query.
sha256 rather than Python's hash(): the same split on every machine and every run.

Some groups hold out more than the fractions say (`MIN_TEST_SHARE`): the live evaluation needs enough held-out BFCL
multi-turn scenarios for a usable interval (>= 60 of 200; at the default 10% there would be ~20). Their extra test
share is taken from train (then dev); they are still decided by the key's hash alone, so every caller agrees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Literal

Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
DEFAULT_FRACTIONS: dict[Split, float] = {"train": 0.8, "dev": 0.1, "test": 0.1}

# key prefix -> the least test share of keys with that prefix. BFCL groups are named after their first trajectory's
# id (umi.data.bfcl.entry_groups), and a group holding a multi-turn scenario is named after that scenario.
MIN_TEST_SHARE: dict[str, float] = {"bfcl/multi_turn_base/": 0.35}


def _check(fractions: Mapping[str, float]) -> None:
    if abs(sum(fractions.values()) - 1.0) > 1e-9 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")


def fractions_for(
    key: str, fractions: Mapping[str, float] | None = None, min_test_share: Mapping[str, float] | None = None
) -> dict[Split, float]:
    """The fractions that decide `key`: `fractions` (default DEFAULT_FRACTIONS), with the test share raised to the
    key's MIN_TEST_SHARE (the difference taken from train, then dev) when its prefix has one."""
    out: dict[Split, float] = {s: float((fractions or DEFAULT_FRACTIONS).get(s, 0.0)) for s in SPLITS}
    _check(out)
    floors = MIN_TEST_SHARE if min_test_share is None else min_test_share
    floor = max((share for prefix, share in floors.items() if key.startswith(prefix)), default=0.0)
    missing = floor - out["test"]
    for name in ("train", "dev"):
        if missing <= 0:
            break
        moved = min(missing, out[name])
        out[name] -= moved
        out["test"] += moved
        missing -= moved
    return out


SALT = "umi"
# How a trajectory's split key is chosen (umi.schema.Trajectory.split_key): recorded with the split, so that a change
# of the rule is a change of the split.
GROUP_RULE = (
    "group or id: BFCL entries sharing a normalised question or a gold answer are one group (umi.data.bfcl."
    "entry_groups), a ToolBench group every record of one query; a trajectory without a group is its own"
)


def split_rule(fractions: Mapping[str, float] | None = None) -> dict:
    """Everything that decides which split a trajectory falls in, as JSON: the fractions, the least test shares
    (MIN_TEST_SHARE), the hash salt and the group rule. The dataset layout (umi.data.reorganize) and every stage
    manifest trained on it record it; evaluation recomputes the split from params.yaml and refuses one that differs
    (`split_differences`)."""
    shares = {s: float((fractions or DEFAULT_FRACTIONS).get(s, 0.0)) for s in SPLITS}
    _check(shares)
    return {"fractions": shares, "min_test_share": dict(MIN_TEST_SHARE), "salt": SALT, "group_rule": GROUP_RULE}


def split_differences(recorded: Mapping, current: Mapping) -> list[str]:
    """What differs between two split rules (`split_rule`), field by field; [] when they split alike. Fractions are
    compared to 1e-9, so 0.1 written as 0.10 is the same split."""
    out = []
    for key in ("fractions", "min_test_share"):
        a, b = dict(recorded.get(key) or {}), dict(current.get(key) or {})
        if set(a) != set(b) or any(abs(float(a[k]) - float(b[k])) > 1e-9 for k in a):
            out.append(f"{key} {a} != {b}")
    for key in ("salt", "group_rule"):
        if recorded.get(key) != current.get(key):
            out.append(f"{key} {recorded.get(key)!r} != {current.get(key)!r}")
    return out


def split_of(
    key: str,
    fractions: Mapping[str, float] | None = None,
    salt: str = SALT,
    min_test_share: Mapping[str, float] | None = None,
) -> Split:
    shares = fractions_for(key, fractions, min_test_share)
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    edge = 0.0
    for name in SPLITS:
        edge += shares[name]
        if u < edge:
            return name
    return SPLITS[-1]
