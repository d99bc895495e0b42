"""What the full evaluation's generations cost on the machines that made them, from the committed cache.

The reports' `cost_seconds` sums each stored generation's charge; rows that continuous batching and live rollouts
stored before umi.eval.generation_cache.GenerationCache.charge existed carry their own lifetime, which overlaps the
others' (16 rows at once, 8 rollouts at once), so that sum overstates several times over. This script reads the
reports' generations again from a copy of the cache (every answer a hit; the keys recorded), then counts each
distinct generation once: padded-batch rows (one batch's rows share one stored share of its wall time) by their
sum, every other row as the interval [created - seconds, created], overlapping intervals merged. Run: `bash
docs/results/full-eval/run.sh compute` (~2 min), which passes each report's command as its stage runs it."""

from __future__ import annotations

import collections
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from umi.cli.main import app
from umi.eval import generation_cache


def reports(argv: list[str]) -> dict[str, list[str]]:
    """`NAME UMI-ARGS... -- NAME UMI-ARGS...` (as run.sh's `compute` passes its stages' commands) -> name: args."""
    out, group = {}, []
    for arg in [*argv, "--"]:
        if arg != "--":
            group.append(arg)
        elif group:
            out[group[0]] = group[1:]
            group = []
    return out


def with_option(args: list[str], option: str, value: str) -> list[str]:
    """`args` with `option` set to `value` (the copy of the cache, a scratch report folder)."""
    if option not in args:
        return [*args, option, value]
    i = args.index(option)
    return [*args[: i + 1], value, *args[i + 2 :]]


def wall_seconds(db: sqlite3.Connection, keys: set[str]) -> tuple[int, float]:
    rows = sorted(
        db.execute("SELECT created, cost_seconds FROM generations WHERE key = ?", (k,)).fetchone() for k in keys
    )
    created_by_cost = collections.defaultdict(list)
    for created, cost in rows:
        created_by_cost[cost].append(created)
    padded = set()  # a padded batch's rows: the same share, stored within seconds of each other
    for cost, times in created_by_cost.items():
        for a, b in zip(times, times[1:]):
            if cost > 0 and b - a < 10:
                padded |= {(a, cost), (b, cost)}
    total = sum(cost for created, cost in rows if (created, cost) in padded)
    end = float("-inf")
    for start, stop in sorted((c - s, c) for c, s in rows if (c, s) not in padded):
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return len(rows), total


def main() -> None:
    commands = reports(sys.argv[1:])
    if not commands:
        raise SystemExit("usage: run through run.sh: bash docs/results/full-eval/run.sh compute")
    recorded: list[str] = []
    get = generation_cache.GenerationCache.get

    def recording_get(self, key, twin_key=None):
        found = get(self, key, twin_key)
        if found is not None:
            recorded.append(key)
        return found

    generation_cache.GenerationCache.get = recording_get
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "generations.sqlite"
        keys: dict[str, set[str]] = {}
        for name, args in commands.items():
            if not cache.exists():  # read from a copy: opening the cache registers models, folds its log
                shutil.copy(args[args.index("--cache") + 1], cache)
            args = with_option(with_option(args, "--cache", str(cache)), "--out", str(Path(tmp) / "out"))
            recorded.clear()
            try:
                app(args, standalone_mode=False)
            except SystemExit as e:
                if e.code:
                    raise
            keys[name] = set(recorded)
        db = sqlite3.connect(cache)
        keys["all of it"] = set().union(*keys.values())
        for name, these in keys.items():
            n, seconds = wall_seconds(db, these)
            print(f"{name}: {n:,} distinct generations, {seconds:,.0f} s ({seconds / 3600:.1f} h) of generation")


if __name__ == "__main__":
    sys.exit(main())
