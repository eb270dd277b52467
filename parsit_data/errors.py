"""The one error type the CLIs turn into a message and an exit code, and the runner that does it.

Both console scripts (``parsit-data`` and ``parsit-train``) run their typer app through :func:`run_app`,
so the trainer shares this rule without importing the build stage's CLI layer. typer and rich are
imported only when a CLI runs, so library code that raises :class:`ParsitError` does not load them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


class ParsitError(Exception):
    """A problem with the user's input or configuration: the message says what to do.

    Raised by library code; the CLIs print ``error: <message>`` and exit with code 2. Anything else
    that escapes is a bug and keeps its traceback.
    """


def run_app(app: "typer.Typer", argv: list[str] | None = None) -> None:
    """Run a typer app; a :class:`ParsitError` becomes one line ``error: ...`` on stderr and exit code 2
    (bad input or configuration, never a traceback)."""
    try:
        app(args=argv, standalone_mode=True)
    except ParsitError as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)  # one line, unwrapped
        sys.exit(2)
