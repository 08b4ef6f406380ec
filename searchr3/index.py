"""A persistent document index: embeddings of a corpus plus what is needed to search it again.

An index is a folder::

    meta.json    format, model (path/name), fingerprint, prompts, max_length, dim, count, backend
    docs.jsonl   one {"id", "text"} per document, in vector order (text left out with store_text=False)
    index.bin    hnswlib graph (cosine), labels = row numbers      -- backend "hnsw"
    vectors.npy  float32 [count, dim], L2-normalised               -- backend "exact"

Small corpora (below ``exact_threshold`` documents) are searched exactly (one matrix product);
bigger ones with an HNSW graph. Every write replaces the whole folder atomically
(:func:`searchr3.io.atomic_directory`). An index remembers the model's fingerprint; using it with a
different model raises :class:`ModelMismatchError`, because its vectors would be meaningless.

Building encodes in chunks saved under ``<out>.partial/``: an interrupted build resumes there.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .io import atomic_directory, atomic_write_json
from .retrieval import HnswGraph, cached_encode, doc_text, exact_top_k

FORMAT_VERSION = 1
META, DOCS, HNSW_FILE, VECTORS_FILE = "meta.json", "docs.jsonl", "index.bin", "vectors.npy"


class IndexFormatError(ValueError):
    """A missing, corrupted or unusable index folder."""


class ModelMismatchError(IndexFormatError):
    """The index was built by a different model (or prompts) than the one asked to use it."""


class CorpusError(ValueError):
    """A corpus file or folder that cannot be read."""


@dataclass
class Doc:
    id: str
    text: str


@dataclass
class Hit:
    """One search result."""

    rank: int
    id: str
    score: float
    text: str | None = None


@dataclass
class IndexMeta:
    model: str  # what from_pretrained was given ("smollm2" for the built-in model)
    fingerprint: str
    prompts: dict[str, Any]
    max_length: int
    dim: int
    count: int = 0
    backend: str = "exact"  # "exact" or "hnsw"
    exact_threshold: int = 20_000
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    store_text: bool = True
    sources: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION


# ---------------------------------------------------------------------------------------- corpora
def read_corpus(path: str | Path) -> list[Doc]:
    """Documents from a BEIR folder, a ``.jsonl`` file (``_id``/``id`` + ``text`` [+ ``title``]) or a ``.txt`` file (one per line)."""
    path = Path(path)
    if path.is_dir():
        return _read_beir(path)
    if not path.is_file():
        raise CorpusError(f"corpus {path} does not exist")
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        docs = [Doc(str(n), line) for n, line in enumerate(lines, start=1) if line.strip()]
        if not docs:
            raise CorpusError(f"{path}: no documents (every line is blank)")
        return docs
    raise CorpusError(f"{path}: unsupported corpus format (use a BEIR folder, .jsonl or .txt)")


def _read_beir(folder: Path) -> list[Doc]:
    from .data.beir import DataError, available_splits, load_beir

    if not (folder / "corpus.jsonl").is_file():
        raise CorpusError(f"{folder}: not a BEIR folder (no corpus.jsonl)")
    if not (folder / "qrels").is_dir() or not available_splits(folder):
        return _read_jsonl(folder / "corpus.jsonl")  # a corpus without judgments is still a corpus
    try:
        ds = load_beir(folder, available_splits(folder)[0])
    except DataError as e:
        raise CorpusError(str(e)) from None
    return [Doc(did, doc_text(d)) for did, d in ds.corpus.items()]


def _read_jsonl(path: Path) -> list[Doc]:
    docs, seen = [], set()
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{n}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise CorpusError(f"{path}:{n}: expected a JSON object")
            did = rec.get("_id", rec.get("id"))
            if did is None or str(did) == "" or not isinstance(rec.get("text"), str):
                raise CorpusError(f"{path}:{n}: need an '_id' (or 'id') and a string 'text'")
            did = str(did)
            if did in seen:
                raise CorpusError(f"{path}:{n}: duplicate id {did!r}")
            seen.add(did)
            title = rec.get("title")
            if title is not None and not isinstance(title, str):
                raise CorpusError(f"{path}:{n}: 'title' must be a string")
            docs.append(Doc(did, doc_text({"title": title or "", "text": rec["text"]})))
    if not docs:
        raise CorpusError(f"{path}: no documents")
    return docs


# ---------------------------------------------------------------------------------------- the index
class Index:
    """Vectors + documents + metadata. Create with :meth:`new` or :meth:`load`; persist with :meth:`save`."""

    def __init__(self, meta: IndexMeta, docs: list[Doc], vectors: np.ndarray | None = None, graph: Any = None):
        self.meta = meta
        self.docs = docs
        self._vectors = vectors if vectors is not None else np.zeros((0, meta.dim), np.float32)
        self._graph: HnswGraph | None = graph  # when backend == "hnsw"
        self._ids = {d.id for d in docs}

    @classmethod
    def new(cls, model: Any, model_name: str | None, *, exact_threshold: int = 20_000, store_text: bool = True) -> "Index":
        """An empty index for ``model`` (a SearchR3)."""
        from .backbone import model_source

        meta = IndexMeta(
            model=model_source(model_name),
            fingerprint=model.fingerprint(),
            prompts=model.prompts.to_dict(),
            max_length=model.max_length,
            dim=model.hidden_size,
            exact_threshold=exact_threshold,
            store_text=store_text,
        )
        return cls(meta, [])

    def __len__(self) -> int:
        return len(self.docs)

    # -------------------------------------------------------------- adding and searching
    def add(self, docs: Sequence[Doc], vectors: np.ndarray) -> None:
        """Append documents with their (L2-normalised) vectors. Ids must be new."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(docs), self.meta.dim):
            raise ValueError(f"vectors must be [{len(docs)}, {self.meta.dim}], got {list(vectors.shape)}")
        new_ids = [d.id for d in docs]
        if len(set(new_ids)) < len(new_ids):
            raise ValueError("duplicate document ids among the new documents")
        clash = self._ids.intersection(new_ids)
        if clash:
            raise ValueError(f"{len(clash)} document ids are already in the index, e.g. {sorted(clash)[:3]}")
        start = len(self.docs)
        self.docs.extend(Doc(d.id, d.text if self.meta.store_text else "") for d in docs)
        self._ids.update(new_ids)
        self.meta.count = len(self.docs)
        if self.meta.backend == "exact" and self.meta.count >= self.meta.exact_threshold:
            self._graph = self._build_graph(np.concatenate([self._vectors, vectors]))
            self._vectors = np.zeros((0, self.meta.dim), np.float32)
            self.meta.backend = "hnsw"
        elif self.meta.backend == "hnsw":
            self._graph.resize(self.meta.count)
            self._graph.add(vectors, np.arange(start, self.meta.count))
        else:
            self._vectors = np.concatenate([self._vectors, vectors])

    def _build_graph(self, vectors: np.ndarray) -> HnswGraph:
        return HnswGraph.build(vectors, space="cosine", M=self.meta.hnsw_m, ef_construction=self.meta.hnsw_ef_construction)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits (cosine) for each row of ``queries`` ([n, dim] or [dim])."""
        if k < 1:
            raise ValueError("k must be >= 1")
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.meta.dim:
            raise ValueError(f"query vectors have dim {q.shape[1]}, the index has {self.meta.dim}")
        k = min(k, len(self.docs))
        if k == 0:
            return [[] for _ in q]
        if self.meta.backend == "hnsw":
            self._graph.set_ef(max(2 * k, 64))
            labels, scores = self._graph.search(q, k)
        else:
            scores, labels = exact_top_k(q, self._vectors, k)
        return [
            [Hit(r + 1, self.docs[int(i)].id, float(s), self.docs[int(i)].text or None) for r, (i, s) in enumerate(zip(row_l, row_s))]
            for row_l, row_s in zip(labels, scores)
        ]

    def vectors(self) -> np.ndarray:
        """All stored vectors in document order."""
        if self.meta.backend == "hnsw":
            return self._graph.items(np.arange(len(self.docs)))
        return self._vectors

    def check_model(self, model: Any) -> None:
        """Raise :class:`ModelMismatchError` unless ``model`` is the one that built this index."""
        fp = model.fingerprint()
        if fp != self.meta.fingerprint:
            raise ModelMismatchError(
                f"this index was built by model {self.meta.model!r} (fingerprint {self.meta.fingerprint}); "
                f"the model given has fingerprint {fp}. Rebuild the index with this model, or search it with "
                f"the model that built it (leave --model out)."
            )

    # -------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically (replacing any old one)."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            lines = (json.dumps({"id": d.id, "text": d.text} if self.meta.store_text else {"id": d.id}, ensure_ascii=False) for d in self.docs)
            (tmp / DOCS).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            if self.meta.backend == "hnsw":
                self._graph.save(tmp / HNSW_FILE)
            else:
                np.save(tmp / VECTORS_FILE, self._vectors)
            atomic_write_json(tmp / META, asdict(self.meta))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Index":
        """Read an index folder; a missing or inconsistent file raises :class:`IndexFormatError`."""
        path = Path(path)
        if not path.is_dir():
            raise IndexFormatError(f"index {path} does not exist (build it with `searchr3 index build`)")
        meta = _read_meta(path)
        docs = _read_docs(path / DOCS)
        if len(docs) != meta.count:
            raise IndexFormatError(f"{path / DOCS}: {len(docs)} documents but meta.json says {meta.count}")
        if meta.backend == "hnsw":
            if not (path / HNSW_FILE).is_file():
                raise IndexFormatError(f"index {path} is missing {HNSW_FILE}")
            try:
                graph = HnswGraph.load(path / HNSW_FILE, meta.dim, space="cosine", max_elements=meta.count)
            except RuntimeError as e:
                raise IndexFormatError(f"{path / HNSW_FILE} is corrupted: {e}") from None
            if len(graph) != meta.count:
                raise IndexFormatError(f"{path / HNSW_FILE} holds {len(graph)} vectors, expected {meta.count}")
            return cls(meta, docs, graph=graph)
        try:
            vectors = np.load(path / VECTORS_FILE, allow_pickle=False)
        except FileNotFoundError:
            raise IndexFormatError(f"index {path} is missing {VECTORS_FILE}") from None
        except ValueError as e:
            raise IndexFormatError(f"{path / VECTORS_FILE} is corrupted: {e}") from None
        if vectors.shape != (meta.count, meta.dim):
            raise IndexFormatError(f"{path / VECTORS_FILE} has shape {list(vectors.shape)}, expected {[meta.count, meta.dim]}")
        return cls(meta, docs, vectors=vectors.astype(np.float32, copy=False))


def _read_meta(path: Path) -> IndexMeta:
    try:
        raw = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{path} is not an index (no {META})") from None
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{path / META} is corrupted: {e}") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{path / META}: unsupported index format (expected format_version {FORMAT_VERSION})")
    try:
        meta = IndexMeta(**raw)
    except TypeError as e:
        raise IndexFormatError(f"{path / META}: bad fields ({e})") from None
    if meta.backend not in ("exact", "hnsw"):
        raise IndexFormatError(f"{path / META}: unknown backend {meta.backend!r}")
    return meta


def _read_docs(path: Path) -> list[Doc]:
    if not path.is_file():
        raise IndexFormatError(f"index is missing {path.name}")
    docs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rec = json.loads(line)
            docs.append(Doc(str(rec["id"]), rec.get("text", "")))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise IndexFormatError(f"{path}:{n}: corrupted document line") from None
    return docs


# ---------------------------------------------------------------------------------------- building
def encode_documents(
    model: Any, docs: Sequence[Doc], *, batch_size: int = 16, chunk_size: int = 256, work_dir: Path | None = None, show_progress_bar: bool = True
) -> np.ndarray:
    """Encode documents chunk by chunk through :func:`searchr3.retrieval.cached_encode`: with ``work_dir``,
    finished chunks are kept there (by model fingerprint and corpus) and reused on restart."""
    if not docs:
        return np.zeros((0, model.hidden_size), np.float32)
    texts = [d.text for d in docs]

    def encode(positions: list[int]) -> np.ndarray:
        return model.encode_document([texts[i] for i in positions], batch_size=batch_size)

    return cached_encode(encode, [d.id for d in docs], texts, fingerprint=model.fingerprint(), cache_dir=work_dir,
                         chunk_size=chunk_size, show_progress_bar=show_progress_bar).embeddings


def build_index(
    model: Any,
    docs: Sequence[Doc],
    out: str | Path,
    *,
    model_name: str | None = None,
    base: Index | None = None,
    vectors: np.ndarray | None = None,
    batch_size: int = 16,
    exact_threshold: int = 20_000,
    store_text: bool = True,
    sources: Iterable[str] = (),
    show_progress_bar: bool = True,
) -> Index:
    """Encode ``docs`` (unless ``vectors`` are given) into a new index, or onto ``base``, and save it to ``out``."""
    out = Path(out)
    if base is None:
        index = Index.new(model, model_name, exact_threshold=exact_threshold, store_text=store_text)
    else:
        base.check_model(model)
        index = base
    ids = [d.id for d in docs]
    if len(set(ids)) < len(ids):
        raise ValueError("the corpus has duplicate document ids")
    clash = {d.id for d in index.docs}.intersection(ids)
    if clash:  # checked before encoding, so a mistake costs nothing
        raise ValueError(f"{len(clash)} document ids are already in the index, e.g. {sorted(clash)[:3]}")
    partial = out.with_name(out.name + ".partial")
    if vectors is None:
        vectors = encode_documents(model, docs, batch_size=batch_size, work_dir=partial, show_progress_bar=show_progress_bar)
    index.add(docs, vectors)
    index.meta.sources.extend(str(s) for s in sources)
    index.save(out)
    shutil.rmtree(partial, ignore_errors=True)
    return index
