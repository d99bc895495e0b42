"""`umi deploy`: package the role models as a Bento, or serve them locally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from umi.cli.common import DEFAULT_TRACKING

deploy_app = typer.Typer(help="Package and serve the agent (BentoML).", no_args_is_help=True)
console = Console()

SERVICE = "umi.serve.service:UmiAgent"
STOP_GRACE_S = 8.0  # after SIGTERM / SIGINT, what BentoML gets to stop cleanly before every process is killed

RoleDir = Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="Checkpoint directory.")]


def _show(models: dict) -> None:
    table = Table("role", "BentoML model", "labels")
    for role, model in models.items():
        labels = ", ".join(f"{k}={v}" for k, v in sorted(model.info.labels.items()) if k != "fingerprint")
        table.add_row(role, str(model.tag), labels)
    console.print(table)


@deploy_app.command("build")
def build_cmd(
    planner: RoleDir = None,
    caller: RoleDir = None,
    summarizer: RoleDir = None,
    base: Annotated[Optional[Path], typer.Option(help="Base checkpoint of LoRA adapter roles.")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias or version (when no directories are given).")] = "champion",
    bentofile: Annotated[Path, typer.Option(exists=True, dir_okay=False)] = Path("bentofile.yaml"),
    build: Annotated[bool, typer.Option(help="Run `bentoml build` after importing the models.")] = True,
) -> None:
    """Import the role models into the BentoML store (the registry's champions, or --planner/--caller/--summarizer
    directories) and build the Bento."""
    from umi.serve.bento_build import BentoBuildError, build_agent_bento

    dirs = {"planner": planner, "caller": caller, "summarizer": summarizer}
    if not any(dirs.values()):
        tracking = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING)
        console.print(f"role models: the {alias!r} versions in the MLflow registry at {tracking}")
    try:
        built = build_agent_bento(bentofile, dirs=dirs, base=base, alias=alias, build=build)
    except ValueError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1)
    except BentoBuildError as e:
        console.print(e.output, highlight=False)
        console.print("[red]bentoml build failed[/]")
        raise typer.Exit(e.returncode)
    _show(built.models)
    for note in built.notes:
        console.print(note, highlight=False)
    if built.tag is None:
        return
    console.print(f"[green]built[/] {built.tag}", highlight=False)
    console.print(f"serve it:        bentoml serve {built.tag or 'umi-agent:latest'}", highlight=False)
    console.print(
        f"containerize it: deploy/image.sh {built.tag or 'umi-agent:latest'}   (docs/serving.md)", highlight=False
    )


@deploy_app.command("serve")
def serve_cmd(
    planner: RoleDir = None,
    caller: RoleDir = None,
    summarizer: RoleDir = None,
    host: str = "127.0.0.1",
    port: int = 3000,
) -> None:
    """Serve from source: the given directories, or the role models in the BentoML store."""
    env = dict(os.environ)
    dirs = {"planner": planner, "caller": caller, "summarizer": summarizer}
    if any(dirs.values()):
        if not all(dirs.values()):
            console.print("[red]give all of --planner/--caller/--summarizer or none[/]")
            raise typer.Exit(1)
        env.update({f"UMI_SERVE_{r.upper()}_DIR": str(p.resolve()) for r, p in dirs.items()})  # type: ignore[union-attr]
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    raise typer.Exit(run_until_stopped(cmd, env))


def run_until_stopped(cmd: list[str], env: dict[str, str], grace_s: float = STOP_GRACE_S) -> int:
    """Run the server; on SIGTERM or SIGINT pass the signal on, and kill whatever of its process tree is still there
    `grace_s` later (BentoML's workers and their tool workers included, whatever session they are in), so the
    service is gone within grace_s + a moment of the signal."""
    import psutil

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # a group of its own: signalled by us, not the tty
    stopping: list[float] = []
    tree: list[psutil.Process] = []

    def forward(signum: int, _frame) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            try:  # the tree now, before its members are reparented as they exit
                tree.extend(psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stopping and time.monotonic() - stopping[0] > grace_s:
                    console.print(f"[yellow]the server did not stop within {grace_s:g} s: killing it[/]")
                    proc.kill()
        if stopping:
            for p in tree:  # anything of the tree that outlived the server
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        return rc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
