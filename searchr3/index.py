"""A persistent document index: embeddings of a corpus plus what is needed to search it again.

An index is a folder::

    meta.json    format, model (path/name), fingerprint, prompts, max_length, dim, count, backend
    docs.jsonl   one {"id", "text"} per document, in vector order (text left out with store_text=False)
    index.bin    hnswlib graph (cosine), labels = row numbers      -- backend "hnsw"
    vectors.npy  float32 [count, dim], L2-normalised               -- backend "exact"
    index.faiss  FAISS int8 index (inner product)                  -- compact "int8" (either backend)

Small corpora (below ``exact_threshold`` documents) are searched exactly (one matrix product);
bigger ones with an HNSW graph. ``compact="int8"`` stores 1 byte per dimension instead of 4 through
FAISS's scalar quantizer (flat below the threshold, HNSW above), a quarter of the memory.

Loading checks every file before it reaches a native library (hnswlib would crash the process on
a corrupted ``index.bin``): the graph's header and link lists are parsed and bounds-checked, the FAISS
file's SHA-256 must match the one in ``meta.json``, vectors must be finite float32 of the right shape. Every write replaces the whole folder atomically
(:func:`searchr3.io.atomic_directory`). An index remembers the model's fingerprint; using it with a
different model raises :class:`ModelMismatchError`, because its vectors would be meaningless.

Building encodes in chunks saved under ``<out>.partial/``: an interrupted build resumes there.
"""

from __future__ import annotations

import hashlib
import math
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .data.beir import DataError
from .io import atomic_directory, atomic_write_json
from .retrieval import HnswGraph, cached_encode, doc_text, exact_top_k

FORMAT_VERSION = 1
META, DOCS, HNSW_FILE, VECTORS_FILE, FAISS_FILE = "meta.json", "docs.jsonl", "index.bin", "vectors.npy", "index.faiss"
COMPACT = ("none", "int8")


# DataError (a ValueError) is what the command line turns into one `error:` line and exit code 2.
class IndexFormatError(DataError):
    """A missing, corrupted or unusable index folder."""


class ModelMismatchError(IndexFormatError):
    """The index was built by a different model (or prompts) than the one asked to use it."""


class CorpusError(DataError):
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
    compact: str = "none"  # "none" (float32) or "int8" (FAISS scalar quantizer)
    truncated: int = 0  # documents cut at max_length when they were encoded
    checksums: dict[str, str] = field(default_factory=dict)  # sha256 of files handed to native readers


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
        lines = _read_text(path).splitlines()
        docs = [Doc(str(n), line) for n, line in enumerate(lines, start=1) if line.strip()]
        if not docs:
            raise CorpusError(f"{path}: no documents (every line is blank)")
        return docs
    raise CorpusError(f"{path}: unsupported corpus format (use a BEIR folder, .jsonl or .txt)")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CorpusError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


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
    for n, line in enumerate(_read_text(path).splitlines(), start=1):  # decoded whole: a bad byte is one clear error
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
        try:
            rec["text"].encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate escape ("\ud800") is valid JSON but not text
            raise CorpusError(
                f"{path}:{n}: the text holds a lone surrogate ({e.object[e.start]!r}), which is not valid Unicode text"
            ) from None
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

    def __init__(
        self, meta: IndexMeta, docs: list[Doc], vectors: np.ndarray | None = None, graph: Any = None, faiss_index: Any = None
    ):
        self.meta = meta
        self.docs = docs
        self._vectors = vectors if vectors is not None else np.zeros((0, meta.dim), np.float32)
        self._graph: HnswGraph | None = graph  # when backend == "hnsw" (float32)
        self._faiss = faiss_index  # faiss index when compact == "int8"
        self._ids = {d.id for d in docs}

    @classmethod
    def new(
        cls, model: Any, model_name: str | None, *, exact_threshold: int = 20_000, store_text: bool = True, compact: str = "none"
    ) -> "Index":
        """An empty index for ``model`` (a SearchR3); ``compact="int8"`` stores 1 byte per dimension (FAISS)."""
        from .backbone import model_source

        if compact not in COMPACT:
            raise ValueError(f"compact must be one of {COMPACT}, got {compact!r}")
        if compact != "none":
            _import_faiss()  # fail before any encoding if FAISS is missing
        meta = IndexMeta(
            model=model_source(model_name),
            fingerprint=model.fingerprint(),
            prompts=model.prompts.to_dict(),
            max_length=model.max_length,
            dim=model.hidden_size,
            exact_threshold=exact_threshold,
            store_text=store_text,
            compact=compact,
        )
        return cls(meta, [])

    def __len__(self) -> int:
        return len(self.docs)

    def memory_bytes(self) -> int:
        """Bytes the vectors (and graph) take, as serialised: what search holds in memory besides the texts."""
        if self._faiss is not None:
            return int(_import_faiss().serialize_index(self._faiss).nbytes)
        if self._graph is not None:
            m = self.meta
            return ((2 * m.hnsw_m * 4 + 4) + 4 * m.dim + 8) * len(self.docs)  # level-0 links + vector + label (hnswlib's layout)
        return int(self._vectors.nbytes)

    # -------------------------------------------------------------- adding and searching
    def add(self, docs: Sequence[Doc], vectors: np.ndarray) -> None:
        """Append documents with their (L2-normalised) vectors. Ids must be new."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(docs), self.meta.dim):
            raise ValueError(f"vectors must be [{len(docs)}, {self.meta.dim}], got {list(vectors.shape)}")
        finite = np.isfinite(vectors).all(1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"the vector of document {docs[bad].id!r} is not finite (NaN or inf): refusing to index it")
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
        crossing = self.meta.backend == "exact" and self.meta.count >= self.meta.exact_threshold
        if self.meta.compact == "int8":
            # The quantizer's per-dimension ranges are trained on what is there: a flat index is rebuilt on
            # every add (cheap below the threshold), so new vectors outside the old ranges are not clipped.
            if crossing or self._faiss is None or self.meta.backend == "exact":
                old = (
                    self._faiss.reconstruct_n(0, start)
                    if self._faiss is not None and start
                    else np.zeros((0, self.meta.dim), np.float32)
                )
                if crossing:
                    self.meta.backend = "hnsw"
                self._faiss = self._build_faiss(np.concatenate([old, vectors]))
            else:
                self._faiss.add(vectors)
        elif crossing:
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

    def _build_faiss(self, vectors: np.ndarray):
        """int8 scalar quantizer (per-dimension ranges trained on ``vectors``): flat, or HNSW above the threshold."""
        faiss = _import_faiss()
        m = self.meta
        if m.backend == "hnsw":
            idx = faiss.IndexHNSWSQ(m.dim, faiss.ScalarQuantizer.QT_8bit, m.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = m.hnsw_ef_construction
        else:
            idx = faiss.IndexScalarQuantizer(m.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        idx.train(vectors)
        idx.add(vectors)
        return idx

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits (cosine) for each row of ``queries`` ([n, dim] or [dim])."""
        if k < 1:
            raise ValueError("k must be >= 1")
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.meta.dim:
            raise ValueError(f"query vectors have dim {q.shape[1]}, the index has {self.meta.dim}")
        if not np.isfinite(q).all():
            raise ValueError("query vectors must be finite (no NaN or inf)")
        k = min(k, len(self.docs))
        if k == 0:
            return [[] for _ in q]
        if self._faiss is not None:
            if self.meta.backend == "hnsw":
                self._faiss.hnsw.efSearch = max(2 * k, 64)
            scores, labels = self._faiss.search(np.ascontiguousarray(q), k)
        elif self.meta.backend == "hnsw":
            self._graph.set_ef(max(2 * k, 64))
            labels, scores = self._graph.search(q, k)
        else:
            scores, labels = exact_top_k(q, self._vectors, k)
        return [
            [
                Hit(r + 1, self.docs[int(i)].id, float(s), self.docs[int(i)].text or None)
                for r, (i, s) in enumerate(zip(row_l, row_s))
                if i >= 0
            ]
            for row_l, row_s in zip(labels, scores)
        ]

    def vectors(self) -> np.ndarray:
        """All stored vectors in document order (for an int8 index: decoded, so approximate)."""
        if self._faiss is not None:
            return self._faiss.reconstruct_n(0, len(self.docs))
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
            lines = (
                json.dumps({"id": d.id, "text": d.text} if self.meta.store_text else {"id": d.id}, ensure_ascii=False)
                for d in self.docs
            )
            (tmp / DOCS).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            self.meta.checksums = {}
            if self._faiss is not None:
                data = _import_faiss().serialize_index(self._faiss).tobytes()
                (tmp / FAISS_FILE).write_bytes(data)
                self.meta.checksums[FAISS_FILE] = hashlib.sha256(data).hexdigest()
            elif self.meta.backend == "hnsw":
                self._graph.save(tmp / HNSW_FILE)
            else:
                np.save(tmp / VECTORS_FILE, self._vectors)
            atomic_write_json(tmp / META, asdict(self.meta))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Index":
        """Read an index folder; a missing, inconsistent or corrupted file raises :class:`IndexFormatError`."""
        path = Path(path)
        if not path.is_dir():
            raise IndexFormatError(f"index {path} does not exist (build it with `searchr3 index build`)")
        meta = _read_meta(path)
        docs = _read_docs(path / DOCS)
        if len(docs) != meta.count:
            raise IndexFormatError(f"{path / DOCS}: {len(docs)} documents but meta.json says {meta.count}")
        if meta.compact == "int8":
            return cls(meta, docs, faiss_index=_load_faiss(path / FAISS_FILE, meta))
        if meta.backend == "hnsw":
            if not (path / HNSW_FILE).is_file():
                raise IndexFormatError(f"index {path} is missing {HNSW_FILE}")
            _check_hnsw_file(path / HNSW_FILE, meta)  # hnswlib trusts the file: a bad header crashes the process
            try:
                graph = HnswGraph.load(path / HNSW_FILE, meta.dim, space="cosine", max_elements=meta.count)
            except RuntimeError as e:
                raise IndexFormatError(f"{path / HNSW_FILE} is corrupted: {e}") from None
            if len(graph) != meta.count:
                raise IndexFormatError(f"{path / HNSW_FILE} holds {len(graph)} vectors, expected {meta.count}")
            return cls(meta, docs, graph=graph)
        f = path / VECTORS_FILE
        try:
            vectors = np.load(f, allow_pickle=False)
        except FileNotFoundError:
            raise IndexFormatError(f"index {path} is missing {VECTORS_FILE}") from None
        except (ValueError, EOFError, OSError) as e:
            raise IndexFormatError(f"{f} is corrupted: {e or 'empty file'}") from None
        if not isinstance(vectors, np.ndarray) or vectors.dtype.kind != "f":
            raise IndexFormatError(
                f"{f} holds {getattr(vectors, 'dtype', type(vectors).__name__)} values, expected float32 vectors"
            )
        if vectors.shape != (meta.count, meta.dim):
            raise IndexFormatError(f"{f} has shape {list(vectors.shape)}, expected {[meta.count, meta.dim]}")
        vectors = vectors.astype(np.float32, copy=False)
        _check_finite(vectors, f)
        return cls(meta, docs, vectors=vectors)


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise IndexFormatError("a compact (int8) index needs FAISS: pip install faiss-cpu") from None
    return faiss


def _check_finite(vectors: np.ndarray, where: Path) -> None:
    ok = np.isfinite(vectors).all(axis=1)
    if not ok.all():
        rows = np.flatnonzero(~ok)
        raise IndexFormatError(
            f"{where}: {len(rows)} vectors contain NaN or inf (first at row {int(rows[0])}): the index is corrupted, rebuild it"
        )


def _load_faiss(f: Path, meta: IndexMeta):
    faiss = _import_faiss()
    if not f.is_file():
        raise IndexFormatError(f"index {f.parent} is missing {f.name}")
    digest = hashlib.sha256()
    with f.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    want = meta.checksums.get(FAISS_FILE)
    if want is None or digest.hexdigest() != want:  # checked before FAISS parses a byte of it
        raise IndexFormatError(f"{f} is corrupted: its SHA-256 does not match meta.json")
    try:
        idx = faiss.read_index(str(f))
    except RuntimeError as e:
        raise IndexFormatError(f"{f} is corrupted: {str(e).splitlines()[0]}") from None
    if idx.ntotal != meta.count or idx.d != meta.dim:
        raise IndexFormatError(f"{f} holds {idx.ntotal} vectors of dim {idx.d}, expected {meta.count} of dim {meta.dim}")
    return idx


_HNSW_HEADER = np.dtype(
    [
        ("offset_level0", "<u8"),
        ("max_elements", "<u8"),
        ("count", "<u8"),
        ("size_per_element", "<u8"),
        ("label_offset", "<u8"),
        ("offset_data", "<u8"),
        ("max_level", "<i4"),
        ("entry_point", "<u4"),
        ("max_m", "<u8"),
        ("max_m0", "<u8"),
        ("m", "<u8"),
        ("mult", "<f8"),
        ("ef_construction", "<u8"),
    ]
)


def _check_hnsw_file(f: Path, meta: IndexMeta) -> None:
    """Parse hnswlib's file layout (hnswalg.h ``saveIndex``) and bounds-check it, so a corrupted file
    is an :class:`IndexFormatError` instead of a segmentation fault inside ``load_index``/``knn_query``."""

    def bad(why: str) -> IndexFormatError:
        return IndexFormatError(f"{f} is corrupted ({why}): rebuild the index")

    size = f.stat().st_size
    raw = np.memmap(f, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)  # read as needed, not copied whole
    hsize = _HNSW_HEADER.itemsize
    if len(raw) < hsize:
        raise bad("shorter than the header")
    h = np.frombuffer(raw[:hsize].tobytes(), dtype=_HNSW_HEADER)[0]
    n, dim, m = int(h["count"]), meta.dim, int(h["m"])
    links0 = int(h["max_m0"]) * 4 + 4
    if int(h["offset_level0"]) != 0 or n != meta.count or int(h["max_elements"]) < n:
        raise bad(f"header says {n} vectors (room for {int(h['max_elements'])}), meta.json says {meta.count}")
    if not 1 <= m <= 10_000 or int(h["max_m"]) != m or int(h["max_m0"]) != 2 * m:
        raise bad(f"header has M={m}, maxM={int(h['max_m'])}, maxM0={int(h['max_m0'])}")
    if (
        int(h["offset_data"]) != links0
        or int(h["label_offset"]) != links0 + 4 * dim
        or int(h["size_per_element"]) != links0 + 4 * dim + 8
    ):
        raise bad(f"element layout does not fit vectors of dim {dim}")
    if not 0 <= int(h["max_level"]) < 64 or (n and int(h["entry_point"]) >= n):
        raise bad("entry point or level out of range")
    if not abs(float(h["mult"]) * math.log(m) - 1) < 1e-6 or int(h["ef_construction"]) != max(meta.hnsw_ef_construction, m):
        raise bad("construction parameters do not match meta.json")
    per = int(h["size_per_element"])
    end0 = hsize + n * per
    if len(raw) < end0:
        raise bad(f"{len(raw)} bytes, the header promises at least {end0}")
    level0 = raw[hsize:end0].reshape(n, per)
    seen = np.zeros(n, dtype=bool)
    for s in range(0, n, 65_536):  # in slices: a million-vector graph is checked without a second copy in memory
        block = np.array(level0[s : s + 65_536])
        link_words = block[:, :links0].view("<u4")  # [rows, 1 + maxM0]: count, then neighbour ids
        counts = link_words[:, 0] & 0xFFFF
        if (counts > 2 * m).any():
            raise bad("a level-0 link list is longer than the graph allows")
        if (link_words[:, 1:][np.arange(2 * m)[None, :] < counts[:, None]] >= n).any():
            raise bad("a level-0 link points past the last vector")
        labels = block[:, links0 + 4 * dim :].view("<u8").ravel()
        if (labels >= n).any() or seen[labels.astype(np.int64)].any():
            raise bad("the labels are not the row numbers 0..count-1")
        seen[labels.astype(np.int64)] = True
        _check_finite(block[:, links0 : links0 + 4 * dim].view("<f4"), f)
    if not seen.all():
        raise bad("the labels are not the row numbers 0..count-1")
    # Upper levels: per element a uint32 byte count, then that many bytes of link lists.
    per_level = int(h["max_m"]) * 4 + 4
    pos, levels, top = end0, [], np.zeros(n, np.int64)
    for i in range(n):
        if pos + 4 > len(raw):
            raise bad("upper-level link lists cut short")
        size = int(raw[pos : pos + 4].view("<u4")[0])
        pos += 4
        if size % per_level or size // per_level > int(h["max_level"]) or pos + size > len(raw):
            raise bad("an upper-level link list has an impossible size")
        if size:
            levels.append(raw[pos : pos + size])
            top[i] = size // per_level
        pos += size
    if pos != len(raw):
        raise bad(f"{len(raw) - pos} unexpected bytes at the end")
    if n and (top.max() != int(h["max_level"]) or top[int(h["entry_point"])] != int(h["max_level"])):
        raise bad("the entry point is not on the top level")  # search would read link lists that do not exist
    if levels:
        words = np.concatenate(levels).view("<u4").reshape(-1, m + 1)
        cnt = words[:, 0] & 0xFFFF
        if (cnt > m).any():
            raise bad("an upper-level link list is longer than the graph allows")
        # A link at level l must point to a node that has level l.
        owner_level = np.concatenate([np.arange(1, t + 1) for t in top if t])
        targets = words[:, 1:]
        used = np.arange(m)[None, :] < cnt[:, None]
        if (targets[used] >= n).any():
            raise bad("an upper-level link points past the last vector")
        if (top[targets[used].astype(np.int64)] < np.broadcast_to(owner_level[:, None], targets.shape)[used]).any():
            raise bad("an upper-level link points to a node without that level")


def _read_meta(path: Path) -> IndexMeta:
    try:
        raw = json.loads((path / META).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{path} is not an index (no {META})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{path / META} is corrupted: {e}") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{path / META}: unsupported index format (expected format_version {FORMAT_VERSION})")
    try:
        meta = IndexMeta(**raw)
    except TypeError as e:
        raise IndexFormatError(f"{path / META}: bad fields ({e})") from None
    _check_meta(meta, path / META)
    return meta


def _check_meta(meta: IndexMeta, where: Path) -> None:
    """Each field of meta.json has the type and range a real index has: a bad one is named, not misdiagnosed later."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    checks = [
        ("model", isinstance(meta.model, str) and meta.model != "", "a model name"),
        ("fingerprint", isinstance(meta.fingerprint, str) and meta.fingerprint != "", "a model fingerprint"),
        ("prompts", isinstance(meta.prompts, dict), "an object"),
        ("max_length", is_int(meta.max_length) and meta.max_length >= 16, "an integer >= 16"),
        ("dim", is_int(meta.dim) and meta.dim >= 1, "an integer >= 1"),
        ("count", is_int(meta.count) and meta.count >= 0, "an integer >= 0"),
        ("backend", meta.backend in ("exact", "hnsw"), "'exact' or 'hnsw'"),
        ("exact_threshold", is_int(meta.exact_threshold) and meta.exact_threshold >= 0, "an integer >= 0"),
        ("hnsw_m", is_int(meta.hnsw_m) and 2 <= meta.hnsw_m <= 10_000, "an integer in [2, 10000]"),
        ("hnsw_ef_construction", is_int(meta.hnsw_ef_construction) and meta.hnsw_ef_construction >= 1, "an integer >= 1"),
        ("store_text", isinstance(meta.store_text, bool), "true or false"),
        ("sources", isinstance(meta.sources, list), "a list"),
        ("compact", meta.compact in COMPACT, f"one of {list(COMPACT)}"),
        ("truncated", is_int(meta.truncated) and meta.truncated >= 0, "an integer >= 0"),
        ("checksums", isinstance(meta.checksums, dict), "an object"),
    ]
    for name, ok, want in checks:
        if not ok:
            raise IndexFormatError(
                f"{where}: {name} is {getattr(meta, name)!r}, expected {want}: the index metadata is corrupted"
            )


def _read_docs(path: Path) -> list[Doc]:
    if not path.is_file():
        raise IndexFormatError(f"index is missing {path.name}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise IndexFormatError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}): the index is corrupted") from None
    docs = []
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            rec = json.loads(line)
            if not isinstance(rec.get("text", ""), str):
                raise TypeError
            docs.append(Doc(str(rec["id"]), rec.get("text", "")))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise IndexFormatError(f"{path}:{n}: corrupted document line") from None
    return docs


# ---------------------------------------------------------------------------------------- building
def encode_documents(
    model: Any,
    docs: Sequence[Doc],
    *,
    batch_size: int = 16,
    chunk_size: int = 256,
    work_dir: Path | None = None,
    show_progress_bar: bool = True,
) -> np.ndarray:
    """Encode documents chunk by chunk through :func:`searchr3.retrieval.cached_encode`: with ``work_dir``,
    finished chunks are kept there (by model fingerprint and corpus) and reused on restart."""
    if not docs:
        return np.zeros((0, model.hidden_size), np.float32)
    texts = [d.text for d in docs]

    def encode(positions: list[int]) -> np.ndarray:
        return model.encode_document([texts[i] for i in positions], batch_size=batch_size)

    return cached_encode(
        encode,
        [d.id for d in docs],
        texts,
        fingerprint=model.fingerprint(),
        cache_dir=work_dir,
        chunk_size=chunk_size,
        show_progress_bar=show_progress_bar,
    ).embeddings


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
    compact: str = "none",
    sources: Iterable[str] = (),
    show_progress_bar: bool = True,
) -> Index:
    """Encode ``docs`` (unless ``vectors`` are given) into a new index, or onto ``base``, and save it to ``out``.

    ``meta.truncated`` counts the documents cut at the model's ``max_length`` (cumulative over adds).
    """
    out = Path(out)
    if base is None:
        index = Index.new(model, model_name, exact_threshold=exact_threshold, store_text=store_text, compact=compact)
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
    index.meta.truncated += sum(model.truncated([d.text for d in docs], "document"))
    index.meta.sources.extend(str(s) for s in sources)
    index.save(out)
    shutil.rmtree(partial, ignore_errors=True)
    return index
