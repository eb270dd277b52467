"""``parsit-data report DIR``: rewrite report.json and report.html of a finished build, no rebuild."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def report_command(
    build_dir: Annotated[Path, typer.Argument(help="A finished build directory (with manifest.json and _parts/).",
                                              show_default=False)],
) -> None:
    """Regenerate the data quality report from the manifest and the per-partition statistics.

    Reads DIR/manifest.json and DIR/_parts/part-*.json only; the shards are not read again.
    """
    from parsit_data.report import regenerate

    r = regenerate(build_dir)
    s = r.summary
    colour = {"go": "green", "review": "yellow", "no-go": "red"}[s.verdict]
    console.print(f"[bold {colour}]{s.verdict.upper()}[/]: {s.kept:,} kept, {s.quarantined:,} quarantined of "
                  f"{s.read:,} read", highlight=False)
    for c in r.checks:
        if c.status != "ok":
            console.print(f"  {c.status}: {c.name}: {c.value}", highlight=False)
    console.print(f"report: {build_dir / 'report.html'}\n        {build_dir / 'report.json'}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
