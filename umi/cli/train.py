"""`umi train`: the GLPFT stages, one or all, and where a run stands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from umi.cli.common import DEFAULT_DATASETS, default_tracking

console = Console()


def train_cmd(
    stage: Annotated[
        str, typer.Argument(help="global | planner | caller | summarizer | global-matched | all | status")
    ],
    profile: Annotated[str, typer.Option(help="paper | cpu | bench | tiny, or a YAML config path.")] = "cpu",
    datasets: Annotated[Path, typer.Option(help="Role datasets folder.")] = DEFAULT_DATASETS,
    runs: Annotated[Path, typer.Option(help="Stage output folders: <runs>/<stage>.")] = Path("artifacts/runs"),
    backbone: Annotated[Path, typer.Option(help="The backbone checkpoint.")] = Path("artifacts/backbone"),
    from_backbone: Annotated[
        bool, typer.Option(help="One-stage ablation: local stages start from the backbone.")
    ] = False,
    control: Annotated[
        bool, typer.Option(help="`all` also trains the compute-matched single LLM (global-matched).")
    ] = True,
    epochs: Annotated[
        Optional[float],
        typer.Option(min=0.001, help="Every stage's epochs (fractions allowed), replacing the profile's."),
    ] = None,
) -> None:
    """GLPFT: `global` first, then `planner`, `caller`, `summarizer` from the global checkpoint, and the
    compute-matched control `global-matched` (or `all`, in that order). The same command again continues where it
    stopped: finished stages are skipped, an interrupted one resumes from its last complete checkpoint. `status`
    prints where the run in --runs stands (each stage also logs to <runs>/<stage>/train.log)."""
    from umi.train.config import load_config
    from umi.vocabulary import CONTROL_STAGE, STAGES, TRAINABLE_STAGES

    config = load_config(profile)
    if epochs is not None:
        config = config.with_epochs(epochs)
    if stage == "status":
        from umi.train.progress import format_status, planned_examples, run_status

        stages = TRAINABLE_STAGES if control else STAGES
        planned = planned_examples(config, datasets, stages)
        typer.echo(format_status(run_status(runs, stages, planned)))  # a table: never wrapped to the terminal
        return
    default_tracking()
    from umi.data.versions import dataset_versions
    from umi.train.config import dataset_role
    from umi.train.stages import train_glpft, train_stage

    versions = dataset_versions(datasets)
    if stage == "all":
        stages = STAGES + ((CONTROL_STAGE,) if control and not from_backbone else ())
        results = train_glpft(
            config, datasets, runs, backbone, stages=stages, from_backbone=from_backbone, data_version=versions
        )
    elif stage in TRAINABLE_STAGES:
        init = backbone if (stage == "global" or from_backbone) else runs / "global" / "model"
        if stage != "global" and not from_backbone and not init.exists():
            console.print(f"[red]{init} does not exist: train the global stage first (umi train global)[/]")
            raise typer.Exit(1)
        version = versions.get(dataset_role(stage))
        results = {stage: train_stage(stage, config, datasets, runs / stage, init, data_version=version)}
    else:
        console.print(f"[red]unknown stage {stage!r}[/]: one of {', '.join(TRAINABLE_STAGES)}, all or status")
        raise typer.Exit(2)
    for name, r in results.items():
        console.print(f"[green]{name}[/]: {r.checkpoint}  {json.dumps(r.metrics)}", highlight=False)
