"""BM25, the lexical retriever: baseline in evaluation and hard-negative miner for training.

It lives in :mod:`searchr3.data` because training sources (:mod:`searchr3.data.sources`) use it, and
data must not import from the layers above it. PyStemmer is a hard dependency: the baseline is always
stemmed, never silently unstemmed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import Stemmer

from searchr3.data.beir import doc_text

__all__ = ["BM25Retriever"]


class BM25Retriever:
    """Lexical BM25 over a BEIR corpus (Lucene scoring, English stopwords, Snowball stemming).

    ``k1=1.2, b=0.75`` are the Lucene/Elasticsearch defaults used by BEIR's BM25 baseline.
    """

    def __init__(self, *, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.stemmer = Stemmer.Stemmer("english").stemWords
        self.doc_ids: list[str] = []
        self._bm25: Any = None

    def _tokenize(self, texts: list[str], *, ids: bool, show_progress_bar: bool) -> Any:
        import bm25s

        return bm25s.tokenize(
            texts,
            stopwords="en",
            stemmer=self.stemmer,
            return_ids=ids,
            show_progress=False,  # bm25s draws one bar per sub-step; BM25 takes well under a second here
        )

    def index(self, corpus: Mapping[str, Mapping[str, str]], *, show_progress_bar: bool = False) -> None:
        """Build the index over ``corpus`` (doc id -> {"title", "text"})."""
        import bm25s

        if not corpus:
            raise ValueError("cannot index an empty corpus")
        self.doc_ids = list(corpus)
        tokens = self._tokenize(
            [doc_text(corpus[d]) for d in self.doc_ids],
            ids=True,
            show_progress_bar=show_progress_bar,
        )
        self._bm25 = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        self._bm25.index(tokens, show_progress=False)

    def search(self, queries: Mapping[str, str], k: int = 100, *, show_progress_bar: bool = False) -> dict[str, dict[str, float]]:
        """Top-``k`` run ``{qid: {doc id: score}}``, leaving out documents that score 0."""
        if self._bm25 is None:
            raise RuntimeError("call index() before search()")
        qids = list(queries)
        if not qids:
            return {}
        tokens = self._tokenize([queries[q] for q in qids], ids=False, show_progress_bar=show_progress_bar)
        k = min(k, len(self.doc_ids))
        docs, scores = self._bm25.retrieve(tokens, k=k, show_progress=False)
        return {
            qid: {self.doc_ids[d]: float(s) for d, s in zip(row_docs, row_scores, strict=True) if s > 0}
            for qid, row_docs, row_scores in zip(qids, docs.tolist(), scores.tolist(), strict=True)
        }
