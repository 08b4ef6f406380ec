"""Typer commands, one module per command; wired together in :mod:`searchr3.cli`, whose ``main`` turns
every usage error and every known bad-input error into one ``error:`` line and exit code 2.

Each command module names where its option defaults come from (``DEFAULTS``: option -> (object,
parameter), a config dataclass or the function the option feeds) and which options exist only on the
command line (``CLI_ONLY``); ``tests/test_cli.py`` checks every option against that table, so a
default is written in one place and the command line cannot drift from it.
"""

from __future__ import annotations

from typing import Any, Optional, TypeVar

import typer

T = TypeVar("T")


def precision_option() -> Any:
    """``--bf16/--fp32``, unset (None) meaning bf16 only where the device computes it natively."""
    return typer.Option(
        None,
        "--bf16/--fp32",
        help="Forward passes in bf16 autocast or fp32 (default: bf16 on a CUDA GPU or a CPU with AVX-512 bf16 / AMX, fp32 elsewhere, where emulated bf16 is slower).",
        show_default=False,
    )


Precision = Optional[bool]


class UsageError(ValueError):
    """Bad command-line input that a command finds itself (a clash, an empty query, a bad setting)."""


def build_config(cls: type[T], **kwargs: Any) -> T:
    """``cls(**kwargs)``; a setting the config refuses (``ValueError``) becomes a :class:`UsageError`."""
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise UsageError(str(e)) from None
