"""Typer commands, one module per command group; wired together in :mod:`searchr3.cli`."""
