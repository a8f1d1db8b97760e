"""`edgefleet simulation` commands (filled in by the issue that makes this deployable real)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
