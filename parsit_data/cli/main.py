"""``parsit-data``: one typer app; each subcommand lives in its own module and calls the library.

:func:`parsit_data.errors.run_app` turns a :class:`ParsitError` into ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import logging

import typer

from parsit_data.cli import build as build_cmd
from parsit_data.cli import inspect as inspect_cmd
from parsit_data.cli import report as report_cmd
from parsit_data.cli import schema as schema_cmd
from parsit_data.cli import validate as validate_cmd
from parsit_data.errors import run_app

app = typer.Typer(
    name="parsit-data",
    help="Build verified, tokenized Arrow shards from LLaVA-format conversation data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from parsit_data import __version__

        typer.echo(f"parsit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what the library does (INFO level)."),
) -> None:
    """Build verified, tokenized Arrow shards from LLaVA-format conversation data."""
    if verbose:
        logging.getLogger("parsit_data").setLevel(logging.INFO)


for _module in (build_cmd, validate_cmd, inspect_cmd, report_cmd, schema_cmd):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_app(app, argv)


if __name__ == "__main__":
    main()
