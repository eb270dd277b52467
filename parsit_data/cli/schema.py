"""``parsit-data schema``: write (or check) the JSON Schemas of records, quarantine lines and manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def schema_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the *.schema.json files into.")]
    = Path("schemas"),
    check: Annotated[bool, typer.Option(help="Write nothing; exit 1 when the files in --out differ from the "
                                             "models (for CI).")] = False,
) -> None:
    """Write the JSON Schemas of an input record (sample), a quarantine line and manifest.json."""
    from parsit_data.schemas import drifted, write_schemas

    if check:
        stale = drifted(out)
        if stale:
            console.print(f"[red]out of date in {out}:[/] {', '.join(stale)} (run: parsit-data schema --out {out})",
                          highlight=False)
            raise typer.Exit(1)
        console.print(f"schemas in {out} match the models")
        return
    for p in write_schemas(out):
        console.print(f"wrote {p}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("schema")(schema_command)
