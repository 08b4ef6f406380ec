"""Typer commands, one module per command; wired together in :mod:`searchr3.cli`, whose ``main`` turns
every usage error and every known bad-input error into one ``error:`` line and exit code 2.

Each command module names where its option defaults come from (``DEFAULTS``: option -> (object,
parameter), a config dataclass or the function the option feeds) and which options exist only on the
command line (``CLI_ONLY``); ``tests/test_cli.py`` checks every option against that table, so a
default is written in one place and the command line cannot drift from it.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


class UsageError(ValueError):
    """Bad command-line input that a command finds itself (a clash, an empty query, a bad setting)."""


def build_config(cls: type[T], **kwargs: Any) -> T:
    """``cls(**kwargs)``; a setting the config refuses (``ValueError``) becomes a :class:`UsageError`."""
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise UsageError(str(e)) from None
