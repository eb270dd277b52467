"""The one error type the CLI turns into a message and an exit code."""

from __future__ import annotations


class ParsitError(Exception):
    """A problem with the user's input or configuration: the message says what to do.

    Raised by library code; the CLIs print ``error: <message>`` and exit with code 2. Anything else
    that escapes is a bug and keeps its traceback.
    """
