"""Search an index from Python: ``Searcher(index_dir).search("query", k=10, reasoning="mix")``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .index import Hit, Index
from .model import MIX_WEIGHT, query_mode


@dataclass
class SearchResult:
    """The hits for one query, plus the model's reasoning when it reasoned first."""

    query: str
    hits: list[Hit]
    reasoning: str | None = None
    truncated: bool = False  # the query was cut at the model's max_length


class Searcher:
    """An index plus the model that built it.

    ``model`` may be a loaded :class:`~searchr3.SearchR3`, a path, or ``None`` (load the model named
    in the index). Either way the model's fingerprint must match the index's.
    """

    def __init__(self, index_dir: str | Path, model: Any = None, *, bf16: bool | None = None) -> None:
        from .model import SearchR3

        self.index = Index.load(index_dir)
        meta = self.index.meta
        if model is None or isinstance(model, (str, Path)):
            name = meta.model if model is None else str(model)
            model = SearchR3.from_pretrained(name, prompts=meta.prompts, max_length=meta.max_length, bf16=bf16)
        self.index.check_model(model)
        self.model = model

    def search(
        self, query: str, k: int = 10, reasoning: bool | str = "off", mix_weight: float = MIX_WEIGHT, **generation: Any
    ) -> list[Hit]:
        """Top-``k`` hits for one query."""
        return self.search_many([query], k=k, reasoning=reasoning, mix_weight=mix_weight, **generation)[0].hits

    def search_many(
        self,
        queries: list[str],
        k: int = 10,
        reasoning: bool | str = "off",
        mix_weight: float = MIX_WEIGHT,
        batch_size: int = 8,
        **generation: Any,
    ) -> list[SearchResult]:
        """Search several queries in one batch. ``reasoning``: the query mode ("off", "on", "mix" or a
        bool, as :meth:`~searchr3.SearchR3.encode_query`); with "on" or "mix" each result carries the
        model's reasoning. ``mix_weight``: the direct embedding's weight in "mix"."""
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries must be a list of strings")
        mode = query_mode(reasoning)
        if not queries:
            return []
        cut = self.model.truncated(queries, "query", mode != "off")
        emb, texts = self.model.encode_query_with_reasoning(
            queries, mode, batch_size=batch_size, mix_weight=mix_weight, **generation
        )
        texts = texts or [None] * len(queries)
        return [SearchResult(q, hits, t, c) for q, hits, t, c in zip(queries, self.index.search(emb, k), texts, cut)]
