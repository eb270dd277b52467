"""The ``parsit-train`` command line (a thin typer shell over parsit_train)."""
