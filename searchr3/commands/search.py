"""``searchr3 search IDX "query"``: ranked hits from an index."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from searchr3.commands import Precision, precision_option

DEFAULTS = {
    "k": ("searchr3.search:Searcher.search_many", "k"),
    "reasoning": ("searchr3.search:Searcher.search_many", "reasoning"),
    "model": ("searchr3.search:Searcher", "model"),
    "bf16": ("searchr3.search:Searcher", "bf16"),
}
CLI_ONLY = {"index_dir", "queries", "as_json", "width"}


def search(
    index_dir: Path = typer.Argument(..., help="Index folder (from `searchr3 index build`)."),
    queries: List[str] = typer.Argument(..., help="One or more queries."),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="Hits per query."),
    reasoning: bool = typer.Option(False, "--reasoning", help="Let the model reason about the query before embedding it."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model to use; must be the one that built the index (default: it)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per query, one per line)."),
    width: int = typer.Option(100, "--width", min=1, help="Characters of document text to show."),
    bf16: Precision = precision_option(),
) -> None:
    """Search an index and print ranked hits (and the model's reasoning with --reasoning)."""
    import json
    from dataclasses import asdict

    from searchr3.commands import UsageError
    from searchr3.search import Searcher

    if not all(q.strip() for q in queries):
        raise UsageError("a query is empty")
    searcher = Searcher(index_dir, model, bf16=bf16)  # IndexFormatError, ModelMismatchError: bad input
    for res in searcher.search_many(list(queries), k=k, reasoning=reasoning):
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
