"""`umi deploy`: package the role models as a Bento, or serve them locally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

deploy_app = typer.Typer(help="Package and serve the agent (BentoML).", no_args_is_help=True)
console = Console()

SERVICE = "umi.serve.service:UmiAgent"
SERVE_REQUIREMENTS = Path("umi/serve/requirements.txt")
# installed in the image by umi/serve/container_setup.sh instead: bfcl-eval without its dependencies (it pins numpy
# 1.26 and ~30 API SDKs), DeepSpeed not at all (training only, and a source build)
NOT_IN_IMAGE = ("bfcl_eval", "bfcl-eval", "deepspeed")

STOP_GRACE_S = 8.0  # after SIGTERM / SIGINT, what BentoML gets to stop cleanly before every process is killed

RoleDir = Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="Checkpoint directory.")]


def serve_requirements(lock: Path) -> str:
    """requirements.lock less what the image installs otherwise (see NOT_IN_IMAGE)."""
    keep = []
    for line in lock.read_text().splitlines():
        name = line.split("==", 1)[0].strip().lower()
        if name and name in NOT_IN_IMAGE:
            continue
        keep.append(line)
    header = "# Generated from requirements.lock by `umi deploy build` (less bfcl-eval and deepspeed): do not edit.\n"
    return header + "\n".join(keep).strip() + "\n"


def _clean_env() -> dict[str, str]:
    """The environment for `bentoml build`: no model directories, so the service declares its store models."""
    return {k: v for k, v in os.environ.items() if not k.startswith("UMI_SERVE_")}


def _show(models: dict) -> None:
    table = Table("role", "BentoML model", "labels")
    for role, model in models.items():
        labels = ", ".join(f"{k}={v}" for k, v in sorted(model.info.labels.items()) if k != "checkpoint_sha256")
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
    from umi.serve.bento_models import import_role_models, sources_from_dirs, sources_from_registry

    dirs = {"planner": planner, "caller": caller, "summarizer": summarizer}
    given = {r: p for r, p in dirs.items() if p is not None}
    with tempfile.TemporaryDirectory(prefix="umi-deploy-") as tmp:
        try:
            if given:
                if len(given) != 3:
                    raise ValueError(f"give all of --planner/--caller/--summarizer or none (got {sorted(given)})")
                sources = sources_from_dirs(given)
            else:
                tracking = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
                console.print(f"role models: the {alias!r} versions in the MLflow registry at {tracking}")
                sources = sources_from_registry(tmp, alias)
            models = import_role_models(sources, base)
        except ValueError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(1)
        _show(models)
    if not build:
        return
    root = bentofile.resolve().parent
    lock = root / "requirements.lock"
    target = root / SERVE_REQUIREMENTS
    if lock.is_file() and (not target.is_file() or target.read_text() != serve_requirements(lock)):
        target.write_text(serve_requirements(lock))
        console.print(f"{target} regenerated from {lock}", highlight=False)
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", str(bentofile.resolve()), str(root), "--output", "tag"]
    console.print("$ " + " ".join(cmd), highlight=False)
    done = subprocess.run(cmd, cwd=root, env=_clean_env(), capture_output=True, text=True)
    if done.returncode != 0:
        console.print(done.stdout[-4000:], done.stderr[-4000:], highlight=False)
        console.print("[red]bentoml build failed[/]")
        raise typer.Exit(done.returncode)
    tag = next((line.split("__tag__:", 1)[1].strip() for line in done.stdout.splitlines() if "__tag__:" in line), "")
    console.print(f"[green]built[/] {tag or done.stdout.strip()}", highlight=False)
    console.print(f"serve it:        bentoml serve {tag or 'umi-agent:latest'}", highlight=False)
    console.print(f"containerize it: deploy/image.sh {tag or 'umi-agent:latest'}   (docs/serving.md)", highlight=False)


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
