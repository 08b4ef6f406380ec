"""Training curves from a JSONL log, drawn with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

import math
import os
from io import BytesIO
from pathlib import Path
from typing import Sequence

from .io import atomic_write_bytes


def read_log(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSONL log (:func:`searchr3.runs.read_rows`: only a torn last line is dropped)."""
    from .runs import read_rows

    return read_rows(path)


def plot_curves(
    jsonl_log_path: str | os.PathLike, png_path: str | os.PathLike, keys: Sequence[str | Sequence[str]], *, x: str = "step"
) -> Path:
    """Plot each of ``keys`` against ``x`` from a JSONL log into a PNG, atomically: one panel per entry,
    where an entry is a key or a tuple of keys drawn together in one panel (with a legend).

    Rows without a key (or with a non-finite value) are skipped for that key, so training-loss rows
    and periodic evaluation rows can share one log. Raises ``ValueError`` if no key has any value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not keys:
        raise ValueError("plot_curves needs at least one key")
    rows = read_log(jsonl_log_path)
    panels = []
    for entry in keys:
        group = (entry,) if isinstance(entry, str) else tuple(entry)
        lines = {}
        for key in group:
            pts = [(r[x], r[key]) for r in rows if x in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if pts:
                lines[key] = pts
        if lines:
            panels.append(lines)
    if not panels:
        raise ValueError(f"{jsonl_log_path}: none of {list(keys)} has a value against {x!r}")
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, lines in zip(axes[:, 0], panels):
        for key, pts in lines.items():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        if len(lines) > 1:
            ax.legend(fontsize=7)
        else:
            ax.set_ylabel(next(iter(lines)))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(x)
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
    return Path(png_path)
