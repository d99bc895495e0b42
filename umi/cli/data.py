"""`umi data`: import tool-use data into umi's JSONL and build the role datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from umi.cli.common import DEFAULT_DATA, DEFAULT_DATASETS

data_app = typer.Typer(help="Import tool-use data and build the role datasets.", no_args_is_help=True)
import_app = typer.Typer(help="Import trajectories from a source format into umi's JSONL.", no_args_is_help=True)
data_app.add_typer(import_app, name="import")
console = Console()

MaxRejects = Annotated[
    float, typer.Option(help="Fail (after writing everything) past this share of rejected records.", min=0, max=1)
]


def _report_import(stats) -> None:
    console.print(f"[green]{stats.written}[/] trajectories -> {stats.path}  ({stats.summary()})", highlight=False)
    for err in stats.rejected[:20]:
        label = "[yellow]excluded by its source[/]" if err.excluded else "[red]rejected[/]"
        console.print(f"  {label} {err.record_id}: {err.reason}", highlight=False)
    if len(stats.rejected) > 20:
        console.print(f"  ... {len(stats.rejected) - 20} more in {stats.rejects_path}")


def _write(records, out: Path, max_reject_share: float) -> None:
    """Write one import; exit status 1 when its reject share is over `max_reject_share` (the files are written)."""
    from umi.data.importing import TooManyRejects, write_import

    try:
        _report_import(write_import(records, out, max_reject_share))
    except TooManyRejects as e:
        if e.stats is not None:
            _report_import(e.stats)
        console.print(f"[red]{e}[/]", highlight=False)
        raise typer.Exit(1)


@import_app.command("bfcl")
def import_bfcl_cmd(
    out: Annotated[Path, typer.Option(help="Folder for one JSONL file per category.")] = DEFAULT_DATA / "bfcl",
    category: Annotated[Optional[list[str]], typer.Option(help="Categories (default: the training set).")] = None,
    max_reject_share: MaxRejects = 0.0,
) -> None:
    """The embedded default dataset: BFCL's shipped data, multi-turn calls executed against BFCL's tool classes."""
    from umi.data import bfcl

    for cat in category or list(bfcl.DEFAULT_CATEGORIES):
        _write(bfcl.import_bfcl([cat]), out / f"{cat}.jsonl", max_reject_share)


@import_app.command("toolbench")
def import_toolbench_cmd(
    paths: Annotated[list[Path], typer.Argument(help="ToolBench answer files or folders (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Output JSONL.")] = DEFAULT_DATA / "toolbench.jsonl",
    max_reject_share: MaxRejects = 0.0,
) -> None:
    """Raw ToolBench answers (answer_generation.train_messages); Finish becomes conclusion or give up."""
    from umi.data.toolbench import import_toolbench

    _write(import_toolbench(paths), out, max_reject_share)


@import_app.command("alpha-umi")
def import_alpha_umi_cmd(
    paths: Annotated[list[Path], typer.Argument(help="α-UMi stage-1 (chains) or stage-2 (conversations) JSON files.")],
    out: Annotated[Path, typer.Option(help="Output JSONL.")] = DEFAULT_DATA / "alpha_umi.jsonl",
    max_reject_share: MaxRejects = 0.0,
) -> None:
    """The α-UMi reference code's data formats."""
    from itertools import chain

    from umi.data.alpha_umi import import_alpha_umi

    _write(chain.from_iterable(import_alpha_umi(p) for p in paths), out, max_reject_share)


@data_app.command("reorganize")
def reorganize_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="Trajectory JSONL files or folders.")] = [DEFAULT_DATA],
    out: Annotated[Path, typer.Option(help="Output folder: <role>/<split>.jsonl.")] = DEFAULT_DATASETS,
    params: Annotated[Path, typer.Option(help="params.yaml; its `reorganize` section sets the defaults.")] = Path(
        "params.yaml"
    ),
    doc_style: Annotated[Optional[str], typer.Option(help="reference | compact")] = None,
    observation_limit: Annotated[Optional[int], typer.Option(help="Characters kept of each observation.")] = None,
    max_reject_share: Annotated[Optional[float], typer.Option(min=0, max=1)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Processes (default: the CPUs available).")] = None,
) -> None:
    """Trajectories -> the global, planner, caller and summarizer datasets."""
    from umi.data.params import reorganize_params
    from umi.data.reorganize import ReorganizeOptions, TooManyRejects, reorganize
    from umi.machine import cpu_count

    settings = reorganize_params(params)
    for key, value in dict(
        doc_style=doc_style, observation_limit=observation_limit, max_reject_share=max_reject_share, workers=workers
    ).items():
        if value is not None:
            settings[key] = value
    settings.setdefault("workers", cpu_count())
    try:
        stats = reorganize(inputs, out, ReorganizeOptions(**settings))
    except TooManyRejects as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    table = Table("role", "train", "dev", "test", title=f"{stats.trajectories} trajectories -> {out}")
    for role, counts in stats.examples.items():
        table.add_row(role, *(str(counts[s]) for s in ("train", "dev", "test")))
    console.print(table)
    if stats.rejected:
        console.print(f"[yellow]{stats.rejected} rejected[/], see {stats.rejects_path}")


@data_app.command("stats")
def stats_cmd(paths: Annotated[list[Path], typer.Argument()] = [DEFAULT_DATA]) -> None:
    """Counts per file: trajectories, steps by role, decisions, synthetic steps."""
    from collections import Counter

    from umi.data.reorganize import input_files
    from umi.schema import read_trajectories

    table = Table("file", "trajectories", "calls", "conclusions", "give ups", "synthetic steps")
    for f in input_files(paths):
        c: Counter = Counter()
        for t in read_trajectories(f):
            c["trajectories"] += 1
            for s in t.steps:
                c[s.role] += 1
                c["give up"] += s.decision == "give up"
                c["synthetic"] += s.synthetic
        table.add_row(str(f), *(str(c[k]) for k in ("trajectories", "caller", "conclusion", "give up", "synthetic")))
    console.print(table)
