"""`umi run`: the main job, the Prefect flow glpft_pipeline run in a child process, and where to look after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from umi.cli.common import DEFAULT_DATA, default_tracking
from umi.cli.data import import_bfcl_cmd

console = Console()


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
        bool,
        typer.Option(
            help="Score the ToolBench out-of-domain set, read only from $UMI_FIXTURES/alpha-umi/"
            "toolbench_out_of_domain_test.json: without UMI_FIXTURES, or that file, exit 2 before training "
            "(make run sets it when ../shared/fixtures has it)."
        ),
    ] = True,
) -> None:
    """The main job: import the embedded data, run the Prefect flow glpft_pipeline (datasets, backbone, GLPFT
    training, evaluation, registration, promotion, and the agent Bento when the champions changed); then print where
    to look."""
    import time

    started = time.perf_counter()
    if toolbench_ood:
        _check_toolbench_ood()
    uri = default_tracking()
    _prefect_server_settings()
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
    built = result.get("bento") or {}
    no_bento = _why_no_bento(result.get("stages", {})) if bento and not built else ""
    console.rule(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    _print_where_to_look(result, uri, no_bento)
    if built.get("error"):
        console.print(f"[red]the agent Bento was not built[/] ({built['error']}); retry with `umi deploy build`")
        raise typer.Exit(1)


def _prefect_server_settings() -> None:
    """Settings for the flow's temporary Prefect server, unless the environment sets them."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from the temporary server
    # the temporary server's default 20 s to start is not always enough on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _why_no_bento(stages: dict) -> str:
    """Why a run that was to build the agent Bento built none and reported no error, and what to do instead."""
    from umi.registry.store import champion_version
    from umi.vocabulary import AGENT_ROLES

    if not Path("bentofile.yaml").is_file():
        return "no bentofile.yaml here"
    if all(champion_version(r) is not None for r in AGENT_ROLES):
        return "the champions did not change in this run; to build the Bento of them: umi deploy build"
    roles = [r for r in AGENT_ROLES if r in stages]
    dirs = " ".join(f"--{r} {stages[r]['checkpoint']}" for r in roles)
    return (
        f"no champion in the registry yet (see the promotion line); to serve this run's unpromoted "
        f"candidates anyway: umi deploy build {dirs}"
    )


def _print_where_to_look(result: dict, uri: str, no_bento: str) -> None:
    """The run's table and promotion, then where each of its outputs is and the command that shows it."""
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
    built = result.get("bento") or {}
    if built.get("tag"):
        console.print(f"Serve:   bentoml serve {built['tag']}", highlight=False)
    elif no_bento:
        console.print(f"Bento:   not built: {no_bento}", highlight=False)
    console.print("Data:    dvc status && dvc dag", highlight=False)


def _check_toolbench_ood() -> None:
    """Before any training: the ToolBench out-of-domain set the evaluation is to score is named and there (exit 2)."""
    from umi.eval.testsets import configured_toolbench_ood

    try:
        path = configured_toolbench_ood()
        if not path.is_file():
            raise ValueError(f"no ToolBench out-of-domain test set at {path} (or pass --no-toolbench-ood)")
    except ValueError as e:
        console.print(f"[red]{escape(str(e))}[/]", highlight=False)
        raise typer.Exit(2)


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
