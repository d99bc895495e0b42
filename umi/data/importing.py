"""Writing imported trajectories: deterministic JSONL, every reject reported with its id, a ceiling on the reject share.

Importers yield `Trajectory` objects, or `RecordError` values for records they could not convert (yielded, not
raised, so one bad record does not end the stream).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from umi.schema import RecordError, Trajectory


class TooManyRejects(RuntimeError):
    pass


@dataclass
class ImportStats:
    path: Path
    written: int = 0
    rejected: list[RecordError] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.written + len(self.rejected)

    @property
    def malformed(self) -> list[RecordError]:
        return [e for e in self.rejected if not e.excluded]

    @property
    def reject_share(self) -> float:
        """Share of malformed records; records their source excludes (RecordError.excluded) do not count."""
        return len(self.malformed) / self.total if self.total else 0.0


def write_import(
    records: Iterable[Trajectory | RecordError], out_path: str | Path, max_reject_share: float = 0.0
) -> ImportStats:
    """Write trajectories to `out_path` (JSONL) and rejects to `<out_path>.rejects.jsonl` (only if there are any).

    Raises TooManyRejects after writing everything when the share of rejects exceeds `max_reject_share`.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rejects_path = out_path.with_name(out_path.name + ".rejects.jsonl")
    stats = ImportStats(out_path)
    seen: set[str] = set()
    with out_path.open("w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            if isinstance(rec, RecordError):
                stats.rejected.append(rec)
                continue
            if rec.id in seen:
                stats.rejected.append(RecordError(rec.id, "duplicate trajectory id"))
                continue
            seen.add(rec.id)
            f.write(rec.to_json() + "\n")
            stats.written += 1
    if stats.rejected:
        with rejects_path.open("w", encoding="utf-8", newline="\n") as f:
            for err in stats.rejected:
                row = {"id": err.record_id, "reason": err.reason}
                if err.excluded:
                    row["excluded_by_source"] = True
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif rejects_path.exists():
        rejects_path.unlink()
    if stats.reject_share > max_reject_share:
        raise TooManyRejects(
            f"{len(stats.malformed)} of {stats.total} records rejected ({stats.reject_share:.1%} > "
            f"{max_reject_share:.1%} allowed); see {rejects_path}"
        )
    return stats
