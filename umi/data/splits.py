"""Deterministic train / dev / test splits by a hash of the split key.

The key is the trajectory's `group` (a BFCL entry id, so every turn of an entry lands in one split) or its id.
sha256 rather than Python's hash(): the same split on every machine and every run.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
DEFAULT_FRACTIONS: dict[Split, float] = {"train": 0.8, "dev": 0.1, "test": 0.1}


def split_of(key: str, fractions: dict[Split, float] | None = None, salt: str = "umi") -> Split:
    fractions = fractions or DEFAULT_FRACTIONS
    if abs(sum(fractions.values()) - 1.0) > 1e-9 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    edge = 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if u < edge:
            return name
    return SPLITS[-1]
