"""``searchr3 search IDX "query"``: ranked hits from an index."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from searchr3.commands import Precision, precision_option

DEFAULTS = {
    "k": ("searchr3.search:Searcher.search_many", "k"),
    "reasoning": ("searchr3.search:Searcher.search_many", "reasoning"),
    "mix_weight": ("searchr3.search:Searcher.search_many", "mix_weight"),
    "model": ("searchr3.search:Searcher", "model"),
    "bf16": ("searchr3.search:Searcher", "bf16"),
}
CLI_ONLY = {"index_dir", "queries", "as_json", "width"}


class QueryMode(str, Enum):
    off = "off"
    on = "on"
    mix = "mix"


def search(
    index_dir: Path = typer.Argument(..., help="Index folder (from `searchr3 index build`)."),
    queries: List[str] = typer.Argument(..., help="One or more queries."),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="Hits per query."),
    reasoning: QueryMode = typer.Option(
        QueryMode.off,
        "--reasoning",
        help="Query encoding: direct (off), the model reasons first (on), or mix (--mix-weight x direct + the rest x reasoning).",
    ),
    mix_weight: float = typer.Option(
        0.6, "--mix-weight", min=0.0, max=1.0, help="mix: weight of the direct embedding (the reasoning one gets 1 - w)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model to use; must be the one that built the index (default: it)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per query, one per line)."),
    width: int = typer.Option(100, "--width", min=1, help="Characters of document text to show."),
    bf16: Precision = precision_option(),
) -> None:
    """Search an index and print ranked hits (and the model's reasoning with --reasoning on or mix)."""
    import json
    from dataclasses import asdict

    from searchr3.commands import UsageError
    from searchr3.search import Searcher

    if not all(q.strip() for q in queries):
        raise UsageError("a query is empty")
    searcher = Searcher(index_dir, model, bf16=bf16)  # IndexFormatError, ModelMismatchError: bad input
    for res in searcher.search_many(list(queries), k=k, reasoning=reasoning.value, mix_weight=mix_weight):
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "query": res.query,
                        "reasoning": res.reasoning,
                        "truncated": res.truncated,
                        "hits": [asdict(h) for h in res.hits],
                    },
                    ensure_ascii=False,
                )
            )
            continue
        typer.secho(f"query: {res.query}", bold=True)
        if res.truncated:
            typer.echo(f"note: the query was cut at the index's max_length ({searcher.model.max_length} tokens)")
        if res.reasoning is not None:
            typer.echo(f"reasoning: {res.reasoning}")
        for h in res.hits:
            text = " ".join((h.text or "").split())
            text = text[:width] + ("…" if len(text) > width else "")
            typer.echo(f"{h.rank:>3}. {h.score:.4f}  {h.id}  {text}")
