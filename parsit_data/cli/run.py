"""What both console scripts do around their typer app: a :class:`ParsitError` becomes one line
``error: ...`` on stderr and exit code 2 (bad input or configuration, never a traceback)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from parsit_data.errors import ParsitError


def run_app(app: typer.Typer, argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except ParsitError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
