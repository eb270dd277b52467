"""``parsit-data report DIR``: rewrite report.json and report.html of a finished build, no rebuild."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

console = Console()


def report_command(
    build_dir: Annotated[str, typer.Argument(help="A finished build (with manifest.json and _parts/): a directory "
                                                  "or a URI (s3://bucket/build).",
                                              show_default=False)],
) -> None:
    """Regenerate the data quality report from the manifest and the per-partition statistics.

    Reads DIR/manifest.json and DIR/_parts/part-*.json only; the shards are not read again.
    """
    from parsit_data.format import build_files
    from parsit_data.format.fsio import location
    from parsit_data.report import regenerate

    where = location(build_dir, "build")
    r = regenerate(where)
    s = r.summary
    colour = {"go": "green", "review": "yellow", "no-go": "red"}[s.verdict]
    console.print(f"[bold {colour}]{s.verdict.upper()}[/]: {s.kept:,} kept, {s.quarantined:,} quarantined of "
                  f"{s.read:,} read", highlight=False)
    for c in r.checks:
        if c.status != "ok":
            console.print(f"  {c.status}: {c.name}: {c.value}", highlight=False)
    files = build_files(where)
    console.print(f"report: {files.report_html}\n        {files.report_json}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
