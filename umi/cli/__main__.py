"""`python -m umi.cli`: the `umi` command."""

from umi.cli.main import app

app()
