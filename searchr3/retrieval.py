"""Retrieval, written once: exact top-k, the hnswlib graph, the corpus-embedding cache, document text.

Evaluation (:mod:`searchr3.evaluation`), the persistent index (:mod:`searchr3.index`), the RL
environment (:mod:`searchr3.env`), the MTEB adapter (:mod:`searchr3.adapters`) and both trainers
use these and nothing else:

* :func:`exact_top_k` / :func:`dense_retrieve`: exact top-``k`` by dot product (cosine for
  L2-normalised rows). Our own rather than sentence-transformers' ``semantic_search``: that one
  returns per-query lists of dicts built in Python, while the index, the environment and the MTEB
  adapter need arrays of positions, the adapter also per-query candidate subsets, and evaluation
  scans memory-mapped corpora in chunks; one array-in/array-out function serves all of them.
* :class:`HnswGraph`: hnswlib behind one interface; scores are similarities (``1 - distance``) in
  both spaces used (``cosine`` for indexes, ``ip`` in the environment).
* :func:`cached_encode`: corpus embeddings stored by (encoder fingerprint, document ids, texts), so
  no model encodes the same corpus twice; optionally in resumable chunks. A damaged entry is
  recomputed with a warning.
* :func:`doc_text`: a document as one string. Its one implementation lives with the BEIR loader
  (:mod:`searchr3.data.beir`, the lowest layer, which training sources also use) and is re-exported
  here; :mod:`searchr3.index` reads ``.jsonl`` corpora with it too.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.beir import doc_text
from .io import atomic_write_bytes

__all__ = [
    "CacheWarning",
    "CorpusEmbeddings",
    "HnswGraph",
    "Run",
    "cached_encode",
    "corpus_key",
    "default_corpus_cache",
    "dense_retrieve",
    "doc_text",
    "exact_top_k",
]

Run = dict[str, dict[str, float]]  # query id -> {doc id: score}


# ---------------------------------------------------------------------------------------- exact
def exact_top_k(
    queries: Any,
    docs: Any,
    k: int,
    *,
    doc_chunk_size: int = 16384,
    query_chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, positions)``, each ``[n_queries, min(k, n_docs)]``, best first, by dot product.

    Documents are scanned in chunks and merged, so peak extra memory is about
    ``query_chunk_size * (doc_chunk_size + 2k)`` floats and ``docs`` may be memory-mapped.
    """
    import torch

    if queries.ndim != 2 or docs.ndim != 2:
        raise ValueError("query and document embeddings must be 2-D")
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"dimension mismatch: queries {queries.shape[1]}, docs {docs.shape[1]}")
    if k < 1:
        raise ValueError("k must be >= 1")
    n_docs = docs.shape[0]
    k = min(k, n_docs)
    all_scores = np.zeros((queries.shape[0], k), np.float32)
    all_idx = np.zeros((queries.shape[0], k), np.int64)
    if k == 0:
        return all_scores, all_idx
    for q0 in range(0, queries.shape[0], query_chunk_size):
        q = _as_tensor(queries[q0 : q0 + query_chunk_size])
        best_scores = torch.full((q.shape[0], 0), float("-inf"))
        best_idx = torch.zeros((q.shape[0], 0), dtype=torch.long)
        for d0 in range(0, n_docs, doc_chunk_size):
            scores = q @ _as_tensor(docs[d0 : d0 + doc_chunk_size]).T
            chunk_scores, chunk_idx = scores.topk(min(k, scores.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
            merged_idx = torch.cat([best_idx, chunk_idx + d0], dim=1)
            best_scores, pos = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_idx = merged_idx.gather(1, pos)
        all_scores[q0 : q0 + q.shape[0]] = best_scores.numpy()
        all_idx[q0 : q0 + q.shape[0]] = best_idx.numpy()
    return all_scores, all_idx


def dense_retrieve(
    query_emb: Any,
    doc_emb: Any,
    doc_ids: Sequence[str],
    query_ids: Sequence[str],
    k: int = 100,
    *,
    doc_chunk_size: int = 16384,
    query_chunk_size: int = 1024,
) -> Run:
    """:func:`exact_top_k` as a run ``{query id: {doc id: score}}``."""
    if query_emb.ndim == 2 and doc_emb.ndim == 2 and (query_emb.shape[0] != len(query_ids) or doc_emb.shape[0] != len(doc_ids)):
        raise ValueError("embedding rows and ids differ in number")
    scores, idx = exact_top_k(query_emb, doc_emb, k, doc_chunk_size=doc_chunk_size, query_chunk_size=query_chunk_size)
    return {
        qid: {doc_ids[i]: float(s) for i, s in zip(row_idx.tolist(), row_scores.tolist(), strict=True)}
        for qid, row_idx, row_scores in zip(query_ids, idx, scores, strict=True)
    }


def as_numpy(x: Any) -> np.ndarray:
    """float32 numpy rows from a numpy array or a torch tensor."""
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _as_tensor(x: Any):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


# ---------------------------------------------------------------------------------------- hnswlib
class HnswGraph:
    """An hnswlib graph of labelled vectors. ``space`` is ``"cosine"`` or ``"ip"``; :meth:`search`
    returns similarities (``1 - distance``) in both. Adding an existing label replaces its vector."""

    def __init__(
        self,
        dim: int,
        *,
        space: str = "cosine",
        max_elements: int = 1,
        M: int = 16,
        ef_construction: int = 200,
        seed: int = 100,
        _index: Any = None,
    ) -> None:
        import hnswlib

        self.dim, self.space = dim, space
        if _index is None:
            _index = hnswlib.Index(space=space, dim=dim)
            _index.init_index(max_elements=max(max_elements, 1), ef_construction=ef_construction, M=M, random_seed=seed)
        self._index = _index

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        space: str = "cosine",
        M: int = 16,
        ef_construction: int = 200,
        seed: int = 100,
        num_threads: int = -1,
    ) -> "HnswGraph":
        """A graph of ``vectors`` labelled by row number."""
        g = cls(vectors.shape[1], space=space, max_elements=len(vectors), M=M, ef_construction=ef_construction, seed=seed)
        g.add(vectors, np.arange(len(vectors)), num_threads=num_threads)
        return g

    @classmethod
    def load(cls, path: str | Path, dim: int, *, space: str = "cosine", max_elements: int = 1) -> "HnswGraph":
        """Read a saved graph; a damaged file raises ``RuntimeError`` (hnswlib's)."""
        import hnswlib

        index = hnswlib.Index(space=space, dim=dim)
        index.load_index(str(path), max_elements=max(max_elements, 1))
        return cls(dim, space=space, _index=index)

    def save(self, path: str | Path) -> None:
        self._index.save_index(str(path))

    def __len__(self) -> int:
        return self._index.get_current_count()

    def labels(self) -> list[int]:
        return list(self._index.get_ids_list())

    def resize(self, max_elements: int) -> None:
        self._index.resize_index(max_elements)

    def set_ef(self, ef: int) -> None:
        self._index.set_ef(ef)

    def add(self, vectors: np.ndarray, labels: Sequence[int] | np.ndarray, *, num_threads: int = -1) -> None:
        self._index.add_items(
            np.ascontiguousarray(vectors, dtype=np.float32),
            np.asarray(labels, dtype=np.int64),
            replace_deleted=False,
            num_threads=num_threads,
        )

    def items(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.asarray(self._index.get_items(list(labels)), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, *, num_threads: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """``(labels int64, similarities float32)``, each ``[n, k]``, best first."""
        labels, dist = self._index.knn_query(np.ascontiguousarray(queries, dtype=np.float32), k=k, num_threads=num_threads)
        return labels.astype(np.int64), (1.0 - dist).astype(np.float32)


# ---------------------------------------------------------------------------------------- cache
class CacheWarning(UserWarning):
    """A damaged cache entry was found (and is recomputed)."""


@dataclass
class CorpusEmbeddings:
    """Document embeddings of a corpus, reusable across query-side settings of one encoder."""

    doc_ids: list[str]
    embeddings: np.ndarray  # (len(doc_ids), dim)
    seconds: float  # wall time it took to encode them (the original time when read from the cache)


def default_corpus_cache() -> Path:
    """The on-disk corpus-embedding cache that evaluation, the pipeline and ``train rl --eval`` share."""
    from .backbone import cache_dir

    return cache_dir() / "corpus-embeddings"


def corpus_key(fingerprint: str, doc_ids: Sequence[str], texts: Sequence[str]) -> str:
    """The cache key of (encoder fingerprint, ids, texts)."""
    h = hashlib.sha256(str(fingerprint).encode())
    for d, t in zip(doc_ids, texts, strict=True):
        h.update(d.encode() + b"\0" + t.encode() + b"\0")
    return h.hexdigest()[:24]


def _npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _read_entry(path: Path, rows: int) -> tuple[np.ndarray, float] | None:
    try:
        with np.load(path) as z:
            emb, seconds = np.asarray(z["embeddings"], dtype=np.float32), float(z["seconds"])
        if emb.ndim != 2 or emb.shape[0] != rows or not np.isfinite(emb).all():
            raise ValueError(f"shape {emb.shape} or non-finite values, expected {rows} finite rows")
    except (OSError, ValueError, KeyError, EOFError) as e:
        warnings.warn(f"corpus-embedding cache entry {path} is damaged ({e}); recomputing it", CacheWarning, stacklevel=3)
        return None
    return emb, seconds


def cached_encode(
    encode: Callable[[list[int]], Any],
    doc_ids: Sequence[str],
    texts: Sequence[str],
    *,
    fingerprint: str | None,
    cache_dir: str | Path | None,
    chunk_size: int = 0,
    show_progress_bar: bool = False,
    write: bool = True,
) -> CorpusEmbeddings:
    """Embeddings of ``texts`` (``encode(positions) -> rows``), through the cache in ``cache_dir``.

    The entry is ``<cache_dir>/<corpus_key>.npz``; without ``cache_dir`` or a ``fingerprint`` (an
    encoder that cannot name its weights) nothing is cached. With ``chunk_size``, the corpus is
    encoded in chunks kept under ``<cache_dir>/<key>.partial/`` until the entry is complete, so an
    interrupted encode resumes; without it, ``encode`` sees the whole corpus in one call.
    ``write=False`` reads the cache but leaves writing it to another process (the ranks of a
    distributed run other than rank 0).
    """
    doc_ids, n = list(doc_ids), len(texts)
    if len(doc_ids) != n:
        raise ValueError(f"{len(doc_ids)} ids for {n} texts")
    key = corpus_key(fingerprint, doc_ids, texts) if cache_dir is not None and fingerprint is not None else None
    entry = Path(cache_dir) / f"{key}.npz" if key else None
    if entry is not None and entry.is_file():
        hit = _read_entry(entry, n)
        if hit is not None:
            return CorpusEmbeddings(doc_ids, *hit)
    start = time.perf_counter()
    if not chunk_size or n <= chunk_size:
        emb = as_numpy(encode(list(range(n))))
    else:
        from tqdm.auto import tqdm

        partial = Path(cache_dir) / f"{key}.partial" if entry is not None else None
        parts = []
        for s in tqdm(range(0, n, chunk_size), desc="encode documents", unit="chunk", disable=not show_progress_bar):
            chunk_file = partial / f"chunk-{s:09d}.npy" if partial is not None else None
            if chunk_file is not None and chunk_file.is_file():
                try:
                    parts.append(np.load(chunk_file))
                    continue
                except (OSError, ValueError, EOFError) as e:
                    warnings.warn(f"cached chunk {chunk_file} is damaged ({e}); recomputing it", CacheWarning, stacklevel=2)
            part = as_numpy(encode(list(range(s, min(s + chunk_size, n)))))
            if chunk_file is not None and write:
                atomic_write_bytes(chunk_file, _npy_bytes(part))
            parts.append(part)
        emb = np.concatenate(parts)
    seconds = time.perf_counter() - start
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"expected {n} document embeddings as a 2-D array, got shape {emb.shape}")
    if entry is not None and write:
        atomic_write_bytes(entry, _npz_bytes(embeddings=emb, seconds=np.float64(seconds)))
        shutil.rmtree(entry.with_suffix(".partial"), ignore_errors=True)
    return CorpusEmbeddings(doc_ids, emb, seconds)
