"""The `umi` command: the command groups of umi.cli joined under one app. Each command is a thin shell over a library
function; heavy imports happen inside commands so `umi --help` stays fast."""

from __future__ import annotations

import typer

from umi.cli.backbone import backbone_app
from umi.cli.chat import chat_cmd
from umi.cli.data import data_app
from umi.cli.deploy import deploy_app  # light: bentoml is imported inside its commands
from umi.cli.eval import eval_app
from umi.cli.models import models_app  # light: mlflow is imported inside its commands
from umi.cli.run import run_cmd
from umi.cli.train import train_cmd

app = typer.Typer(help="Train, evaluate and serve α-UMi multi-LLM tool agents.", no_args_is_help=True)
# the order `umi --help` lists them in: the commands, then the groups
app.command("train")(train_cmd)
app.command("run")(run_cmd)
app.command("chat")(chat_cmd)
app.add_typer(data_app, name="data")
app.add_typer(backbone_app, name="backbone")
app.add_typer(models_app, name="models")
app.add_typer(deploy_app, name="deploy")
app.add_typer(eval_app, name="eval")
