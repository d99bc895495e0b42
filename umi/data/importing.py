"""Writing imported trajectories: deterministic JSONL, every reject reported with its id, a ceiling on the reject share.

Importers yield `Trajectory` objects, or `RecordError` values for records they could not convert (yielded, not
raised, so one bad record does not end the stream): every record read comes out as exactly one of the two. The
output and its rejects file are written to temporary files and renamed into place at the end, so a crash midway
leaves the previous import as it was, and a rejects file never outlives the import it belongs to.

Reading is guarded here too (one concept, one place): `parse_json` turns every way a record's text can fail to be
JSON we accept (invalid, nested too deeply, an integer too long for Python, too big) into a ValueError with a reason,
and `read_lines` reads JSONL one bounded line at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from umi.atomic import PendingFile
from umi.schema import RecordError, Trajectory

# The largest record (characters of its JSON text) an import accepts: the biggest real one (a ToolBench answer with
# long observations) is ~1 MB; 32 MiB leaves room while keeping one hostile record from taking the machine's memory.
MAX_RECORD_CHARS = 32 * 2**20


class TooManyRejects(RuntimeError):
    def __init__(self, message: str, stats: ImportStats | None = None):
        super().__init__(message)
        self.stats = stats


class UnreadableRecord(ValueError):
    """A record whose text is not JSON we accept; the reason says why (invalid, too deep, too big...)."""


def json_problem(error: BaseException) -> str:
    """One line for why a text could not be parsed (RecursionError: nesting; ValueError: e.g. int digits limit)."""
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON: {error}"
    if isinstance(error, RecursionError):
        return "nested too deeply to parse"
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text: {error}"
    return f"unreadable JSON: {error}"  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"


def validation_problem(error: Exception) -> str:
    """A one-line reason from a pydantic ValidationError (or any other exception)."""
    if isinstance(error, ValidationError):
        parts = []
        for err in error.errors():
            loc = ".".join(map(str, err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            given = err.get("input")
            if isinstance(given, (str, int, float, bool)) and len(repr(given)) <= 60:
                msg += f" (got {given!r})"
            parts.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(parts)
    return str(error)


def parse_json(text: str | bytes, max_chars: int = MAX_RECORD_CHARS) -> Any:
    """json.loads, with every failure (too big, invalid, too deep, a huge integer, bad UTF-8) an UnreadableRecord."""
    if len(text) > max_chars:
        raise UnreadableRecord(f"record too large ({len(text):,} > {max_chars:,} characters)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UnreadableRecord(json_problem(e)) from None


def read_lines(f: IO[bytes], max_chars: int = MAX_RECORD_CHARS) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, line) per non-blank line of a binary file; None for a line longer than `max_chars`,
    which is skipped without ever being held in memory whole."""
    lineno = 0
    while True:
        line = f.readline(max_chars + 1)
        if not line:
            return
        lineno += 1
        if len(line) > max_chars and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drain the rest of the oversized line
                line = f.readline(1 << 20)
            yield lineno, None
            continue
        if line.strip():
            yield lineno, line


def iter_jsonl(f: IO[bytes], max_chars: int = MAX_RECORD_CHARS) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or UnreadableRecord) per non-blank line: a bad line costs that line only."""
    for lineno, line in read_lines(f, max_chars):
        if line is None:
            yield lineno, UnreadableRecord(f"line {lineno}: record too large (> {max_chars:,} characters)")
            continue
        try:
            yield lineno, parse_json(line, max_chars)
        except UnreadableRecord as e:
            yield lineno, UnreadableRecord(f"line {lineno}: {e}")


@dataclass
class ImportStats:
    path: Path
    written: int = 0
    rejected: list[RecordError] = field(default_factory=list)

    @property
    def read(self) -> int:
        """Records read: every one was written or rejected (excluded ones among the rejected)."""
        return self.written + len(self.rejected)

    total = read  # the older name

    @property
    def malformed(self) -> list[RecordError]:
        return [e for e in self.rejected if not e.excluded]

    @property
    def excluded(self) -> list[RecordError]:
        return [e for e in self.rejected if e.excluded]

    @property
    def reject_share(self) -> float:
        """Share of malformed records; records their source excludes (RecordError.excluded) do not count."""
        return len(self.malformed) / self.read if self.read else 0.0

    @property
    def rejects_path(self) -> Path:
        return rejects_path_for(self.path)

    def summary(self) -> str:
        return (
            f"{self.read} records read: {self.written} imported + {len(self.malformed)} rejected + "
            f"{len(self.excluded)} excluded by their source"
        )


def rejects_path_for(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".rejects.jsonl")


def write_import(
    records: Iterable[Trajectory | RecordError], out_path: str | Path, max_reject_share: float = 0.0
) -> ImportStats:
    """Write trajectories to `out_path` (JSONL) and rejects to `<out_path>.rejects.jsonl` (only if there are any).

    Both are written to temporary files and renamed into place once every record is accounted for; an exception
    from `records` (a crash midway) leaves the previous files untouched. Raises TooManyRejects after writing
    everything when the share of rejects exceeds `max_reject_share`.
    """
    out_path = Path(out_path)
    rejects_path = rejects_path_for(out_path)
    stats = ImportStats(out_path)
    seen: set[str] = set()
    out, rejects = PendingFile(out_path), PendingFile(rejects_path)
    try:
        for rec in records:
            if isinstance(rec, Trajectory) and rec.id in seen:
                rec = RecordError(rec.id, "duplicate trajectory id")
            if isinstance(rec, RecordError):
                stats.rejected.append(rec)
                row = {"id": rec.record_id, "reason": rec.reason}
                if rec.excluded:
                    row["excluded_by_source"] = True
                rejects.file.write(json.dumps(row, ensure_ascii=False) + "\n")
                continue
            seen.add(rec.id)
            out.file.write(rec.to_json() + "\n")
            stats.written += 1
    except BaseException:
        out.discard()
        rejects.discard()
        raise
    # the earlier rejects go first: a kill between these steps can lose this run's list, never show the old one
    rejects_path.unlink(missing_ok=True)
    out.commit()
    if stats.rejected:
        rejects.commit()
    else:
        rejects.discard()
    if stats.reject_share > max_reject_share:
        raise TooManyRejects(
            f"{len(stats.malformed)} of {stats.read} records rejected ({stats.reject_share:.1%} > "
            f"{max_reject_share:.1%} allowed; {stats.summary()}); see {rejects_path}",
            stats,
        )
    return stats
