"""``parsit-data``: one typer app; each subcommand lives in its own module and calls the library.

This is the one place that turns a :class:`ParsitError` into ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from parsit_data.errors import ParsitError

app = typer.Typer(
    name="parsit-data",
    help="Build verified, tokenized Arrow shards from LLaVA-format conversation data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


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


def _register() -> None:
    from parsit_data.cli import build as build_cmd

    app.command("build")(build_cmd.build_command)
    for mod in ("validate", "inspect", "report", "schema"):
        # Subcommands added by later work register themselves the same way.
        name = f"parsit_data.cli.{mod}"
        try:
            m = __import__(name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        m.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, standalone_mode=True)
    except ParsitError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
